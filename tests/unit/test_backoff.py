"""Retry delays: exponential growth, the cap, and the jitter bounds."""

from __future__ import annotations

import random

import pytest

from appliance.engine import backoff


def seeded(seed: int) -> random.Random:
    """A reproducible generator: the jitter needs no cryptographic strength."""
    return random.Random(seed)  # noqa: S311


class _Extreme(random.Random):
    """A Random whose uniform() returns the upper (or lower) bound, to read the ceiling."""

    def __init__(self, *, upper: bool) -> None:
        super().__init__(0)
        self._upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self._upper else a


class TestDelay:
    @pytest.mark.parametrize("attempt", range(1, 9))
    def test_delay_lies_between_half_and_whole_ceiling(self, attempt: int) -> None:
        """Every delay lies in [d/2, d] with d = base * 2^(attempt-1)."""
        rng = seeded(attempt)
        ceiling = 0.5 * 2 ** (attempt - 1)

        samples = [backoff.delay(attempt, base=0.5, cap=1000, rng=rng) for _ in range(200)]

        assert all(ceiling / 2 <= s <= ceiling for s in samples)

    def test_ceiling_doubles_per_attempt(self) -> None:
        """The longest possible delay doubles with each attempt."""
        top = _Extreme(upper=True)

        ceilings = [backoff.delay(n, base=1.5, cap=1000, rng=top) for n in range(1, 6)]

        assert ceilings == [1.5, 3.0, 6.0, 12.0, 24.0]

    def test_floor_is_half_the_ceiling(self) -> None:
        """The shortest possible delay is half the ceiling, so retries never come at once."""
        bottom = _Extreme(upper=False)

        floors = [backoff.delay(n, base=1.0, cap=1000, rng=bottom) for n in range(1, 5)]

        assert floors == [0.5, 1.0, 2.0, 4.0]

    def test_delay_is_capped(self) -> None:
        """No delay exceeds the cap, however many attempts failed."""
        top = _Extreme(upper=True)

        assert backoff.delay(20, base=1.0, cap=300, rng=top) == 300
        assert backoff.delay(20, base=1.0, cap=300, rng=_Extreme(upper=False)) == 150

    def test_huge_attempt_numbers_stay_at_the_cap(self) -> None:
        """An attempt number past float range still gives the capped delay, not an error."""
        assert backoff.delay(1100, base=1.0, cap=300, rng=_Extreme(upper=True)) == 300

    @pytest.mark.parametrize("attempt", [0, -3])
    def test_attempts_below_one_count_as_the_first(self, attempt: int) -> None:
        """Attempt numbers below 1 get the first attempt's delay."""
        top = _Extreme(upper=True)

        assert backoff.delay(attempt, base=2.0, cap=100, rng=top) == 2.0

    def test_jitter_spreads_a_burst(self) -> None:
        """Retries of one burst get different delays spread over the whole jitter range."""
        rng = seeded(7)

        samples = [backoff.delay(3, base=1.0, cap=100, rng=rng) for _ in range(200)]

        assert len(set(samples)) == len(samples)
        assert min(samples) < 2.4
        assert max(samples) > 3.6

    def test_same_seed_gives_the_same_delays(self) -> None:
        """Delays drawn from equally seeded generators are equal."""
        first = [backoff.delay(n, base=1.0, cap=60, rng=seeded(42)) for n in range(1, 6)]
        again = [backoff.delay(n, base=1.0, cap=60, rng=seeded(42)) for n in range(1, 6)]

        assert first == again

    def test_zero_base_means_no_delay(self) -> None:
        """A base of zero retries at once."""
        assert backoff.delay(5, base=0.0, cap=300) == 0.0
