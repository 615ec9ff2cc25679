"""What a running workflow sees: `await ctx.step("name", fn, *args)`.

A step's result is checkpointed as JSON. On resume the recorded results are handed back in
order without running the functions again. The checkpoint of a step is committed at the next
boundary, before any further step runs (or with the task's final state when the workflow
returns): the code between two steps is deterministic, so nothing with an effect runs before
the previous step is durable, and the last step costs no commit of its own.

A step that raises is checkpointed as a failure only if the workflow handled the error (it went
on to another step, or returned); on replay the same exception type is raised again. A failure
that escapes the workflow is not recorded, so the next attempt runs that step again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from appliance import errors, models

T = TypeVar("T")


def encode(value: Any, what: str) -> str:
    """JSON text of a value Postgres can store (no NaN or Infinity), or InputError."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"{what} a value that is not JSON: {exc}") from exc


class Signal(BaseException):
    """An engine control-flow signal raised at a step boundary, not an error.

    Like asyncio.CancelledError it derives from BaseException, so a workflow's
    `except Exception` around a step cannot swallow it and carry on (calling a model again,
    ending `succeeded`); only the worker catches it.
    """


class Cancelled(Signal):
    """The task was cancelled; it stops at this step boundary."""


class Released(Signal):
    """The worker is shutting down; the task goes back to the queue at this boundary."""


class StepWriter(Protocol):
    """Writes a step's checkpoint; returns True when a cancel was requested."""

    async def __call__(self, step: models.PendingStep) -> bool: ...


class TaskContext:
    """One attempt of one task, as its workflow function sees it."""

    def __init__(
        self,
        *,
        task_id: int,
        tenant_id: str,
        attempt: int,
        checkpoints: tuple[tuple[str, Any, Any], ...],
        writer: StepWriter,
        draining: Callable[[], bool],
        services: Mapping[str, Any] | None = None,
        worker_id: str = "",
        workflow: str = "",
    ) -> None:
        self.task_id = task_id
        self.worker_id = worker_id
        self.workflow = workflow
        self.services: Mapping[str, Any] = services or {}
        self.tenant_id = tenant_id
        self.attempt = attempt
        self._checkpoints = checkpoints
        self._writer = writer
        self._draining = draining
        self._position = 0
        self._pending: models.PendingStep | None = None

    @property
    def next_position(self) -> int:
        """The position the next `step` call will have."""
        return self._position

    def service(self, name: str, kind: type[T], missing: str) -> T:
        """The daemon's service `name` (from `services`), or ConfigError saying `missing`.

        Workflows look services up here rather than in `services` directly, so that the replay
        check (`engine.replay`), which runs a workflow against recorded checkpoints without the
        daemon, can stand in for them.
        """
        found = self.services.get(name)
        if not isinstance(found, kind):
            raise errors.ConfigError(missing)
        return found

    @property
    def replayed(self) -> int:
        """How many steps were read back from checkpoints in this attempt."""
        return min(self._position, len(self._checkpoints))

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` once, durably; return its JSON result (the checkpoint on replay)."""
        position = self._position
        self._position += 1
        if position < len(self._checkpoints):
            recorded, output, error = self._checkpoints[position]
            if recorded != name:
                raise errors.NonDeterminismError(
                    f"task {self.task_id}: step {position} is {name!r} now but was checkpointed "
                    f"as {recorded!r}; the workflow code changed or is not deterministic"
                )
            if error is not None:
                raise _rebuild(name, error)
            return output
        await self.boundary()
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args)
            else:
                result = await asyncio.to_thread(fn, *args)
        except Exception as exc:
            error = {"types": _lineage(type(exc)), "message": str(exc)}
            self._pending = models.PendingStep(
                position,
                name,
                "null",
                started,
                (time.perf_counter() - clock) * 1000,
                json.dumps(error),
            )
            raise
        duration_ms = (time.perf_counter() - clock) * 1000
        text = encode(result, f"step {name!r} returned")
        self._pending = models.PendingStep(position, name, text, started, duration_ms)
        return result if isinstance(result, str | int | float | bool | None) else json.loads(text)

    async def boundary(self) -> None:
        """Make the previous step durable; stop here if cancelled or shutting down."""
        if self._draining():
            raise Released
        if self._pending is not None:
            cancel = await self._writer(self._pending)
            self._pending = None
            if cancel:
                raise Cancelled

    def unwritten(self, failed: bool = False) -> models.PendingStep | None:
        """The step to checkpoint with the attempt's end. When the attempt fails, a step
        failure still pending (nothing ran after it) is not recorded: the next attempt runs
        that step again."""
        if failed and self._pending is not None and self._pending.error_json is not None:
            return None
        return self._pending

    def written(self) -> None:
        """The attempt's end wrote the pending step."""
        self._pending = None


def _lineage(kind: type[BaseException]) -> list[str]:
    """The exception's class and its bases, as importable names, most specific first."""
    return [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in kind.__mro__
        if issubclass(cls, Exception) and cls is not Exception
    ] + ["builtins.Exception"]


def _rebuild(name: str, error: dict[str, Any]) -> Exception:
    """The recorded exception again, as the most specific of its classes that is already
    imported and takes a message (JSONDecodeError comes back as a ValueError), so the same
    `except` clause catches it on replay."""
    message = str(error.get("message", ""))
    for qualified in error.get("types", []):
        module, _, qualname = str(qualified).rpartition(".")
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if isinstance(found, type) and issubclass(found, Exception):
            with contextlib.suppress(Exception):  # a constructor that wants other arguments
                rebuilt: Exception = found(message)
                return rebuilt
    return errors.StepFailedError(f"step {name!r} failed: {message}")
