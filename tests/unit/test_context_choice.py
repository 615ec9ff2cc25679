"""The cheapest context per call: retrieval against the whole collection in the cache."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from appliance.agents import context_choice, costs

SONNET = costs.Prices(
    model="claude-sonnet-4-6",
    at=dt.date(2026, 1, 1),
    input=Decimal(3),
    cache_write_5m=Decimal("3.75"),
    cache_write_1h=Decimal(6),
    cache_read=Decimal("0.30"),
    output=Decimal(15),
)


def choose(tokens: int, calls_per_hour: float, **overrides: object) -> context_choice.Choice:
    arguments: dict[str, object] = {
        "prices": SONNET,
        "collection_tokens": tokens,
        "budget_tokens": 4800,
        "calls_per_hour": calls_per_hour,
        "ttl": "5m",
        "cacheable": True,
    }
    arguments.update(overrides)
    return context_choice.choose(**arguments)  # type: ignore[arg-type]


class TestChoose:
    def test_a_small_collection_called_often_is_cached_whole(self) -> None:
        """20k tokens read from the cache at 0.1x cost less than 4.8k uncached."""
        choice = choose(20_000, calls_per_hour=60)

        assert choice.mode == "collection"
        assert choice.expected_usd < choice.other_usd == Decimal("0.0144")

    def test_the_same_collection_called_rarely_is_retrieved(self) -> None:
        """Once an hour the cache has always expired: every call would pay a write."""
        choice = choose(20_000, calls_per_hour=1)

        assert choice.mode == "retrieval"
        assert choice.expected_usd == Decimal("0.0144")

    def test_a_large_collection_is_retrieved_however_often_it_is_called(self) -> None:
        """Past the crossover (10x the budget at 0.1x reads) retrieval is cheaper."""
        assert choose(60_000, calls_per_hour=600).mode == "retrieval"

    def test_a_collection_past_the_limit_is_never_put_whole(self) -> None:
        """A collection larger than MAX_COLLECTION_TOKENS needs retrieval, whatever it costs."""
        choice = choose(
            context_choice.MAX_COLLECTION_TOKENS + 1, calls_per_hour=600, budget_tokens=50_000
        )

        assert choice.mode == "retrieval"
        assert choice.other_usd < choice.expected_usd

    def test_an_uncacheable_prefix_pays_the_whole_collection_every_call(self) -> None:
        """Below the model's minimum cacheable prefix nothing is cached: input price each time."""
        choice = choose(3000, calls_per_hour=600, cacheable=False, budget_tokens=4000)

        assert choice.mode == "collection"
        assert choice.expected_usd == Decimal("0.009")

    def test_the_definition_can_insist_on_either(self) -> None:
        """`retrieval.context` forces a mode; both costs are still recorded."""
        assert choose(20_000, 60, preference="retrieval").mode == "retrieval"
        assert choose(60_000, 1, preference="collection").mode == "collection"


class TestCrossover:
    @pytest.mark.parametrize(
        ("calls_per_hour", "low", "high"),
        [(600, 47_000, 48_000), (60, 44_000, 45_000), (6, 5_500, 6_500)],
    )
    def test_the_crossover_falls_with_the_call_rate(
        self, calls_per_hour: float, low: int, high: int
    ) -> None:
        """About 10x the budget when the cache stays warm, far less when it expires."""
        tokens = context_choice.crossover_tokens(
            prices=SONNET, budget_tokens=4800, calls_per_hour=calls_per_hour, ttl="5m"
        )

        assert low <= tokens <= high
        assert choose(tokens - 100, calls_per_hour).mode == "collection"
        assert choose(tokens + 100, calls_per_hour).mode == "retrieval"

    def test_a_one_hour_cache_survives_sparse_calls(self) -> None:
        """At 6 calls an hour the 1h cache mostly hits, though each write costs 2x."""
        five = context_choice.crossover_tokens(
            prices=SONNET, budget_tokens=4800, calls_per_hour=6, ttl="5m"
        )
        hour = context_choice.crossover_tokens(
            prices=SONNET, budget_tokens=4800, calls_per_hour=6, ttl="1h"
        )

        assert hour > 2 * five
