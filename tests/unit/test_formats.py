"""Prose read as prose: HTML as Markdown-shaped text, plain text cut at its headings."""

from __future__ import annotations

from pathlib import Path

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
