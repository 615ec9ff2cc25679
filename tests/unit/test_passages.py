"""Splitting files into passages: titles, size bounds, definition boundaries, line ranges."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from appliance.db import documents as dbdocuments
from appliance.retrieval import documents

WORDS = (
    "appliance", "tenant", "worker", "queue", "lease", "audit", "ledger", "budget", "policy",
    "vault", "secret", "model", "passage", "context", "retrieval", "index", "migration",
    "checkpoint", "outbox", "relay", "webhook", "schedule", "console", "metric", "journal",
    "socket", "cluster", "replica", "backup", "restore", "upgrade", "rollback",
)  # fmt: skip


def prose(seed: int, sentences: int, words: int = 12) -> str:
    """Deterministic sentences of `words` words each (13 tokens with the full stop)."""
    out = []
    for s in range(sentences):
        picked = [WORDS[(seed * 7 + s * 5 + w * 3) % len(WORDS)] for w in range(words)]
        out.append(" ".join(picked).capitalize() + ".")
    return " ".join(out)


def paragraphs(seed: int, count: int, sentences: int = 4) -> str:
    """`count` paragraphs of `sentences` sentences, separated by blank lines."""
    return "\n\n".join(prose(seed + p, sentences) for p in range(count))


def function(name: str, body_lines: int, docstring: str = "Do the thing.") -> str:
    """A top-level function with a docstring and `body_lines` statements."""
    body = "\n".join(
        f"    value_{i} = compute({i}, name='{name}', flag=True)" for i in range(body_lines)
    )
    return f'def {name}(x, y):\n    """{docstring}"""\n{body}\n    return x\n'


def assert_bounded(passages: list[dbdocuments.NewPassage]) -> None:
    sizes = [p.tokens for p in passages]
    assert all(documents.MIN_TOKENS <= size <= documents.MAX_TOKENS for size in sizes), sizes


class TestTokenEstimate:
    def test_words_and_punctuation_count_one_each(self) -> None:
        """A run of word characters is one token, every other non-space character another."""
        assert documents.count_tokens("def f(x): return x_1") == 8

    def test_whitespace_counts_nothing(self) -> None:
        """Spaces, tabs and newlines are free, so text cut at whitespace adds up."""
        assert documents.count_tokens("a  b\n\n\tc") == documents.count_tokens("a b c") == 3


class TestMarkdown:
    def test_headings_become_title_paths(self) -> None:
        """Each section's passage is titled with its heading path."""
        text = (
            f"# Guide\n\n{paragraphs(1, 3)}\n\n## Install\n\n{paragraphs(2, 3)}\n\n"
            f"### Linux\n\n{paragraphs(3, 3)}\n\n## Usage\n\n{paragraphs(4, 3)}\n"
        )

        passages = documents.split(text, name="guide.md", kind="markdown")

        assert [p.title for p in passages] == [
            "Guide",
            "Guide > Install",
            "Guide > Install > Linux",
            "Guide > Usage",
        ]

    def test_passage_of_a_section_starts_at_its_heading(self) -> None:
        """A section's passage begins with the heading line itself."""
        text = f"# One\n\n{paragraphs(1, 3)}\n\n# Two\n\n{paragraphs(2, 3)}\n"

        passages = documents.split(text, name="a.md", kind="markdown")

        assert [p.text.splitlines()[0] for p in passages] == ["# One", "# Two"]

    def test_small_sections_merge_with_their_neighbours(self) -> None:
        """Sections too short to stand alone share a passage, titled by each section."""
        text = "".join(f"## Part {i}\n\n{prose(i, 3)}\n\n" for i in range(8))

        passages = documents.split(text, name="a.md", kind="markdown")

        assert_bounded(passages)
        assert len(passages) < 8
        assert passages[0].title.startswith("Part 0; Part 1")

    def test_hash_lines_inside_code_fences_are_not_headings(self) -> None:
        """A `#` comment in a fenced block does not start a section."""
        text = f"# Real\n\n```sh\n# not a heading\necho hi\n```\n\n{paragraphs(1, 1)}\n"

        passages = documents.split(text, name="a.md", kind="markdown")

        assert [p.title for p in passages] == ["Real"]

    def test_setext_headings_are_headings(self) -> None:
        """A line underlined with `===` or `---` is a heading."""
        text = f"Top\n===\n\n{paragraphs(1, 3)}\n\nSub\n---\n\n{paragraphs(2, 3)}\n"

        passages = documents.split(text, name="a.md", kind="markdown")

        assert [p.title for p in passages] == ["Top", "Top > Sub"]

    def test_long_sections_are_cut_within_bounds(self) -> None:
        """A long document gives passages of 150 to 400 tokens, cut between paragraphs."""
        text = "\n\n".join(f"## S{i}\n\n{paragraphs(i, 1 + i % 9, 1 + i % 5)}" for i in range(30))

        passages = documents.split(text, name="a.md", kind="markdown")

        assert_bounded(passages)
        assert len(passages) > 10

    def test_a_long_paragraph_is_cut_between_sentences(self) -> None:
        """One paragraph of many sentences is cut after a full stop, never inside a sentence."""
        text = prose(5, 80)

        passages = documents.split(text, name="a.txt", kind="text")

        assert_bounded(passages)
        assert len(passages) > 1
        assert all(p.text.endswith(".") for p in passages)

    def test_untitled_text_takes_the_file_name(self) -> None:
        """Text before any heading is titled with the file's name."""
        passages = documents.split(paragraphs(1, 2), name="notes.md", kind="markdown")

        assert [p.title for p in passages] == ["notes.md"]


class TestShortFiles:
    def test_a_lone_short_file_is_one_passage(self) -> None:
        """A file under 150 tokens is a single passage, whatever its length."""
        passages = documents.split("# Tiny\n\nJust one line.\n", name="t.md", kind="markdown")

        assert len(passages) == 1
        assert passages[0].tokens < documents.MIN_TOKENS
        assert passages[0].text == "# Tiny\n\nJust one line."

    def test_an_empty_file_has_no_passages(self) -> None:
        """Whitespace alone gives nothing to store."""
        assert documents.split("\n  \n\n", name="e.txt", kind="text") == []


class TestPlacement:
    @pytest.mark.parametrize(
        ("name", "kind"), [("a.md", "markdown"), ("a.py", "python"), ("a.txt", "text")]
    )
    def test_line_and_character_ranges_locate_the_text(
        self, name: str, kind: documents.Format
    ) -> None:
        """Each passage's text is the source between its offsets, on its line range."""
        source = (
            "# Title\r\n\r\n" + paragraphs(1, 14).replace("\n", "\r\n") + "\n\n"
            if kind == "markdown"
            else "".join(function(f"f{i}", 12 + i) + "\n\n" for i in range(6))
            if kind == "python"
            else paragraphs(2, 12)
        )

        passages = documents.split(source, name=name, kind=kind)

        assert len(passages) > 1
        lines = source.split("\n")
        for passage in passages:
            assert source[passage.char_start : passage.char_end] == passage.text
            assert passage.line_start == source.count("\n", 0, passage.char_start) + 1
            assert passage.line_end == source.count("\n", 0, passage.char_end) + 1
            first = lines[passage.line_start - 1]
            assert passage.text.splitlines()[0].strip() in first

    def test_positions_count_from_zero_in_order(self) -> None:
        """Passages are numbered 0, 1, 2 ... in the order of the file."""
        passages = documents.split(paragraphs(1, 20), name="a.txt", kind="text")

        assert [p.position for p in passages] == list(range(len(passages)))
        assert [p.char_start for p in passages] == sorted(p.char_start for p in passages)


class TestSearchText:
    @pytest.mark.parametrize(
        ("text", "indexed"),
        [
            ("DictReader", "DictReader Dict Reader"),
            ("HTTPServer", "HTTPServer HTTP Server"),
            ("getLogger", "getLogger get Logger"),
            ("a85encode", "a85encode a 85 encode"),
            ("json.dumps(x)", "json dumps(x)"),
            ("email/utils", "email utils"),
            ("get_close_matches", "get_close_matches"),  # Postgres cuts at underscores
            ("deepcopy", "deepcopy"),  # an all-lowercase compound is left whole
            ("version 3.11", "version 3.11"),
        ],
    )
    def test_identifiers_are_indexed_with_their_parts(self, text: str, indexed: str) -> None:
        assert documents.search_text(text) == indexed

    @pytest.mark.parametrize(
        ("name", "folder", "words"),
        [
            ("gzip.py", "python3.11", "gzip"),
            ("utils.py", "email", "email utils"),
            ("__init__.py", "collections", "collections"),
            ("README", "", "README"),
        ],
    )
    def test_a_file_is_known_by_its_name_and_folder(
        self, name: str, folder: str, words: str
    ) -> None:
        assert documents.path_words(name, folder) == words

    def test_keywords_hold_the_file_and_the_definitions(self) -> None:
        """The title field names the file and the definitions; the definition that starts in
        a passage is named twice, with its parameters, a later piece of it once."""
        source = function("readRows", 120)

        passages = documents.split(source, name="tables.py", kind="python", folder="csvkit")

        assert len(passages) > 1
        assert passages[0].keywords == "csvkit tables readRows read Rows readRows read Rows x y"
        assert passages[1].keywords == "csvkit tables readRows read Rows"
        assert passages[0].keyword_tokens == documents.count_tokens(passages[0].keywords)
        assert passages[0].search_text == documents.search_text(passages[0].text)


class TestPython:
    def test_each_view_says_where_it_sits(self) -> None:
        """A view starts with the file, the class and the definition's signature, so a piece
        deep in a long method still names what it belongs to."""
        body = function("rows", 200).replace("\n", "\n    ")
        source = f"class Table(Base):\n    {body}"

        passages = documents.split(source, name="tables.py", kind="python", folder="csvkit")

        lines = [view.split("\n", 1)[0] for p in passages for view in p.views]
        assert len(lines) > 2
        assert lines[0] == "csvkit/tables.py > class Table(Base)"
        assert set(lines[1:]) == {"csvkit/tables.py > class Table(Base) > def rows(x, y)"}

    def test_top_level_definitions_start_passages(self) -> None:
        """Each function large enough to stand alone is its own passage, titled by it."""
        source = "\n\n".join(function(name, 16) for name in ("alpha", "beta", "gamma"))

        passages = documents.split(source, name="m.py", kind="python")

        assert [p.title for p in passages] == ["def alpha", "def beta", "def gamma"]
        assert [p.text.splitlines()[0] for p in passages] == [
            "def alpha(x, y):",
            "def beta(x, y):",
            "def gamma(x, y):",
        ]

    def test_a_docstring_stays_with_its_signature(self) -> None:
        """A long function is cut in its body, never between its signature and docstring."""
        docstring = "\n\n    ".join(prose(i, 2) for i in range(5))
        source = function("documented", 40, docstring=docstring)

        passages = documents.split(source, name="m.py", kind="python")

        assert len(passages) > 1
        assert passages[0].text.startswith("def documented(x, y):")
        assert '"""' in passages[0].text
        assert passages[0].text.count('"""') == 2

    def test_decorators_and_comments_belong_to_their_definition(self) -> None:
        """The comment and decorator above a function start that function's passage."""
        source = (
            function("first", 16)
            + "\n\n# Explains the second one.\n@decorator(option=1)\n"
            + function("second", 16)
        )

        passages = documents.split(source, name="m.py", kind="python")

        assert passages[1].title == "def second"
        assert passages[1].text.startswith("# Explains the second one.\n@decorator(option=1)")

    def test_methods_are_titled_with_their_class(self) -> None:
        """A large class is cut at its methods, each titled `class C > def m`."""
        methods = "\n".join(
            textwrap.indent(function(name, 16), "    ") for name in ("open", "read", "close")
        )
        source = f'class Reader:\n    """Reads."""\n\n{methods}'

        passages = documents.split(source, name="m.py", kind="python")

        assert_bounded(passages)
        assert [p.title for p in passages][1:] == [
            "class Reader > def read",
            "class Reader > def close",
        ]
        assert passages[0].title.startswith("class Reader")

    def test_code_that_does_not_parse_is_cut_at_blank_lines(self) -> None:
        """A file with a syntax error still splits, at blank lines, titled by its name."""
        source = "\n\n".join(function(f"f{i}", 8).replace("):", ")") for i in range(8))

        passages = documents.split(source, name="broken.py", kind="python")

        assert_bounded(passages)
        assert {p.title for p in passages} == {"broken.py"}
        assert all(p.text.startswith("def ") for p in passages)


class TestOtherKinds:
    def test_restructuredtext_sections_are_titled(self) -> None:
        """Underlined (and overlined) reStructuredText titles give the heading path."""
        text = (
            f"=====\nGuide\n=====\n\n{paragraphs(1, 3)}\n\nInstall\n-------\n\n{paragraphs(2, 3)}\n"
        )

        passages = documents.split(text, name="g.rst", kind="rst")

        assert [p.title for p in passages] == ["Guide", "Guide > Install"]

    def test_source_files_are_cut_at_blank_lines(self) -> None:
        """Other source files are cut between blank-line separated blocks, never inside one."""
        blocks = [
            "\n".join(f"  step_{b}_{i}: run --flag {i} --name job{b}" for i in range(9))
            for b in range(12)
        ]
        source = "\n\n".join(blocks)

        passages = documents.split(source, name="ci.yaml", kind="code")

        assert_bounded(passages)
        last_lines = {block.split("\n")[-1] for block in blocks}
        assert all(p.text.lstrip().startswith("step_") for p in passages)
        assert all(p.text.split("\n")[-1] in last_lines for p in passages)

    @pytest.mark.parametrize(
        ("file_name", "kind"),
        [("a.md", "markdown"), ("b.RST", "rst"), ("c.txt", "text"), ("d.py", "python"),
         ("e.go", "code"), ("f.png", None), ("Makefile", None)],
    )  # fmt: skip
    def test_kind_follows_the_extension(self, file_name: str, kind: str | None) -> None:
        """The extension (any case) picks the splitter; unknown ones are not ingested."""
        assert documents.kind_of(Path(file_name)) == kind
