"""Query wrappers of `sql/documents.sql`: documents, their passages, and BM25 search.

The frozen rows of this area live here rather than in `appliance.models` for now: they are
handed only to `appliance.agents`, and this module is the one place that builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from appliance.db import pool, sql

_Q = sql.load("documents")

Outcome = Literal["added", "replaced", "unchanged"]


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


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A passage found by a search, with the source it cites and its BM25 score."""

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
class Collection:
    collection: str
    documents: int
    passages: int
    tokens: int


async def list_documents(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, collection: str
) -> dict[str, str]:
    """The content sha256 of every stored document of a collection, by source."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_documents"], tenant_id, collection)
    return {row["source"]: row["sha256"] for row in rows}


async def store_document(
    db: pool.Pool,
    *,
    tenant_id: str,
    collection: str,
    source: str,
    sha256: str,
    passages: Sequence[NewPassage],
) -> Outcome:
    """Store a document's passages in one transaction, replacing those of an earlier version.

    A document whose stored sha256 is `sha256` is left as it is ("unchanged"). Writers of one
    collection queue on its row, so the document frequencies stay exact under concurrency.
    """
    with pool.translated():
        async with db.acquire() as conn, conn.transaction():
            await conn.fetchval(_Q["lock_collection"], tenant_id, collection)
            current = await conn.fetchrow(_Q["find_document"], tenant_id, collection, source)
            if current is not None and current["sha256"] == sha256:
                return "unchanged"
            if current is not None:
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
            )
    return "added" if current is None else "replaced"


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
) -> list[Passage]:
    """The `limit` best passages by BM25 that hold any lexeme of `query`, best first.

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
    return [Passage(**pool.record_dict(row)) for row in rows]
