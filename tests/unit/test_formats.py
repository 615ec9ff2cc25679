"""Prose read as prose: HTML as Markdown-shaped text, plain text cut at its headings."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.retrieval import documents, formats

PAGE = """<!DOCTYPE html>
<html><head><title>Manual</title><style>p { color: red }</style></head>
<body>
<nav role="navigation"><a href="/">Home</a> | <a href="/next">Next</a></nav>
<div class="sphinxsidebar"><h3>Table of Contents</h3><ul><li>Install</li></ul></div>
<h1>Widget manual<a class="headerlink" href="#w">&para;</a></h1>
<p>The widget &amp; its   stand
are sold together.</p>
<h2>Cleaning</h2>
<ul><li>Wipe it with a dry cloth.</li><li>Never use water.</li></ul>
<pre>
widget --clean
  --dry
</pre>
<script>track()</script>
</body></html>
"""


class TestHtml:
    def test_headings_become_markdown_headings(self) -> None:
        """h1..h6 become # headings, so sections are cut and titled by them."""
        text = formats.html_text(PAGE)

        assert "# Widget manual" in text.splitlines()
        assert "## Cleaning" in text.splitlines()

    def test_markup_scripts_and_navigation_are_left_out(self) -> None:
        """Only the page's content remains: no tags, styles, scripts, menus or permalinks."""
        text = formats.html_text(PAGE)

        for absent in ("<", "color", "track", "Home", "Table of Contents", "¶", "Manual"):
            assert absent not in text

    def test_text_is_decoded_and_its_spaces_joined(self) -> None:
        """Character references are decoded; runs of white space in a paragraph are one."""
        assert "The widget & its stand are sold together." in formats.html_text(PAGE)

    def test_list_items_are_lines_and_preformatted_text_keeps_its_lines(self) -> None:
        """Block elements end lines; <pre> stays as it is, fenced."""
        lines = formats.html_text(PAGE).splitlines()

        assert "Wipe it with a dry cloth." in lines
        assert "Never use water." in lines
        fence = lines.index("```")
        assert lines[fence + 1 : fence + 3] == ["widget --clean", "  --dry"]

    def test_an_html_file_is_split_into_titled_sections(self) -> None:
        """`docs add` reads an .html file as prose: passages titled by their heading path."""
        text = documents.readable(PAGE, "html")

        passages = documents.split(text, name="manual.html", kind="html")

        assert documents.kind_of(Path("manual.html")) == "html"
        assert passages[0].title.startswith("Widget manual")
        assert "<" not in "".join(p.text for p in passages)


class TestPlainText:
    def test_underlined_headings_title_the_sections(self) -> None:
        """A plain-text manual's underlined headings give its passages their section path."""
        section = " ".join(f"Sentence {i} of the part about the topic at hand." for i in range(30))
        text = f"GUIDE\n=====\n\nSetup\n-----\n\n{section}\n\nUsage\n-----\n\n{section}\n"

        passages = documents.split(text, name="guide.txt", kind="text")

        assert [p.title for p in passages] == ["GUIDE; Setup", "GUIDE > Usage"]


def pdf(*pages: str) -> bytes:
    """A minimal PDF whose pages show the given lines of text in Helvetica."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        stream = len(objects) + 1
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        kids.append(len(objects) + 1)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 "
            b"/BaseFont /Helvetica >> >> >> >>" % stream
        )
    references = " ".join(f"{kid} 0 R" for kid in kids).encode()
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (references, len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        table,
    )
    return bytes(out)


class TestPdf:
    def test_each_page_is_a_section_of_its_text(self) -> None:
        """A PDF's text layer, page by page, each under a heading that titles its passages."""
        text = formats.pdf_text(pdf("Refunds take five days.", "Badges are red."))

        assert text.splitlines() == [
            "# Page 1", "", "Refunds take five days.", "", "# Page 2", "", "Badges are red.",
        ]  # fmt: skip
        passages = documents.split(text, name="manual.pdf", kind="pdf")
        assert passages[0].title.startswith("Page 1")

    def test_a_file_that_is_not_a_pdf_is_unreadable(self) -> None:
        """Bytes that are no PDF are refused with a reason, not a traceback."""
        with pytest.raises(formats.UnreadableError, match="not a readable PDF"):
            formats.pdf_text(b"%PDF-1.4 and then nothing")
