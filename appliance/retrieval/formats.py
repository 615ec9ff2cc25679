"""Documents in other formats read as text: HTML without its markup, PDF by its pages.

`html_text` turns an HTML page into Markdown-shaped plain text, so the Markdown splitter cuts it
at its headings and a passage's title is its section path: `<h1>`..`<h6>` become `#` headings,
block elements (paragraphs, list items, table rows, definitions, line breaks) end lines, `<pre>`
stays as it is inside a fence, and the rest is its text with runs of white space made one
space. What is not the page's content is left out: `<head>`, scripts and styles, navigation
(`<nav>`, or any element whose role is navigation) and elements whose class marks them as a
sidebar, a footer, a header link or a breadcrumb trail (the furniture of generated manuals).
Character references are decoded. A passage of an HTML file cites the lines of this text.

`pdf_text` gives a PDF's text as pypdf extracts it, each page under a `# Page N` heading, so
a passage is titled by the pages it comes from. A PDF without a text layer (scanned images)
gives no text; one that cannot be read is `UnreadableError`.
"""

from __future__ import annotations

import html.parser
import io
import re

import pypdf
import pypdf.errors

_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
        "figure", "footer", "form", "header", "hr", "li", "main", "ol", "p", "section", "table",
        "tbody", "td", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
_SKIPPED_TAGS = frozenset({"head", "script", "style", "nav", "noscript", "template", "svg"})
_SKIPPED_CLASSES = re.compile(r"\b(sidebar|sphinxsidebar|footer|headerlink|breadcrumbs?|related)\b")
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_SPACE = re.compile(r"[ \t\r\f\v\n]+")


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skipping: list[str] = []  # the open tags whose content is left out
        self._pre = 0
        self._heading = 0

    def _end_line(self) -> None:
        text = _SPACE.sub(" ", "".join(self._line)).strip()
        self._line = []
        if not text:
            return
        if self._heading:
            self.lines.extend(["", f"{'#' * self._heading} {text}", ""])
        else:
            self.lines.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            if tag not in _VOID:
                self._skipping.append(tag)
            return
        values = dict(attrs)
        if (
            tag in _SKIPPED_TAGS
            or values.get("role") == "navigation"
            or _SKIPPED_CLASSES.search(values.get("class") or "")
        ):
            if tag not in _VOID:
                self._skipping.append(tag)
            return
        if self._pre and tag != "pre":
            return  # preformatted text keeps its lines
        if tag == "pre":
            self._end_line()
            self.lines.append("```")
            self._pre += 1
        elif tag in _HEADINGS:
            self._end_line()
            self._heading = _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._end_line()
            if tag in ("p", "table", "ul", "ol", "dl", "dt", "blockquote"):
                self.lines.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag in self._skipping:
                while self._skipping.pop() != tag:
                    pass
            return
        if self._pre and tag != "pre":
            return
        if tag == "pre" and self._pre:
            # A newline right after <pre> is not content (HTML's parsing rules).
            content = "".join(self._line).removeprefix("\n").rstrip("\n")
            self.lines.extend(content.split("\n"))
            self._line = []
            self.lines.extend(["```", ""])
            self._pre -= 1
        elif tag in _HEADINGS:
            self._end_line()
            self._heading = 0
        elif tag in _BLOCKS:
            self._end_line()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._line.append(data)


def html_text(page: str) -> str:
    """The text of an HTML page, Markdown-shaped (see the module's docstring)."""
    parser = _Text()
    parser.feed(page)
    parser.close()
    parser._end_line()
    text = "\n".join(parser.lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


class UnreadableError(ValueError):
    """A document whose format is known but whose content cannot be read."""


def pdf_text(data: bytes) -> str:
    """The text of a PDF, page by page (see the module's docstring)."""
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [(page.extract_text() or "").replace("\0", "") for page in reader.pages]
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableError(f"not a readable PDF: {exc}") from exc
    return "\n\n".join(
        f"# Page {number}\n\n{text.strip()}"
        for number, text in enumerate(pages, start=1)
        if text.strip()
    )
