"""Surgical retrieval: the few passages a task needs, within a token budget, citing their source.

`retrieve` ranks a tenant's passages of the collections asked for two ways and merges them:

- by words: BM25 computed in SQL (`search_passages` of `appliance/db/sql/documents.sql`) over
  the passages that hold any word of the question (OR semantics: not all are required);
- by meaning: the question embedded with the model that embedded the passages
  (`appliance.retrieval.embedding`), against each passage's stored vectors (one per view: its
  text cut at definitions or sections and into pieces of ~100 tokens); a passage counts by its
  best view, less `PRIVATE_PENALTY` when every definition that starts in it is private, and
  not at all below `MIN_SIMILARITY`.
  The vectors are fetched and ranked in numpy (no pgvector; see migration 0008).

The rankings are merged in turn (`merge`): the words' best passage first, then the meaning's
next `LEXICAL_EVERY` - 1, and so on, skipping a passage already taken. So a question that names
what it wants (an identifier, a rare word) gets its exact match first, and one in other words
than the text's gets most of the context from the meaning side. Without the embedding model (a
warning says so, `embedding.load`), or for passages stored without vectors, the ranking is by
words alone.

Then the best ones are kept greedily: in merged order, a passage that would overflow the budget
is skipped and the next one tried, until `top_k` are kept. What a passage costs is the token
estimate of its rendered block (the `[source: …]` line and its text), so `render_context` of
the result never exceeds the budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.retrieval import documents, embedding

K1 = 1.2
B = 0.75
# The title field (file name, definition or heading names: `keywords`) counts this many times
# a word of the text (BM25F), with its own, milder, length normalisation.
TITLE_WEIGHT = 1.0
TITLE_B = 0.5
# How many ranked candidates each side gives per passage wanted: room to skip those that do
# not fit the budget, and for a passage ranked low by one side to be lifted by the other.
CANDIDATES_PER_PASSAGE = 4
EXTRA_CANDIDATES = 16
# One slot in this many goes to the words' ranking, the others to the meaning's (measured on
# bench/tokens.py's 130 questions and the tests' handbook and json questions: reciprocal rank
# fusion either lost the exact matches of the latter or the paraphrases of the former).
LEXICAL_EVERY = 4
# Cosine similarity taken off a passage whose definitions are all private (`_helper`): the
# public function that uses a helper is what a question is usually about.
PRIVATE_PENALTY = 0.05
# A passage less similar than this shares no meaning with the question (unrelated sentences
# score 0 to ~0.15 with this model; the bench's answers 0.19 to 0.85, median 0.57): left to
# the words' side, so a question about nothing the collection holds gets nothing by meaning.
MIN_SIMILARITY = 0.15

_WORD = re.compile(r"\w")

Passage = dbdocuments.Passage


async def retrieve(
    db: dbpool.Pool,
    *,
    tenant_id: str,
    collections: Sequence[str],
    query: str,
    top_k: int,
    token_budget: int,
    model_dir: Path | None = None,
) -> list[Passage]:
    """The best `top_k` passages for `query` whose blocks fit in `token_budget`, best first.

    `model_dir` names the embedding model's folder (default: the installed package's).
    """
    if top_k < 1 or token_budget < 1 or not collections or not _WORD.search(query):
        return []
    limit = top_k * CANDIDATES_PER_PASSAGE + EXTRA_CANDIDATES
    encoder = await asyncio.to_thread(embedding.load, model_dir)
    # The question is embedded first, in a thread: overlapping it with the queries was slower
    # on 2 cores (the encoder's BLAS threads and the decoding of the vectors contend).
    question = None if encoder is None else (await asyncio.to_thread(encoder.encode, [query]))[0]
    lexical_search = dbdocuments.search_passages(
        db,
        tenant_id=tenant_id,
        collections=collections,
        query=search_query(query),
        k1=K1,
        b=B,
        max_tokens=token_budget,
        limit=limit,
        title_weight=TITLE_WEIGHT,
        title_b=TITLE_B,
    )
    semantic: list[int] = []
    if question is None:
        lexical = await lexical_search
    else:
        lexical, stored = await asyncio.gather(
            lexical_search,
            dbdocuments.list_passage_vectors(
                db, tenant_id=tenant_id, collections=collections, model=embedding.MODEL
            ),
        )
        semantic = nearest(stored, question, limit)
    order = merge(list(lexical), semantic)
    missing = [passage_id for passage_id in order if passage_id not in lexical]
    found = dict(lexical)
    if missing:
        found.update(await dbdocuments.get_passages(db, tenant_id=tenant_id, passage_ids=missing))
    chosen: list[Passage] = []
    spent = 0
    for rank, passage_id in enumerate(order, start=1):
        passage = found.get(passage_id)
        if passage is None:
            continue  # deleted since its vectors were read
        cost = cost_of(passage)
        if spent + cost > token_budget:
            continue
        chosen.append(dataclasses.replace(passage, score=1.0 / rank))
        spent += cost
        if len(chosen) == top_k:
            break
    return chosen


def nearest(
    stored: Sequence[dbdocuments.Vectors], question: embedding.Vectors, limit: int
) -> list[int]:
    """The ids of the `limit` passages whose best view is nearest `question`, nearest first
    (a few milliseconds for a thousand passages, so it runs in the event loop)."""
    if not stored:
        return []
    matrix = embedding.unpack(b"".join(row.vectors for row in stored))
    counts = [len(row.vectors) // (4 * embedding.DIMENSIONS) for row in stored]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    best = np.maximum.reduceat(matrix @ question, starts)
    best -= PRIVATE_PENALTY * np.array([row.private for row in stored], dtype=np.float32)
    order = np.argsort(-best, kind="stable")[:limit]
    return [stored[index].passage_id for index in order if best[index] >= MIN_SIMILARITY]


def merge(lexical: Sequence[int], semantic: Sequence[int]) -> list[int]:
    """Two rankings of passage ids in turn, one of `lexical` then `LEXICAL_EVERY` - 1 of
    `semantic`, each id once; when one runs out, the rest of the other."""
    rankings = (lexical, semantic)
    positions = [0, 0]
    merged: list[int] = []
    taken: set[int] = set()
    slot = 0
    while positions[0] < len(lexical) or positions[1] < len(semantic):
        side = 0 if slot % LEXICAL_EVERY == 0 else 1
        if positions[side] == len(rankings[side]):
            side = 1 - side
        passage_id = rankings[side][positions[side]]
        positions[side] += 1
        if passage_id not in taken:
            taken.add(passage_id)
            merged.append(passage_id)
            slot += 1
    return merged


def search_query(query: str) -> str:
    """The question as searched: identifiers cut like the indexed text (`documents.search_text`)."""
    return documents.search_text(query)


def render_passage(passage: Passage | Mapping[str, Any]) -> str:
    """One passage for a model's context: a line citing its source and lines, then its text.

    A passage read back from a checkpoint (`dataclasses.asdict` of one) renders the same.
    """
    if not isinstance(passage, Passage):
        passage = Passage(**passage)
    header = f"[source: {passage.source}:{passage.lines}]"
    if passage.title:
        header = f"{header} {passage.title}"
    return f"{header}\n{passage.text}"


def render_context(passages: Sequence[Passage | Mapping[str, Any]]) -> str:
    """The passages for a model's context, each citing its source, separated by blank lines."""
    return "\n\n".join(render_passage(passage) for passage in passages)


def cost_of(passage: Passage) -> int:
    """The tokens a passage takes in the context: the estimate of its rendered block."""
    return documents.count_tokens(render_passage(passage))
