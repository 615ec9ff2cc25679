"""What a running workflow sees: `await ctx.step("name", fn, *args)`.

A step's result is checkpointed as JSON. On resume the recorded results are handed back in
order without running the functions again. The checkpoint of a step is committed at the next
boundary, before any further step runs (or with the task's final state when the workflow
returns): the code between two steps is deterministic, so nothing with an effect runs before
the previous step is durable, and the last step costs no commit of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from appliance import errors


def encode(value: Any, what: str) -> str:
    """JSON text of a value Postgres can store (no NaN or Infinity), or InputError."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"{what} a value that is not JSON: {exc}") from exc


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The task was cancelled; it stops at this step boundary."""


class Released(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The worker is shutting down; the task goes back to the queue at this boundary."""


class StepWriter(Protocol):
    """Writes a step's checkpoint; returns True when a cancel was requested."""

    async def __call__(self, step: PendingStep) -> bool: ...


PendingStep = tuple[int, str, str, dt.datetime, float]


class TaskContext:
    """One attempt of one task, as its workflow function sees it."""

    def __init__(
        self,
        *,
        task_id: int,
        tenant_id: str,
        attempt: int,
        checkpoints: tuple[tuple[str, Any], ...],
        writer: StepWriter,
        draining: Callable[[], bool],
    ) -> None:
        self.task_id = task_id
        self.tenant_id = tenant_id
        self.attempt = attempt
        self._checkpoints = checkpoints
        self._writer = writer
        self._draining = draining
        self._position = 0
        self.pending: PendingStep | None = None

    @property
    def replayed(self) -> int:
        """How many steps were read back from checkpoints in this attempt."""
        return min(self._position, len(self._checkpoints))

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` once, durably; return its JSON result (the checkpoint on replay)."""
        position = self._position
        self._position += 1
        if position < len(self._checkpoints):
            recorded, output = self._checkpoints[position]
            if recorded != name:
                raise errors.NonDeterminismError(
                    f"task {self.task_id}: step {position} is {name!r} now but was checkpointed "
                    f"as {recorded!r}; the workflow code changed or is not deterministic"
                )
            return output
        await self.boundary()
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args)
        else:
            result = await asyncio.to_thread(fn, *args)
        duration_ms = (time.perf_counter() - clock) * 1000
        text = encode(result, f"step {name!r} returned")
        self.pending = (position, name, text, started, duration_ms)
        return result if isinstance(result, str | int | float | bool | None) else json.loads(text)

    async def boundary(self) -> None:
        """Make the previous step durable; stop here if cancelled or shutting down."""
        if self._draining():
            raise Released
        if self.pending is not None:
            cancel = await self._writer(self.pending)
            self.pending = None
            if cancel:
                raise Cancelled
