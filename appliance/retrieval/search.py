"""Surgical retrieval: the few passages a task needs, within a token budget, citing their source.

`retrieve` ranks a tenant's passages of the collections asked for two ways and merges them:

- by words: BM25 computed in SQL (`search_passages` of `appliance/db/sql/documents.sql`) over
  the passages that hold any word of the question (OR semantics: not all are required);
- by meaning: the question embedded with the model that embedded the passages
  (`appliance.retrieval.embedding`), against each passage's stored vectors (one per view: a
  piece of its text led by where it sits, `documents.context_line`), kept in the process as
  one matrix per collection (`appliance.retrieval.vectors`); a passage counts by its best
  view, less `PRIVATE_PENALTY` when every definition that starts in it is private, and not at
  all below `MIN_SIMILARITY`.

The rankings are fused (`fuse`, `FUSION`): the words' best passage first, so a question that
names what it wants (a file, an identifier, a rare word) gets its exact match, then the others
by weighted reciprocal rank fusion, which keeps a passage ranked high by either side. The
weights favour the meaning (2 to 5, k 10), chosen on bench/tokens.py's first set: its
questions are in other words than the code's; a one-in-four split of slots, shipped before,
dropped answers the words had ranked 8th to 14th on new material. Without the embedding model
(a warning says so, `embedding.load`), or for passages stored without vectors, the ranking is
by words alone.

Then the best ones are kept greedily: in merged order, a passage that would overflow the budget,
or that nearly repeats one already kept (`DUPLICATE_OVERLAP`), is skipped and the next one
tried, until `top_k` are kept. What a passage costs is the token
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

from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.retrieval import documents, embedding, vectors

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
# Cosine similarity taken off a passage whose definitions are all private (`_helper`): the
# public function that uses a helper is what a question is usually about.
PRIVATE_PENALTY = 0.05
# A passage less similar than this shares no meaning with the question (unrelated sentences
# score 0 to ~0.15 with this model; the bench's answers 0.19 to 0.85, median 0.57): left to
# the words' side, so a question about nothing the collection holds gets nothing by meaning.
MIN_SIMILARITY = 0.15

_WORD = re.compile(r"\w")
_WORDS = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
# A passage whose words overlap this much with one already chosen is left out: the budget
# buys something new instead.
DUPLICATE_OVERLAP = 0.9


@dataclasses.dataclass(frozen=True, slots=True)
class Fusion:
    """How the ranking by words and the ranking by meaning are merged (`fuse`): reciprocal
    rank fusion with constant `k` and a weight per side."""

    k: float = 10.0
    words: float = 2.0
    meaning: float = 5.0
    # The words' best passages that go first whatever the meaning says: a question that names
    # what it wants (a file, an identifier, a rare word) gets its exact match.
    words_first: int = 1


FUSION = Fusion()

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
    words_only: bool = False,
    fusion: Fusion = FUSION,
) -> list[Passage]:
    """The best `top_k` passages for `query` whose blocks fit in `token_budget`, best first.

    `model_dir` names the embedding model's folder (default: the installed package's);
    `words_only` ranks by BM25 alone, as without the model (for comparison); `fusion` says
    how the two rankings are merged.
    """
    if top_k < 1 or token_budget < 1 or not collections or not _WORD.search(query):
        return []
    limit = top_k * CANDIDATES_PER_PASSAGE + EXTRA_CANDIDATES
    encoder = None if words_only else await asyncio.to_thread(embedding.load, model_dir)
    # BM25 runs in Postgres and the index is read (or found current) while the question is
    # embedded in a thread: the two overlap on 2 cores now that no vectors are decoded.
    lexical_search = asyncio.ensure_future(
        dbdocuments.search_passages(
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
    )
    semantic: list[int] = []
    try:
        if encoder is not None:
            index_read = asyncio.ensure_future(
                vectors.indexes.get(
                    db, tenant_id=tenant_id, collections=collections, model=embedding.MODEL
                )
            )
            try:
                question = await asyncio.to_thread(encoder.encode, query_texts(query))
                index = await index_read
            finally:
                if not index_read.done():
                    index_read.cancel()
                    await asyncio.wait([index_read])
            semantic = index.nearest(
                question, limit, private_penalty=PRIVATE_PENALTY, min_similarity=MIN_SIMILARITY
            )
        lexical = await lexical_search
    finally:
        if not lexical_search.done():
            lexical_search.cancel()
            await asyncio.wait([lexical_search])
    order = fuse(list(lexical), semantic, fusion)
    return await _pack(db, tenant_id, order, dict(lexical), top_k=top_k, token_budget=token_budget)


async def _pack(
    db: dbpool.Pool,
    tenant_id: str,
    order: Sequence[int],
    found: dict[int, Passage],
    *,
    top_k: int,
    token_budget: int,
) -> list[Passage]:
    """The first `top_k` passages of `order` that fit the budget and repeat none before
    them; those not in `found` (only the meaning found them) are read in runs of 2 * top_k,
    as the packing reaches them."""
    chosen: list[Passage] = []
    words: list[frozenset[str]] = []
    spent = 0
    step = 2 * top_k
    for first in range(0, len(order), step):
        run = order[first : first + step]
        missing = [passage_id for passage_id in run if passage_id not in found]
        if missing:
            found.update(
                await dbdocuments.get_passages(db, tenant_id=tenant_id, passage_ids=missing)
            )
        for rank, passage_id in enumerate(run, start=first + 1):
            passage = found.get(passage_id)
            if passage is None:
                continue  # deleted since its vectors were read
            cost = cost_of(passage)
            if spent + cost > token_budget:
                continue
            these = frozenset(_WORDS.findall(passage.text.lower()))
            if any(_similar(these, other) for other in words):
                continue
            chosen.append(dataclasses.replace(passage, score=1.0 / rank))
            words.append(these)
            spent += cost
            if len(chosen) == top_k:
                return chosen
    return chosen


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether two passages say nearly the same thing: their words overlap by at least
    `DUPLICATE_OVERLAP` (Jaccard), as a manual's callback and promise versions of one method."""
    return bool(a) and len(a & b) >= DUPLICATE_OVERLAP * len(a | b)


async def collection_passages(
    db: dbpool.Pool, *, tenant_id: str, collections: Sequence[str]
) -> list[Passage]:
    """Every passage of the collections, in document order: the context of an agent whose
    whole collection goes in its cached prompt."""
    return await dbdocuments.list_collection_passages(
        db, tenant_id=tenant_id, collections=collections
    )


def fuse(lexical: Sequence[int], semantic: Sequence[int], fusion: Fusion = FUSION) -> list[int]:
    """Two rankings of passage ids as one: the words' first `fusion.words_first`, then the
    others by weighted reciprocal rank fusion: a passage scores `fusion.words / (fusion.k +
    its rank by words)` plus the same by meaning, each id once, best first; ties go to the
    one ranked first by words, then by meaning."""
    scores: dict[int, float] = {}
    for weight, ranking in ((fusion.words, lexical), (fusion.meaning, semantic)):
        for rank, passage_id in enumerate(ranking, start=1):
            scores[passage_id] = scores.get(passage_id, 0.0) + weight / (fusion.k + rank)
    first = list(lexical[: fusion.words_first])
    rest = sorted(scores.keys() - set(first), key=lambda passage_id: -scores[passage_id])
    return first + rest


def query_texts(query: str) -> list[str]:
    """What the question is embedded as: whole, and each of its sentences when it has several
    (a question of two facts, or a sentence of context before the question proper), so a
    passage close to any of them ranks by that."""
    sentences = [s for s in _SENTENCE.split(query.strip()) if _WORD.search(s)]
    return [query, *sentences] if len(sentences) > 1 else [query]


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
