"""How long the daemon runs, and the tasks that run with it.

A `Lifetime` ends at a signal (`stop()`), or at the first subsystem that fails for good
(`fail(exc)`): the first failure is kept and raised once everything has been torn down, so
the exit code is the failure's. `background()` runs a coroutine as a task for the length of a
block: a task that raises ends the lifetime with its error; at the end of the block it is
cancelled and awaited, never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Lifetime:
    """Until a signal or the first failure of a subsystem."""

    def __init__(self) -> None:
        self._ended = asyncio.Event()
        self.failure: BaseException | None = None

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def stop(self) -> None:
        """End it without a failure (SIGTERM, SIGINT, --until-idle)."""
        self._ended.set()

    def fail(self, exc: BaseException) -> None:
        """End it with `exc`; only the first failure is kept."""
        if self.failure is None:
            self.failure = exc
        self._ended.set()

    async def wait(self) -> None:
        await self._ended.wait()

    async def until(self, event: asyncio.Event) -> bool:
        """Wait for `event` or the end of the lifetime; True when the event came first."""
        if event.is_set():
            return True
        waits = [asyncio.create_task(event.wait()), asyncio.create_task(self._ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return event.is_set() and not self.ended

    def raise_failure(self) -> None:
        """Raise the failure that ended the lifetime, if one did."""
        if self.failure is not None:
            raise self.failure

    def watch(self, task: asyncio.Task[Any]) -> None:
        """A task whose error (anything but its cancellation) ends the lifetime."""
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.debug("%s ended: %s", task.get_name(), exc, extra={"event": "daemon.task_failed"})
            self.fail(exc)

    @contextlib.asynccontextmanager
    async def background(
        self, name: str, coroutine: Coroutine[Any, Any, None]
    ) -> AsyncIterator[asyncio.Task[None]]:
        """Run `coroutine` as a task for the block; cancelled and awaited at its end."""
        task = asyncio.create_task(coroutine, name=name)
        self.watch(task)
        try:
            yield task
        finally:
            await cancel(task)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it to end (its error, if any, went to whoever watched it)."""
    task.cancel()
    await asyncio.wait([task])
