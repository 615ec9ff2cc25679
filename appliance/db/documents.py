"""Query wrappers of `sql/documents.sql`: documents, their passages and vectors, BM25 search.

The frozen rows of this area live here rather than in `appliance.models` for now: they are
handed only to `appliance.agents`, and this module is the one place that builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from appliance.db import pool, sql

_Q = sql.load("documents")

# "embedded": the content was stored already, without vectors of the model; now it has them.
Outcome = Literal["added", "replaced", "embedded", "unchanged"]


@dataclasses.dataclass(frozen=True, slots=True)
class NewPassage:
    """A passage to store: its place in its document (lines and characters) and its text."""

    position: int
    title: str
    text: str
    tokens: int
    line_start: int
    line_end: int
    char_start: int
    char_end: int
    keywords: str = ""  # the title field: file name, title and definition names, their parts
    keyword_tokens: int = 0
    search_text: str = ""  # the text as indexed (identifiers cut into their parts)
    views: tuple[str, ...] = ()  # the texts its vectors are made of (one vector each)
    private: bool = False  # every definition that starts in it has a private name
    vectors: bytes = b""  # the views' unit vectors, float32, one after another; none: b""


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A passage found by a search, with the source it cites and its score (BM25 from
    `search_passages`; from `retrieval.retrieve`, 1 / its rank in the merged order)."""

    source: str
    collection: str
    position: int
    title: str
    text: str
    tokens: int
    line_start: int
    line_end: int
    score: float

    @property
    def lines(self) -> str:
        """The line range to cite: `12-30`, or `12` for a single line."""
        if self.line_start == self.line_end:
            return str(self.line_start)
        return f"{self.line_start}-{self.line_end}"


@dataclasses.dataclass(frozen=True, slots=True)
class Vectors:
    """The stored vectors of one passage (float32 unit vectors, one after another)."""

    passage_id: int
    private: bool
    vectors: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Collection:
    collection: str
    documents: int
    passages: int
    tokens: int


async def list_documents(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, collection: str, model: str | None
) -> dict[str, str]:
    """The content sha256 of every stored document of a collection, by source; with a `model`,
    only of those whose passages all have its vectors (the others are due to be embedded)."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_documents"], tenant_id, collection, model)
    return {row["source"]: row["sha256"] for row in rows if model is None or row["embedded"]}


async def store_document(
    db: pool.Pool,
    *,
    tenant_id: str,
    collection: str,
    source: str,
    sha256: str,
    passages: Sequence[NewPassage],
    model: str | None,
) -> Outcome:
    """Store a document's passages in one transaction, replacing those of an earlier version.

    A document whose stored sha256 is `sha256` is left as it is ("unchanged"), unless a
    `model` is given (the passages carry its vectors) and its stored passages lack them: then
    they are stored again with their vectors ("embedded"). Writers of one collection queue on
    its row, so the document frequencies stay exact under concurrency.
    """
    with pool.translated():
        async with db.acquire() as conn, conn.transaction():
            await conn.fetchval(_Q["lock_collection"], tenant_id, collection)
            current = await conn.fetchrow(_Q["find_document"], tenant_id, collection, source, model)
            same = False
            if current is not None:
                same = current["sha256"] == sha256
                if same and (model is None or current["embedded"]):
                    return "unchanged"
                await conn.fetchval(_Q["delete_passages"], current["document_id"])
            document_id = await conn.fetchval(
                _Q["save_document"], tenant_id, collection, source, sha256
            )
            await conn.fetchval(
                _Q["insert_passages"],
                tenant_id,
                collection,
                document_id,
                [p.position for p in passages],
                [p.title for p in passages],
                [p.text for p in passages],
                [p.tokens for p in passages],
                [p.line_start for p in passages],
                [p.line_end for p in passages],
                [p.char_start for p in passages],
                [p.char_end for p in passages],
                [p.keywords for p in passages],
                [p.keyword_tokens for p in passages],
                [p.search_text or p.text for p in passages],
                [p.vectors or None for p in passages],
                [p.private for p in passages],
                model,
            )
    if current is None:
        return "added"
    return "embedded" if same else "replaced"


async def list_collections(
    conn: pool.Connection | pool.Pool, *, tenant_id: str
) -> list[Collection]:
    """Every collection of a tenant, with its counts."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_collections"], tenant_id)
    return [Collection(**pool.record_dict(row)) for row in rows]


async def search_passages(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    collections: Sequence[str],
    query: str,
    k1: float,
    b: float,
    max_tokens: int,
    limit: int,
    title_weight: float = 1.0,
    title_b: float = 0.5,
) -> dict[int, Passage]:
    """The `limit` best passages by BM25 that hold any lexeme of `query`, by id, best first.

    Only passages of at most `max_tokens` tokens are considered.
    """
    with pool.translated():
        rows = await conn.fetch(
            _Q["search_passages"],
            tenant_id,
            list(collections),
            query,
            k1,
            b,
            max_tokens,
            limit,
            title_weight,
            title_b,
        )
    return {row["passage_id"]: _passage(row, row["score"]) for row in rows}


async def list_passage_vectors(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, collections: Sequence[str], model: str
) -> list[Vectors]:
    """The vectors of `model` of a tenant's passages in `collections`."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_passage_vectors"], tenant_id, list(collections), model)
    return [Vectors(row["passage_id"], row["private"], row["vectors"]) for row in rows]


async def get_collection_versions(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, collections: Sequence[str]
) -> dict[str, int]:
    """The version of each of a tenant's collections that exists, by name."""
    with pool.translated():
        rows = await conn.fetch(_Q["get_collection_versions"], tenant_id, list(collections))
    return {row["collection"]: row["version"] for row in rows}


async def get_passages(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, passage_ids: Sequence[int]
) -> dict[int, Passage]:
    """A tenant's passages by id (score 0); ids of other tenants or gone are left out."""
    with pool.translated():
        rows = await conn.fetch(_Q["get_passages"], tenant_id, list(passage_ids))
    return {row["passage_id"]: _passage(row, 0.0) for row in rows}


async def list_collection_passages(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, collections: Sequence[str]
) -> list[Passage]:
    """Every passage of a tenant's collections, by collection, source and position (score 0)."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_collection_passages"], tenant_id, list(collections))
    return [_passage(row, 0.0) for row in rows]


def _passage(row: pool.Record, score: float) -> Passage:
    return Passage(
        source=row["source"],
        collection=row["collection"],
        position=row["position"],
        title=row["title"],
        text=row["text"],
        tokens=row["tokens"],
        line_start=row["line_start"],
        line_end=row["line_end"],
        score=score,
    )
