"""The benchmarks' corpora and questions: the first set (tuned on) and the held-out set (not).

Each corpus is one collection: its files, its questions, and where each answer lies (a file
and the lines that state it; a question of several facts needs them all). A passage holds a
fact when it is of that file and its line range holds one of those lines.

Ingestion goes through `add_documents` with an encoder that keeps the vectors it made in
`.bench-cache/` (keyed by the sha256 of the texts encoded, so a change of the views or of the
files makes new ones): the first run embeds, later runs of the same code read them back.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import re
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.db import pool as dbpool
from appliance.retrieval import documents, embedding
from bench import heldout, questions

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench-cache" / "embeddings"

# The first set: 41 modules of the standard library (bench/questions.py).
FIRST_FILES = (
    "argparse.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "email/utils.py",
    "enum.py", "fnmatch.py", "fractions.py", "functools.py", "glob.py", "gzip.py", "heapq.py",
    "html/__init__.py", "ipaddress.py", "json/__init__.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "pathlib.py", "pprint.py", "queue.py",
    "random.py", "reprlib.py", "sched.py", "secrets.py", "shlex.py", "shutil.py",
    "statistics.py", "string.py", "tarfile.py", "tempfile.py", "textwrap.py",
    "urllib/parse.py", "uuid.py", "zipfile.py",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """Where one fact of an answer is: the file's source (as ingested) and its lines."""

    source: str
    lines: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    """A question and the facts its answer needs (all of them)."""

    text: str
    facts: tuple[Location, ...]
    label: str  # how a miss is reported


@dataclasses.dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    collection: str
    paths: tuple[Path, ...]
    cases: tuple[Case, ...]
    tuned: bool  # the retriever's settings were chosen on it


def definition_lines(text: str, name: str) -> list[int]:
    """The `def`/`class` lines of `name` (`f` or `Class.member`), under `if`/`try` too."""
    parts = name.split(".")
    found: list[int] = []

    def walk(body: Iterable[ast.stmt], depth: int) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name != parts[depth]:
                    continue
                if depth == len(parts) - 1:
                    found.append(node.lineno)
                elif isinstance(node, ast.ClassDef):
                    walk(node.body, depth + 1)
            elif isinstance(node, ast.If):
                walk(node.body, depth)
                walk(node.orelse, depth)
            elif isinstance(node, ast.Try):
                walk(node.body, depth)
                walk(node.orelse, depth)
                walk(node.finalbody, depth)
                for handler in node.handlers:
                    walk(handler.body, depth)

    walk(ast.parse(text).body, 0)
    return found


def span_lines(text: str, span: str) -> list[int]:
    """The lines where `span` starts in `text`, runs of white space matching any."""
    pattern = r"\s+".join(map(re.escape, span.split()))
    return [text.count("\n", 0, match.start()) + 1 for match in re.finditer(pattern, text)]


def first_set() -> Corpus:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = tuple((stdlib / name).resolve() for name in FIRST_FILES)
    missing = [p.as_posix() for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"not in this interpreter's standard library: {', '.join(missing)}")
    texts: dict[str, str] = {}
    cases = []
    for question in questions.QUESTIONS:
        path = (stdlib / question.path).resolve()
        text = texts.setdefault(question.path, path.read_text(encoding="utf-8"))
        lines = definition_lines(text, question.name)
        if not lines:
            raise SystemExit(f"{question.path}: no definition of {question.name}")
        cases.append(
            Case(
                question.text,
                (Location(path.as_posix(), tuple(lines)),),
                f"{question.path} {question.name}",
            )
        )
    return Corpus("first set", "stdlib", paths, tuple(cases), tuned=True)


def heldout_sets() -> tuple[Corpus, Corpus]:
    """The held-out code and prose, each file checked against its recorded sha256."""
    files = {**heldout.CODE_FILES, **heldout.PROSE_FILES}
    texts: dict[str, str] = {}
    problems = []
    for key, sha256 in files.items():
        path = heldout.resolve(key)
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            problems.append(f"{path}: changed since the questions were written")
            continue
        kind = documents.kind_of(path)
        assert kind is not None, path
        texts[key] = documents.readable(data.decode("utf-8"), kind)
    if problems:
        raise SystemExit("held-out corpus: " + "; ".join(problems))
    corpora = []
    for kind, names in (("code", heldout.CODE_FILES), ("prose", heldout.PROSE_FILES)):
        cases = []
        for question in heldout.QUESTIONS:
            if question.kind != kind:
                continue
            facts = []
            for answer in question.answers:
                text = texts[answer.path]
                if answer.name:
                    lines = definition_lines(text, answer.name)
                else:
                    lines = span_lines(text, answer.span)
                if not lines:
                    raise SystemExit(f"{answer.path}: no {answer.name or answer.span!r}")
                source = heldout.resolve(answer.path).resolve().as_posix()
                facts.append(Location(source, tuple(lines)))
            label = "; ".join(
                f"{Path(a.path).name} {a.name or repr(a.span[:40])}" for a in question.answers
            )
            cases.append(Case(question.text, tuple(facts), label))
        paths = tuple(heldout.resolve(key).resolve() for key in names)
        corpora.append(Corpus(f"held-out {kind}", f"heldout-{kind}", paths, tuple(cases), False))
    return corpora[0], corpora[1]


def holds(passage: Mapping[str, Any], where: Location) -> bool:
    """Whether a passage is of the fact's file and its line range holds one of its lines."""
    return passage["source"] == where.source and any(
        passage["line_start"] <= line <= passage["line_end"] for line in where.lines
    )


def answered(passages: Sequence[Mapping[str, Any]], case: Case) -> bool:
    """Whether every fact of the case's answer is in the passages."""
    return all(any(holds(p, fact) for p in passages) for fact in case.facts)


class CachedEncoder:
    """The embedding model with its vectors kept on disk, by the sha256 of the texts encoded."""

    def __init__(self, encoder: embedding.Encoder) -> None:
        self._encoder = encoder
        self.encoded = 0  # texts encoded by the model, not read from the cache

    def encode(self, texts: Sequence[str]) -> embedding.Vectors:
        key = hashlib.sha256("\0".join(texts).encode()).hexdigest()
        path = CACHE / embedding.MODEL / f"{key}.npy"
        if path.is_file():
            cached: embedding.Vectors = np.load(path)
            return cached
        vectors = self._encoder.encode(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        self.encoded += len(texts)
        return vectors


def cached_encoder() -> CachedEncoder | None:
    encoder = embedding.load()
    return None if encoder is None else CachedEncoder(encoder)


async def ingest(
    pool: dbpool.Pool, corpus: Corpus, *, tenant_id: str, encoder: CachedEncoder | None
) -> documents.IngestReport:
    return await documents.add_documents(
        pool,
        tenant_id=tenant_id,
        collection=corpus.collection,
        paths=list(corpus.paths),
        encoder=encoder,
    )
