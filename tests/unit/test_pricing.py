"""The cost of one model call from its usage counters, and reading the SDK's usage object."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import anthropic.types
import pytest

from appliance import errors
from appliance.agents import costs

# Sonnet 4.5 as published (reference 1.6), handed in as the prices table would hand them.
SONNET = costs.Prices(
    model="claude-sonnet-4-5",
    at=dt.date(2025, 6, 1),
    input=Decimal("3"),
    cache_write_5m=Decimal("3.75"),
    cache_write_1h=Decimal("6"),
    cache_read=Decimal("0.30"),
    output=Decimal("15"),
)


def cost_of(**counters: int) -> Decimal:
    """The cost of a call with these usage counters at Sonnet 4.5 prices."""
    return costs.price_call(SONNET, costs.Usage(**counters))[0]


def uncached_cost_of(**counters: int) -> Decimal:
    """What a call with these usage counters would have cost without caching."""
    return costs.price_call(SONNET, costs.Usage(**counters))[1]


class TestPriceCall:
    def test_input_tokens_at_the_input_price(self) -> None:
        """1,000 uncached input tokens cost $0.003."""
        assert cost_of(input_tokens=1_000) == Decimal("0.003")

    def test_5m_cache_writes_at_the_5m_write_price(self) -> None:
        """2,000 tokens written to the 5-minute cache cost $0.0075."""
        assert cost_of(cache_creation_input_tokens=2_000, cache_write_5m_tokens=2_000) == Decimal(
            "0.0075"
        )

    def test_1h_cache_writes_at_the_1h_write_price(self) -> None:
        """1,000 tokens written to the 1-hour cache cost $0.006, not the 5m rate."""
        assert cost_of(cache_creation_input_tokens=1_000, cache_write_1h_tokens=1_000) == Decimal(
            "0.006"
        )

    def test_cache_reads_at_the_read_price(self) -> None:
        """10,000 tokens read from the cache cost $0.003."""
        assert cost_of(cache_read_input_tokens=10_000) == Decimal("0.003")

    def test_output_tokens_at_the_output_price(self) -> None:
        """500 output tokens cost $0.0075."""
        assert cost_of(output_tokens=500) == Decimal("0.0075")

    def test_every_category_adds_up(self) -> None:
        """A call using every category costs the sum of the five."""
        cost = cost_of(
            input_tokens=1_000,
            cache_creation_input_tokens=3_000,
            cache_write_5m_tokens=2_000,
            cache_write_1h_tokens=1_000,
            cache_read_input_tokens=10_000,
            output_tokens=500,
        )

        assert cost == Decimal("0.003") + Decimal("0.0075") + Decimal("0.006") + Decimal(
            "0.003"
        ) + Decimal("0.0075")

    def test_cache_tokens_are_never_added_to_input(self) -> None:
        """Cache reads and writes are billed only at their own prices, never also as input."""
        cost = cost_of(input_tokens=1_000, cache_read_input_tokens=10_000)

        assert cost == Decimal("0.006")
        assert cost != Decimal(11_000) * SONNET.input / 1_000_000

    def test_missing_split_is_billed_at_the_5m_rate(self) -> None:
        """Cache writes without the 5m/1h breakdown are all billed at the 5m write price."""
        assert cost_of(cache_creation_input_tokens=2_000) == Decimal("0.0075")

    def test_writes_missing_from_the_split_are_billed_at_the_5m_rate(self) -> None:
        """Writes counted in the total but in neither TTL of the split are billed at 5m."""
        cost = cost_of(cache_creation_input_tokens=3_000, cache_write_1h_tokens=1_000)

        assert cost == Decimal("0.0075") + Decimal("0.006")

    def test_uncached_cost_bills_every_prompt_token_as_input(self) -> None:
        """The uncached cost prices input, writes and reads at the input price, plus output."""
        uncached = uncached_cost_of(
            input_tokens=1_000,
            cache_creation_input_tokens=3_000,
            cache_write_5m_tokens=2_000,
            cache_write_1h_tokens=1_000,
            cache_read_input_tokens=10_000,
            output_tokens=500,
        )

        assert uncached == Decimal("0.042") + Decimal("0.0075")

    def test_uncached_cost_equals_cost_without_caching(self) -> None:
        """A call that used no cache costs exactly its uncached cost."""
        assert costs.price_call(SONNET, costs.Usage(input_tokens=8_000, output_tokens=500)) == (
            Decimal("0.0315"),
            Decimal("0.0315"),
        )

    def test_money_is_decimal(self) -> None:
        """Costs are exact Decimals, not floats."""
        cost, uncached = costs.price_call(SONNET, costs.Usage(input_tokens=1))

        assert isinstance(cost, Decimal)
        assert isinstance(uncached, Decimal)
        assert cost == Decimal("0.000003")


class TestWorstCase:
    def test_prices_estimate_as_input_and_max_tokens_as_output(self) -> None:
        """8,000 prompt tokens and max_tokens 1,000 may cost $0.024 + $0.015."""
        assert costs.worst_case_usd(SONNET, 8_000, 1_000) == Decimal("0.039")

    def test_refuses_negative_counts(self) -> None:
        """A negative estimate is bad input."""
        with pytest.raises(errors.InputError, match="input_tokens_estimate"):
            costs.worst_case_usd(SONNET, -1, 1_000)


class TestUsageFromApi:
    def test_reads_the_sdk_usage_object(self) -> None:
        """Every counter of the anthropic SDK's Usage, the TTL split included, is read."""
        usage = anthropic.types.Usage(
            input_tokens=11,
            output_tokens=22,
            cache_creation_input_tokens=30,
            cache_read_input_tokens=44,
            cache_creation=anthropic.types.CacheCreation(
                ephemeral_5m_input_tokens=10, ephemeral_1h_input_tokens=20
            ),
        )

        assert costs.Usage.from_api(usage) == costs.Usage(
            input_tokens=11,
            cache_creation_input_tokens=30,
            cache_write_5m_tokens=10,
            cache_write_1h_tokens=20,
            cache_read_input_tokens=44,
            output_tokens=22,
        )

    def test_none_counters_read_as_zero(self) -> None:
        """Cache counters the API leaves null, and an absent split, read as 0."""
        usage = anthropic.types.Usage(input_tokens=5, output_tokens=7)

        assert costs.Usage.from_api(usage) == costs.Usage(input_tokens=5, output_tokens=7)

    def test_reads_the_dict_form(self) -> None:
        """The JSON form of usage (a dict with a nested split) reads the same."""
        usage = {
            "input_tokens": 1,
            "cache_creation_input_tokens": 2,
            "cache_read_input_tokens": None,
            "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 3,
        }

        assert costs.Usage.from_api(usage) == costs.Usage(
            input_tokens=1, cache_creation_input_tokens=2, cache_write_5m_tokens=2, output_tokens=3
        )

    def test_input_tokens_exclude_cache_tokens(self) -> None:
        """input_tokens stays the API's uncached count; cache tokens are not folded into it."""
        usage = {"input_tokens": 100, "cache_read_input_tokens": 5_000, "output_tokens": 1}

        assert costs.Usage.from_api(usage).input_tokens == 100

    def test_refuses_a_negative_counter(self) -> None:
        """A negative count is bad input, named by its field."""
        with pytest.raises(errors.InputError, match="output_tokens"):
            costs.Usage.from_api({"input_tokens": 1, "output_tokens": -1})
