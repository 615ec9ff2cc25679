"""A simulated clock for the scheduler: time moves only when a test moves it."""

from __future__ import annotations

import asyncio
import datetime as dt


class SimulatedClock:
    """Now is what the test set; a sleep ends once the test has moved time to its deadline."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._sleepers: list[tuple[dt.datetime, asyncio.Future[None]]] = []

    def now(self) -> dt.datetime:
        return self._now

    async def sleep_until(self, deadline: dt.datetime) -> None:
        if self._now >= deadline:
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = (deadline, woken)
        self._sleepers.append(sleeper)
        try:
            await woken
        finally:
            self._sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleepers whose deadline it reached."""
        self._now += dt.timedelta(seconds=seconds)
        for deadline, woken in self._sleepers:
            if deadline <= self._now and not woken.done():
                woken.set_result(None)
