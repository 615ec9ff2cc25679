"""Retry delays: exponential, capped, with jitter so retries of a burst do not align."""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): in [d/2, d], d = base*2^(n-1)."""
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))
    return (rng or random).uniform(ceiling / 2, ceiling)
