"""Surgical retrieval: the few passages a task needs, within a token budget, citing their source.

`retrieve` asks Postgres for the passages of a tenant's collections that hold any word of the
question (OR semantics: a question's words are not all required), ranked by BM25 computed in
SQL (`search_passages` of `appliance/db/sql/documents.sql`), then keeps the best ones greedily:
in score order, a passage that would overflow the budget is skipped and the next one tried,
until `top_k` are kept. What a passage costs is the token estimate of its rendered block (the
`[source: …]` line and its text), so `render_context` of the result never exceeds the budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.agents import documents
from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool

K1 = 1.2
B = 0.75
# The title field (file name, definition or heading names: `keywords`) counts this many times
# a word of the text (BM25F), with its own, milder, length normalisation.
TITLE_WEIGHT = 1.0
TITLE_B = 0.5
# How many ranked candidates to fetch per passage wanted: room to skip those that do not fit.
CANDIDATES_PER_PASSAGE = 4
EXTRA_CANDIDATES = 16

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
) -> list[Passage]:
    """The best `top_k` passages for `query` whose blocks fit in `token_budget`, best first."""
    if top_k < 1 or token_budget < 1 or not collections or not _WORD.search(query):
        return []
    candidates = await dbdocuments.search_passages(
        db,
        tenant_id=tenant_id,
        collections=collections,
        query=search_query(query),
        k1=K1,
        b=B,
        max_tokens=token_budget,
        limit=top_k * CANDIDATES_PER_PASSAGE + EXTRA_CANDIDATES,
        title_weight=TITLE_WEIGHT,
        title_b=TITLE_B,
    )
    chosen: list[Passage] = []
    spent = 0
    for passage in candidates:
        cost = cost_of(passage)
        if spent + cost > token_budget:
            continue
        chosen.append(passage)
        spent += cost
        if len(chosen) == top_k:
            break
    return chosen


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
