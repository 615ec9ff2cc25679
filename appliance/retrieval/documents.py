"""Documents for retrieval: files split into passages, and their ingestion.

Splitting is pure (`split`): a file becomes passages of about `MIN_TOKENS`..`MAX_TOKENS`
tokens, each with its title and its place in the file (1-based line range, character offsets
into the decoded text). Only a file shorter than `MIN_TOKENS` as a whole gives a shorter
passage. How a file is cut depends on its kind (by extension, `FORMATS`):

- Markdown, reStructuredText, HTML (read as text without its markup, Markdown-shaped:
  `formats.html_text`; its passages cite the lines of that text) and PDF (its text layer,
  each page under a `# Page N` heading, `formats.pdf_text`): at headings, then at
  paragraphs; the heading path (`Install > Linux`) is the title of the passages under it.
  Fenced code stays together.
- Python: at top-level `def`/`class` (with their decorators and the comments right above
  them), then at methods, then at blank lines; a definition's signature and docstring are
  kept with each other. The title is the definition (`class JSONDecoder > def decode`).
- Plain text: at headings underlined (or over- and underlined) as in reStructuredText, which
  is how plain-text manuals mark them, then at paragraphs; without headings the title is the
  file's name.
- Other source files: at blank lines; the title is the file's name.

Each kind marks its cut points, each with a cost (a heading or a top-level definition is a
bonus, a paragraph cheap, a sentence or a line dearer, between words dearest); a paragraph
longer than `ATOM_TOKENS` may also be cut inside. A dynamic program then picks the cuts of
least total cost whose pieces all fit the bounds, with a small pull towards `TARGET_TOKENS`.

Each passage also gets its views, the texts its vectors are made of (retrieval by meaning):
its atoms cut where a definition or a section starts, then into runs of at most `VIEW_TOKENS`,
each led by the file's folder and name. A passage counts by its best view: one vector of the
whole passage (which the model cuts at 256 word pieces; most code passages are longer) ranked
the answers of bench/tokens.py worse.
Ingestion (`add_documents`) embeds them (`appliance.retrieval.embedding`) in the thread that reads
and splits the file.

Token estimate (`count_tokens`): every run of word characters and every other non-space
character counts one, `len(re.findall(r"\\w+|[^\\w\\s]", text))`. It is deterministic and
additive over text cut at whitespace. It is not the model's tokenizer: a long or rare word is
one token here and may be several there, so budgets built on it should keep a margin.
"""

from __future__ import annotations

import ast
import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from typing import Literal

from appliance import errors
from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.retrieval import embedding, formats

log = logging.getLogger(__name__)

TOKEN = re.compile(r"\w+|[^\w\s]")
MIN_TOKENS = 150
MAX_TOKENS = 400
TARGET_TOKENS = 275
ATOM_TOKENS = 80
WINDOW_TOKENS = 50
VIEW_TOKENS = 100
MAX_FILE_BYTES = 2_000_000
COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")

Format = Literal["markdown", "rst", "html", "pdf", "text", "python", "code"]
FORMATS: dict[str, Format] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".txt": "text",
    ".text": "text",
    ".py": "python",
    ".pyi": "python",
    **dict.fromkeys(
        (
            ".c", ".cc", ".cfg", ".cpp", ".cs", ".css", ".go", ".h", ".hpp", ".ini",
            ".java", ".js", ".json", ".jsx", ".kt", ".lua", ".php", ".pl", ".rb", ".rs",
            ".scss", ".sh", ".sql", ".swift", ".toml", ".ts", ".tsx", ".xml", ".yaml", ".yml",
        ),
        "code",
    ),
}  # fmt: skip
SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", "venv", "build", "dist"})

# The cost of cutting before a piece: lower is a better place to cut.
_SECTION = -2.0
_SUBSECTION = 0.0
_PARAGRAPH = 1.0
_SENTENCE = 3.0
_LINE = 4.0
_WORD = 8.0
_GLUE = 6.0  # added inside a definition's signature and docstring, and after a heading

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


def count_tokens(text: str) -> int:
    """The token estimate of `text` (see the module's docstring)."""
    return len(TOKEN.findall(text))


@dataclasses.dataclass(frozen=True, slots=True)
class IngestReport:
    """What `add_documents` did with each file, by source, how many passages and vectors it
    wrote, and the embedding model that made them (None: not installed, stored without)."""

    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    embedded: tuple[str, ...] = ()  # unchanged content, stored again with its vectors
    unchanged: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (source, reason)
    passages: int = 0
    vectors: int = 0  # of the passages written
    model: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Line:
    index: int  # 0-based
    start: int
    end: int  # after the last non-newline character

    def content(self, text: str) -> str:
        return text[self.start : self.end]


@dataclasses.dataclass(slots=True)
class _Block:
    """A paragraph: consecutive lines that are never cut apart unless they are too long."""

    first: int
    last: int
    cost: float
    title: str
    code: bool
    opens: bool = False  # starts a definition or a section (its title's own first line)


@dataclasses.dataclass(frozen=True, slots=True)
class _Atom:
    """A piece never cut inside, and what cutting before it costs."""

    start: int
    end: int
    tokens: int
    cost: float
    title: str
    opens: bool = False  # the first piece of a definition or a section


def _lines(text: str) -> list[_Line]:
    lines: list[_Line] = []
    start = 0
    for index, raw in enumerate(text.split("\n")):
        lines.append(_Line(index, start, start + len(raw.rstrip("\r"))))
        start += len(raw) + 1
    return lines


def _is_blank(text: str, line: _Line) -> bool:
    return not line.content(text).strip()


# --- blocks of each kind of file -------------------------------------------------------------


def _paragraphs(
    text: str,
    lines: Sequence[_Line],
    *,
    title: str,
    code: bool,
    marks: dict[int, tuple[float, str]] | None = None,
    glued: frozenset[int] = frozenset(),
) -> list[_Block]:
    """Runs of non-blank lines; a marked line (cost, title) also starts a block."""
    marks = marks or {}
    default = title
    blocks: list[_Block] = []
    current: _Block | None = None
    for line in lines:
        mark = marks.get(line.index)
        if mark is not None:
            title = mark[1]
        if _is_blank(text, line):
            current = None
            continue
        if current is not None and mark is None:
            current.last = line.index
            continue
        cost = mark[0] if mark is not None else _PARAGRAPH
        if line.index in glued:
            cost += _GLUE
        opens = mark is not None and mark[1] != default
        current = _Block(line.index, line.index, cost, title, code, opens=opens)
        blocks.append(current)
    return blocks


def _heading_title(path: Sequence[tuple[int, str]], default: str) -> str:
    return " > ".join(name for _, name in path) or default


def _markdown_blocks(
    text: str, lines: Sequence[_Line], name: str
) -> tuple[list[_Block], frozenset[int]]:
    blocks: list[_Block] = []
    path: list[tuple[int, str]] = []
    current: _Block | None = None
    fence: str | None = None
    after_heading = False

    def start(index: int, cost: float, code: bool) -> _Block:
        nonlocal after_heading
        if after_heading:
            cost += _GLUE
            after_heading = False
        block = _Block(index, index, cost, _heading_title(path, name), code)
        blocks.append(block)
        return block

    def heading(first: int, last: int, level: int, title: str) -> None:
        nonlocal after_heading
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title.strip()))
        blocks.append(
            _Block(first, last, _SECTION, _heading_title(path, name), code=False, opens=True)
        )
        after_heading = True

    for line in lines:
        content = line.content(text)
        if fence is not None:
            if current is None:
                current = start(line.index, _PARAGRAPH, code=True)
            current.last = line.index
            if content.strip().startswith(fence):
                fence, current = None, None
            continue
        opening = _FENCE.match(content)
        atx = _ATX.match(content)
        setext = _SETEXT.match(content)
        if opening is not None:
            fence = opening.group(1)
            current = start(line.index, _PARAGRAPH, code=True)
        elif atx is not None:
            heading(line.index, line.index, len(atx.group(1)), atx.group(2))
            current = None
        elif (
            setext is not None
            and current is not None
            and not current.code
            and current.first == current.last == line.index - 1
        ):
            blocks.remove(current)
            level = 1 if setext.group(1).startswith("=") else 2
            heading(current.first, line.index, level, lines[current.first].content(text))
            current = None
        elif not content.strip():
            current = None
        elif current is not None:
            current.last = line.index
        else:
            current = start(line.index, _PARAGRAPH, code=False)
    return blocks, frozenset()


def _rst_blocks(
    text: str, lines: Sequence[_Line], name: str
) -> tuple[list[_Block], frozenset[int]]:
    """Sections of reStructuredText: a title underlined (maybe overlined) by punctuation."""
    styles: list[tuple[str, bool]] = []
    marks: dict[int, tuple[float, str]] = {}
    glued: set[int] = set()
    path: list[tuple[int, str]] = []
    for line in lines[1:]:
        under = _ADORNMENT.match(line.content(text))
        if under is None:
            continue
        title = lines[line.index - 1].content(text).strip()
        if not title or _ADORNMENT.match(title):
            continue
        before = lines[line.index - 2].content(text).strip() if line.index >= 2 else ""
        over = before == line.content(text).strip()
        if before and not over:
            continue
        style = (under.group(1), over)
        if style not in styles:
            styles.append(style)
        level = styles.index(style) + 1
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        marks[line.index - 2 if over else line.index - 1] = (_SECTION, _heading_title(path, name))
        glued.add(_next_nonblank(text, lines, line.index + 1))
    blocks = _paragraphs(text, lines, title=name, code=False, marks=marks, glued=frozenset(glued))
    return blocks, frozenset(glued)


def _next_nonblank(text: str, lines: Sequence[_Line], index: int) -> int:
    while index < len(lines) and _is_blank(text, lines[index]):
        index += 1
    return index


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _definition_name(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    kind = {ast.FunctionDef: "def", ast.AsyncFunctionDef: "async def", ast.ClassDef: "class"}
    return f"{kind[type(node)]} {node.name}"


def _python_blocks(
    text: str, lines: Sequence[_Line], name: str
) -> tuple[list[_Block], frozenset[int]]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return _paragraphs(text, lines, title=name, code=True), frozenset()
    marks: dict[int, tuple[float, str]] = {}
    glued: set[int] = set()

    def first_line(node: ast.stmt) -> int:
        decorators: list[ast.expr] = getattr(node, "decorator_list", [])
        index: int = min([node.lineno, *(d.lineno for d in decorators)]) - 1
        while index > 0 and lines[index - 1].content(text).lstrip().startswith("#"):
            index -= 1
        return index

    def glue(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, first: int) -> None:
        head = node.body[0]
        has_docstring = (
            isinstance(head, ast.Expr)
            and isinstance(head.value, ast.Constant)
            and isinstance(head.value.value, str)
        )
        last = (head.end_lineno or head.lineno) - 1 if has_docstring else head.lineno - 1
        glued.update(range(first + 1, last + 1))

    module_head = tree.body[0] if tree.body else None
    if (
        isinstance(module_head, ast.Expr)
        and isinstance(module_head.value, ast.Constant)
        and isinstance(module_head.value.value, str)
    ):
        glued.update(range(module_head.lineno, module_head.end_lineno or module_head.lineno))
    after_definition = False
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            first = first_line(node)
            title = _definition_name(node)
            marks[first] = (_SECTION, title)
            glue(node, first)
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    if isinstance(child, _DEFINITIONS):
                        child_first = first_line(child)
                        if child_first > first:
                            marks[child_first] = (
                                _SUBSECTION,
                                f"{title} > {_definition_name(child)}",
                            )
                        glue(child, child_first)
            after_definition = True
        elif after_definition:
            marks[first_line(node)] = (_SECTION, name)
            after_definition = False
    blocks = _paragraphs(text, lines, title=name, code=True, marks=marks, glued=frozenset(glued))
    return blocks, frozenset(glued)


def _blocks(
    text: str, lines: Sequence[_Line], name: str, kind: Format
) -> tuple[list[_Block], frozenset[int]]:
    """The paragraphs of a file, and the lines that should stay with the line before them."""
    if kind in ("markdown", "html", "pdf"):
        return _markdown_blocks(text, lines, name)
    if kind in ("rst", "text"):
        return _rst_blocks(text, lines, name)
    if kind == "python":
        return _python_blocks(text, lines, name)
    return _paragraphs(text, lines, title=name, code=kind == "code"), frozenset()


# --- atoms and the cut -----------------------------------------------------------------------


def _windows(text: str, start: int, end: int, cost: float, title: str) -> list[_Atom]:
    """Runs of `WINDOW_TOKENS` tokens; the first costs `cost`, the others a cut between words."""
    tokens = list(TOKEN.finditer(text, start, end))
    atoms = []
    for k in range(0, len(tokens), WINDOW_TOKENS):
        group = tokens[k : k + WINDOW_TOKENS]
        atoms.append(
            _Atom(
                start if k == 0 else group[0].start(),
                group[-1].end(),
                len(group),
                cost if k == 0 else _WORD,
                title,
            )
        )
    return atoms


def _piece(text: str, start: int, end: int, cost: float, title: str) -> list[_Atom]:
    """One atom, or word windows when it is longer than `ATOM_TOKENS`."""
    tokens = count_tokens(text[start:end])
    if tokens == 0:
        return []
    if tokens > ATOM_TOKENS:
        return _windows(text, start, end, cost, title)
    return [_Atom(start, end, tokens, cost, title)]


def _atoms(
    text: str, lines: Sequence[_Line], blocks: Sequence[_Block], glued: frozenset[int]
) -> list[_Atom]:
    """The atoms of each block: the whole block, or its lines (code) or sentences (prose)."""
    atoms: list[_Atom] = []
    for block in blocks:
        opening = len(atoms)
        first, last = lines[block.first], lines[block.last]
        start = first.start if block.code else first.start + _indent(first.content(text))
        whole = _piece(text, start, last.end, block.cost, block.title)
        if len(whole) <= 1:
            atoms.extend(whole)
        elif block.code:
            for line in lines[block.first : block.last + 1]:
                cost = block.cost if line.index == block.first else _LINE
                cost += _GLUE if line.index in glued and line.index != block.first else 0.0
                atoms.extend(_piece(text, line.start, line.end, cost, block.title))
        else:
            cost, begin = block.cost, start
            ends = [end.end() for end in _SENTENCE_END.finditer(text, start, last.end)]
            for end in [*ends, last.end]:
                atoms.extend(_sentence(text, begin, end, cost, block.title))
                cost, begin = _SENTENCE, end
        if block.opens and opening < len(atoms):
            atoms[opening] = dataclasses.replace(atoms[opening], opens=True)
    return [_trimmed(text, atom) for atom in atoms]


def _sentence(text: str, start: int, end: int, cost: float, title: str) -> list[_Atom]:
    """A sentence as one atom or, when it is too long (a list, a table), cut at its lines."""
    if count_tokens(text[start:end]) <= ATOM_TOKENS:
        return _piece(text, start, end, cost, title)
    atoms: list[_Atom] = []
    begin = start
    while begin < end:
        stop = text.find("\n", begin, end)
        stop = end if stop < 0 else stop + 1
        content = text[begin:stop]
        pieces = _piece(text, begin + _indent(content), stop, cost, title)
        atoms.extend(pieces)
        cost = _LINE if pieces else cost
        begin = stop
    return atoms


def _indent(content: str) -> int:
    return len(content) - len(content.lstrip())


def _trimmed(text: str, atom: _Atom) -> _Atom:
    end = atom.end
    while end > atom.start and text[end - 1].isspace():
        end -= 1
    return dataclasses.replace(atom, end=end)


def _size_cost(tokens: int) -> float:
    return 0.5 * ((tokens - TARGET_TOKENS) / (MAX_TOKENS - TARGET_TOKENS)) ** 2


def _cuts(atoms: Sequence[_Atom]) -> list[tuple[int, int]]:
    """Runs of atoms [i, j) of `MIN_TOKENS`..`MAX_TOKENS` tokens whose cuts cost least."""
    prefix = [0]
    for atom in atoms:
        prefix.append(prefix[-1] + atom.tokens)
    n = len(atoms)
    if n == 0:
        return []
    if prefix[n] < MIN_TOKENS:
        return [(0, n)]
    # Atoms hold at least one token, so `prefix` rises strictly and the starts i of a run
    # ending at j that fits the bounds form one range, found by bisection.
    cut_cost = [0.0] + [atom.cost for atom in atoms[1:]]
    best = [math.inf] * (n + 1)
    back = [-1] * (n + 1)
    best[0] = 0.0
    for j in range(1, n + 1):
        end = prefix[j]
        lowest = bisect.bisect_left(prefix, end - MAX_TOKENS, 0, j)
        highest = bisect.bisect_right(prefix, end - MIN_TOKENS, 0, j)
        for i in range(lowest, highest):
            cost = best[i] + cut_cost[i] + _size_cost(end - prefix[i])
            if cost < best[j]:
                best[j], back[j] = cost, i
    if back[n] < 0:
        return _greedy(prefix)
    runs = []
    j = n
    while j > 0:
        runs.append((back[j], j))
        j = back[j]
    return runs[::-1]


def _greedy(prefix: Sequence[int]) -> list[tuple[int, int]]:
    """Fill each run up to `MAX_TOKENS`; a short last run joins the one before when it fits."""
    runs: list[tuple[int, int]] = []
    i = 0
    n = len(prefix) - 1
    while i < n:
        j = i + 1
        while j < n and prefix[j + 1] - prefix[i] <= MAX_TOKENS:
            j += 1
        runs.append((i, j))
        i = j
    if len(runs) > 1 and prefix[n] - prefix[runs[-1][0]] < MIN_TOKENS:
        merged = (runs[-2][0], n)
        if prefix[n] - prefix[merged[0]] <= MAX_TOKENS:
            runs[-2:] = [merged]
    return runs


def _title(titles: Iterable[str]) -> str:
    """The first title in full, then each later one without the path it shares with the one
    before: `Usage > Install; Upgrade` for a passage that runs from `Usage > Install` into
    `Usage > Upgrade`."""
    first, *rest = dict.fromkeys(titles)
    shown, before = [first], first.split(" > ")
    for title in rest:
        parts = title.split(" > ")
        shared = 0
        while shared < min(len(before), len(parts) - 1) and before[shared] == parts[shared]:
            shared += 1
        shown.append(" > ".join(parts[shared:]))
        before = parts
    return "; ".join(shown)


_JOINED = re.compile(r"(?<=\w)[./\\](?=[A-Za-z_])")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_PACKAGE_FILES = frozenset({"__init__", "__main__", "index", "mod"})
_FOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _expanded(match: re.Match[str]) -> str:
    word = match.group(0)
    parts = [part for piece in word.split("_") for part in _PART.findall(piece)]
    if len(parts) == len([piece for piece in word.split("_") if piece]):
        return word  # no case or digit boundary: Postgres already cuts at underscores
    return f"{word} {' '.join(parts)}"


def search_text(text: str) -> str:
    """`text` as it is indexed and searched: dotted and slashed names (`json.dumps`,
    `email/utils`) cut into their names, and each identifier with a case or digit boundary
    followed by its parts (`DictReader Dict Reader`, `HTTPServer HTTP Server`). Postgres's
    parser keeps `json.dumps` as one word and `DictReader` as one lexeme; snake_case it already
    cuts at the underscores. An all-lowercase compound (`deepcopy`) is left whole."""
    return _IDENTIFIER.sub(_expanded, _JOINED.sub(" ", text))


def path_words(name: str, folder: str = "") -> str:
    """The words a file's name gives its passages' title field: its stem (`gzip.py` ->
    `gzip`) and the folder it is in (`email/utils.py` -> `email utils`); a package's
    `__init__.py` is known by its folder (`collections`)."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    words = [folder] if _FOLDER.match(folder) else []
    if stem not in _PACKAGE_FILES:
        words.append(stem)
    return search_text(" ".join(words))


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    """A definition as its header reads, without decorators or the colon:
    `def get(self, key, default=None)`, `class Reader(Base)`."""
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(base) for base in [*node.bases, *node.keywords])
        return f"class {node.name}({bases})" if bases else f"class {node.name}"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{_definition_name(node)}({ast.unparse(node.args)}){returns}"


def python_signatures(text: str) -> dict[str, str]:
    """The signature path of each definition of a Python file by its title: `class A > def b`
    -> `class A(Base) > def b(self, x=1)` (top-level definitions and their classes' methods,
    as `_python_blocks` titles them). Empty for a file that does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return {}
    signatures: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            title, signature = _definition_name(node), _signature(node)
            signatures[title] = signature
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    if isinstance(child, _DEFINITIONS):
                        key = f"{title} > {_definition_name(child)}"
                        signatures[key] = f"{signature} > {_signature(child)}"
    return signatures


_NOT_WORDS = frozenset({"self", "cls", "None", "True", "False", "def", "class", "async"})


def _keywords(
    titles: Sequence[str],
    opened: Sequence[str],
    *,
    kind: Format,
    name: str,
    place: str,
    signatures: dict[str, str],
) -> str:
    """The title field of a passage: the file's words, its titles' names, and once more the
    names of the definitions or sections that start in it (so a definition's opening passage
    outranks its later ones), with their parameters' names (so a definition without a
    docstring is found by what it takes)."""

    def words(part: str) -> str:
        if kind == "python":
            part = " ".join(w for w in _IDENTIFIER.findall(part) if w not in _NOT_WORDS)
        return search_text(part)

    parts = [part for title in titles if title != name for part in title.split(" > ")]
    last = [words(title.split(" > ")[-1]) for title in opened if title != name]
    parameters = [
        word
        for title in opened
        if title in signatures
        for word in words(signatures[title].split(" > ")[-1].partition("(")[2]).split()
    ]
    return " ".join(
        filter(None, [place, *map(words, dict.fromkeys(parts)), *last, *dict.fromkeys(parameters)])
    )


def context_line(label: str, title: str, name: str, signatures: dict[str, str]) -> str:
    """Where a piece of a document sits, as one line that leads its view: the file's `label`
    and the section path or the definitions it is in, with their signatures
    (`configparser.py > class RawConfigParser(object) > def getboolean(self, section, ...)`)."""
    if title == name:
        return label
    return f"{label} > {signatures.get(title, title)}"


def _views(
    text: str, atoms: Sequence[_Atom], label: str, name: str, signatures: dict[str, str]
) -> tuple[str, ...]:
    """What a passage's vectors are made of: its atoms cut where a definition or a section
    starts (or the title changes), then into runs of at most `VIEW_TOKENS`, each led by its
    context line (`context_line`: the file, the section path or the definitions with their
    signatures), so each view is about one thing and says where it is."""
    runs: list[tuple[int, int]] = []  # (first atom, last atom)
    tokens = 0
    for k, atom in enumerate(atoms):
        starts = k == 0 or atom.opens or atom.title != atoms[k - 1].title
        if starts or tokens + atom.tokens > VIEW_TOKENS:
            runs.append((k, k))
            tokens = 0
        runs[-1] = (runs[-1][0], k)
        tokens += atom.tokens
    return tuple(
        f"{context_line(label, atoms[a].title, name, signatures)}\n"
        f"{text[atoms[a].start : atoms[b].end]}"
        for a, b in runs
    )


def _private(opened: Sequence[str], kind: Format) -> bool:
    """Whether a passage opens definitions and all are private by Python's convention (a
    leading underscore, not a dunder): `class _Helper`, `class Public > def _step`."""
    if kind != "python" or not opened:
        return False
    names = [title.split(" > ")[-1].split(" ")[-1] for title in opened]
    return all(n.startswith("_") and not n.startswith("__") for n in names)


def split(text: str, *, name: str, kind: Format, folder: str = "") -> list[dbdocuments.NewPassage]:
    """The passages of one file's text; `name` (the file's name) titles untitled passages and,
    with `folder` (the name of the directory it is in), gives words to their title field and
    leads each of their views."""
    place = path_words(name, folder)
    label = f"{folder}/{name}" if folder else name
    signatures = python_signatures(text) if kind == "python" else {}
    lines = _lines(text)
    blocks, glued = _blocks(text, lines, name, kind)
    atoms = _atoms(text, lines, blocks, glued)
    starts = [line.start for line in lines]
    passages = []
    for position, (i, j) in enumerate(_cuts(atoms)):
        start, end = atoms[i].start, atoms[j - 1].end
        body = text[start:end]
        titles = list(dict.fromkeys(atom.title for atom in atoms[i:j]))
        opened = list(dict.fromkeys(atom.title for atom in atoms[i:j] if atom.opens))
        keywords = _keywords(
            titles, opened, kind=kind, name=name, place=place, signatures=signatures
        )
        passages.append(
            dbdocuments.NewPassage(
                position=position,
                title=_title(atom.title for atom in atoms[i:j]),
                text=body,
                tokens=count_tokens(body),
                line_start=bisect.bisect_right(starts, start),
                line_end=bisect.bisect_right(starts, end - 1),
                char_start=start,
                char_end=end,
                keywords=keywords,
                keyword_tokens=count_tokens(keywords),
                search_text=search_text(body),
                views=_views(text, atoms[i:j], label, name, signatures),
                private=_private(opened, kind),
            )
        )
    return passages


def readable(text: str, kind: Format) -> str:
    """A file's decoded text as it is split: without a byte-order mark, and an HTML page as
    its text (`formats.html_text`)."""
    text = text.removeprefix("\ufeff")
    return formats.html_text(text) if kind == "html" else text


def kind_of(path: Path) -> Format | None:
    """The kind of file by its extension, or None when it is not ingested."""
    return FORMATS.get(path.suffix.lower())


# --- ingestion -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Read:
    sha256: str
    passages: list[dbdocuments.NewPassage] | None  # None: unchanged, not split


def _not_ingested(path: Path) -> str | None:
    """Why a file found is not read (None: it is)."""
    if kind_of(path) is None:
        return "not a text, Markdown or source file"
    return None if path.is_file() else "not a regular file"


def _walk(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to ingest under `paths` (sorted, absolute), and those skipped with a reason
    (an empty or unreadable folder too)."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []

    def unreadable(exc: OSError) -> None:
        skipped.append((Path(exc.filename).as_posix(), f"unreadable: {exc.strerror or exc}"))

    for given in paths:
        path = given.resolve()
        if path.is_dir():
            before = len(files) + len(skipped)
            for folder, dirs, names in os.walk(path, onerror=unreadable):
                dirs[:] = sorted(
                    d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRECTORIES
                )
                for file_name in sorted(names):
                    if file_name.startswith("."):
                        continue
                    found = Path(folder, file_name)
                    if reason := _not_ingested(found):
                        skipped.append((found.as_posix(), reason))
                    else:
                        files.append(found)
            if len(files) + len(skipped) == before:
                skipped.append((path.as_posix(), "an empty folder (hidden files are not read)"))
        elif path.is_file():
            if kind_of(path) is None:
                skipped.append((path.as_posix(), "not a text, Markdown or source file"))
            else:
                files.append(path)
        else:
            what = "not a regular file" if path.exists() else "no such file or directory"
            skipped.append((path.as_posix(), what))
    return files, skipped


def _with_vectors(
    passages: Sequence[dbdocuments.NewPassage], encoder: embedding.TextEncoder
) -> list[dbdocuments.NewPassage]:
    """The passages with the vectors of their views (all views encoded in one batch)."""
    vectors = encoder.encode([view for passage in passages for view in passage.views])
    out = []
    first = 0
    for passage in passages:
        last = first + len(passage.views)
        out.append(dataclasses.replace(passage, vectors=embedding.pack(vectors[first:last])))
        first = last
    return out


def _read(
    path: Path, known_sha256: str | None, encoder: embedding.TextEncoder | None
) -> _Read | str:
    """The file's sha256 and passages, with their vectors when there is an `encoder` (None
    when its sha256 is `known_sha256`), or why not."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return f"larger than {MAX_FILE_BYTES} bytes"
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    sha256 = hashlib.sha256(data).hexdigest()
    kind = kind_of(path)
    if kind == "pdf":
        if sha256 == known_sha256:
            return _Read(sha256, None)
        try:
            text = formats.pdf_text(data)
        except formats.UnreadableError as exc:
            return str(exc)
    else:
        if b"\0" in data:  # Postgres text cannot hold NUL
            return "binary"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "binary or not UTF-8"
        if sha256 == known_sha256:
            return _Read(sha256, None)
    if kind is None:
        return "not a text, Markdown or source file"
    passages = split(readable(text, kind), name=path.name, kind=kind, folder=path.parent.name)
    if encoder is not None:
        passages = _with_vectors(passages, encoder)
    return _Read(sha256, passages)


async def _read_ahead(
    files: Sequence[Path], known: dict[str, str], encoder: embedding.TextEncoder | None
) -> AsyncGenerator[tuple[Path, _Read | str], None]:
    """Each file read, split and embedded in a thread while the caller stores the one before."""
    if not files:
        return

    def read(path: Path) -> asyncio.Future[_Read | str]:
        return asyncio.ensure_future(
            asyncio.to_thread(_read, path, known.get(path.as_posix()), encoder)
        )

    ahead = read(files[0])
    try:
        for index, path in enumerate(files):
            done = await ahead
            if index + 1 < len(files):
                ahead = read(files[index + 1])
            yield path, done
    finally:
        if not ahead.done():
            ahead.cancel()
            await asyncio.wait([ahead])


async def add_documents(
    db: dbpool.Pool,
    *,
    tenant_id: str,
    collection: str,
    paths: Sequence[Path],
    model_dir: Path | None = None,
    encoder: embedding.TextEncoder | None = None,
) -> IngestReport:
    """Ingest files and directory trees into a tenant's collection, one transaction per file.

    An unchanged file (same sha256) is skipped; a changed one has its passages replaced.
    Binary, unreadable, oversized and unknown kinds of files are reported as skipped. Files are
    stored in the sorted order of the walk, so when one fails (Postgres gone, an unknown
    tenant) the error is raised and the files before it stay stored.

    Passages get the vectors of the embedding model in `model_dir` (default: the installed
    package's, `embedding.load`), or of `encoder` when one is given (the same model, e.g. with
    a cache in front). Without the model they are stored without vectors, found by
    their words alone, and a warning says so; an unchanged file stored without vectors gets
    them the next time it is ingested with the model ("embedded").
    """
    if not COLLECTION.match(collection):
        raise errors.InputError(
            f"collection {collection!r} must be 1-128 letters, digits or _.:/- "
            "(starting with a letter or digit)"
        )
    if encoder is None:
        encoder = await asyncio.to_thread(embedding.load, model_dir)
    model = embedding.MODEL if encoder is not None else None
    files, skipped = await asyncio.to_thread(_walk, paths)
    known = await dbdocuments.list_documents(
        db, tenant_id=tenant_id, collection=collection, model=model
    )
    outcomes: dict[str, list[str]] = {"added": [], "replaced": [], "embedded": [], "unchanged": []}
    written = vectors = 0
    async with contextlib.aclosing(_read_ahead(files, known, encoder)) as reads:
        async for path, read in reads:
            source = path.as_posix()
            if isinstance(read, str):
                skipped.append((source, read))
                continue
            if read.passages is None:
                outcomes["unchanged"].append(source)
                continue
            outcome = await dbdocuments.store_document(
                db,
                tenant_id=tenant_id,
                collection=collection,
                source=source,
                sha256=read.sha256,
                passages=read.passages,
                model=model,
            )
            outcomes[outcome].append(source)
            if outcome != "unchanged":
                written += len(read.passages)
                vectors += sum(len(p.views) for p in read.passages if p.vectors)
    report = IngestReport(
        added=tuple(outcomes["added"]),
        replaced=tuple(outcomes["replaced"]),
        embedded=tuple(outcomes["embedded"]),
        unchanged=tuple(outcomes["unchanged"]),
        skipped=tuple(skipped),
        passages=written,
        vectors=vectors,
        model=model,
    )
    log.info(
        "documents ingested",
        extra={
            "event": "documents.ingested",
            "tenant_id": tenant_id,
            "collection": collection,
            "added": len(report.added),
            "replaced": len(report.replaced),
            "embedded": len(report.embedded),
            "unchanged": len(report.unchanged),
            "skipped": len(report.skipped),
            "passages": written,
            "vectors": vectors,
            "model": model,
        },
    )
    if model is None and written:
        log.warning(
            "%d passages of collection %s stored without vectors: the embedding model is not "
            "installed, so they are found by their words only; install it and run `docs add` "
            "again to embed them",
            written,
            collection,
            extra={
                "event": "documents.not_embedded",
                "tenant_id": tenant_id,
                "collection": collection,
                "passages": written,
            },
        )
    return report
