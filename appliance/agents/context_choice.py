"""The cheapest context for an agent's call: the passages its question needs, or the whole
collection in the cached prompt.

Retrieval puts up to `token_budget` tokens of passages in the first message, uncached: each
call pays them at the input price, and misses what the ranking did not find. The whole
collection in the system prompt, behind a cache breakpoint, is found in full (recall 1.0) and
is paid at the cache-read price (0.1x input for most models) while the cache is warm; each call
that finds it expired pays a cache write instead (1.25x for 5 minutes, 2x for an hour). With
calls arriving at a steady rate of r per second, the cache has expired at a call with
probability q = exp(-r * ttl), so a call expects to pay

    retrieval:   budget * p_input
    collection:  tokens * (q * p_write + (1 - q) * p_read)

(tokens below the model's minimum cacheable prefix are never cached: every call pays them at
p_input). `choose` takes the cheaper, and retrieval for a collection larger than
`MAX_COLLECTION_TOKENS` (it must leave room in the context window) or when the agent's
definition says so (`retrieval.context`). The rate is the agent's calls over the last
`RATE_WINDOW`, read from the ledger, so an agent called in bursts moves to the collection while
the burst lasts. The choice and both expected costs go in the ledger row of each call.

The crossover: the collection wins below budget * p_input / (q * p_write + (1 - q) * p_read)
tokens: for a 4,800-token budget on claude-sonnet-4-6 ($3 in, $3.75 write, $0.30 read), about
48,000 tokens at several calls a minute, 6,000 at one call every ten minutes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from appliance.agents import costs
from appliance.db import costs as dbcosts
from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool

Mode = Literal["retrieval", "collection"]
Preference = Literal["auto", "retrieval", "collection"]

MAX_COLLECTION_TOKENS = 100_000
RATE_WINDOW = dt.timedelta(hours=1)
TTL_SECONDS = {"5m": 300, "1h": 3600}
# What a passage adds to the rendered collection beyond its text: its `[source: ...]` line.
HEADER_TOKENS = 20
_PER_MTOK = Decimal(1_000_000)


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The context chosen for a call, and what each way was expected to cost per call."""

    mode: Mode
    collection_tokens: int
    expected_usd: Decimal  # of the chosen context, per call
    other_usd: Decimal  # of the other one (the same when only one was possible)
    calls_per_hour: float

    @property
    def note(self) -> str:
        """One line for the log and the task's timeline."""
        return (
            f"context: {self.mode} (collection {self.collection_tokens:,} tokens, "
            f"{self.calls_per_hour:g} calls in the last hour; expected ${self.expected_usd:.6f} "
            f"per call against ${self.other_usd:.6f})"
        )


def miss_probability(calls_per_hour: float, ttl: str) -> float:
    """The chance that a call finds the cache expired, with calls at a steady rate."""
    return math.exp(-calls_per_hour / 3600 * TTL_SECONDS[ttl])


def expected_costs(
    *,
    prices: costs.Prices,
    collection_tokens: int,
    budget_tokens: int,
    calls_per_hour: float,
    ttl: str,
    cacheable: bool,
) -> tuple[Decimal, Decimal]:
    """(retrieval, whole collection): the expected cost per call of each context in USD."""
    retrieval = budget_tokens * prices.input / _PER_MTOK
    if not cacheable:
        return retrieval, collection_tokens * prices.input / _PER_MTOK
    write = prices.cache_write_1h if ttl == "1h" else prices.cache_write_5m
    miss = Decimal(str(miss_probability(calls_per_hour, ttl)))
    per_token = miss * write + (1 - miss) * prices.cache_read
    return retrieval, collection_tokens * per_token / _PER_MTOK


def crossover_tokens(
    *, prices: costs.Prices, budget_tokens: int, calls_per_hour: float, ttl: str
) -> int:
    """The largest collection that is cheaper whole in the cache than retrieved."""
    write = prices.cache_write_1h if ttl == "1h" else prices.cache_write_5m
    miss = Decimal(str(miss_probability(calls_per_hour, ttl)))
    per_token = miss * write + (1 - miss) * prices.cache_read
    return int(budget_tokens * prices.input / per_token)


def choose(
    *,
    prices: costs.Prices,
    collection_tokens: int,
    budget_tokens: int,
    calls_per_hour: float,
    ttl: str,
    cacheable: bool,
    preference: Preference = "auto",
) -> Choice:
    """The cheaper context (see the module's docstring), unless `preference` names one."""
    retrieval, collection = expected_costs(
        prices=prices,
        collection_tokens=collection_tokens,
        budget_tokens=budget_tokens,
        calls_per_hour=calls_per_hour,
        ttl=ttl,
        cacheable=cacheable,
    )
    fits = collection_tokens <= MAX_COLLECTION_TOKENS
    if preference == "collection" or (preference == "auto" and fits and collection < retrieval):
        return Choice("collection", collection_tokens, collection, retrieval, calls_per_hour)
    return Choice("retrieval", collection_tokens, retrieval, collection, calls_per_hour)


async def decide(
    db: dbpool.Pool,
    *,
    tenant_id: str,
    agent: str,
    model: str,
    collections: Sequence[str],
    budget_tokens: int,
    prefix_tokens: int,
    min_cacheable: int,
    ttl: str,
    preference: Preference = "auto",
) -> Choice:
    """The context for the next call of `agent`, from the collections' sizes, the model's
    prices and the agent's calls over the last `RATE_WINDOW`."""
    found = {c.collection: c for c in await dbdocuments.list_collections(db, tenant_id=tenant_id)}
    tokens = sum(
        found[name].tokens + HEADER_TOKENS * found[name].passages
        for name in collections
        if name in found
    )
    since = dt.datetime.now(dt.UTC) - RATE_WINDOW
    calls = await dbcosts.count_agent_calls(db, tenant_id=tenant_id, agent=agent, since=since)
    prices = await costs.price_of(db, model)
    return choose(
        prices=prices,
        collection_tokens=tokens,
        budget_tokens=budget_tokens,
        calls_per_hour=calls * (dt.timedelta(hours=1) / RATE_WINDOW),
        ttl=ttl,
        cacheable=prefix_tokens + tokens >= min_cacheable,
        preference=preference,
    )
