"""Replay and fork: a new task that reuses a task's checkpoints before a step and runs the rest.

As Temporal's reset and DBOS's fork do: `replay(task, from_step="model:1")` starts a new task of
the same tenant, workflow and input whose checkpoints before the first step named `model:1` are
copied from the source, so its workflow reads them back and runs from that step on; with no step
it runs every step again. The new task names its source (`replay_of`), and both chains record it.

Before the new task is written, the workflow as registered now is run against the source's
checkpoints up to the fork step, as a resumed attempt would run it: every step before the fork
is read back (nothing runs), and the run stops at the fork step. If the code no longer makes the
same steps in the same order up to there (a step renamed, added, dropped), the replay is refused
with the first difference. Services a workflow looks up with `ctx.service` are stood in for,
since no step function runs; code between steps must not use them (it must not have effects).

`rebuild_from_audit` is the proof that the audit log suffices: it rebuilds a task's step results
from its audit entries alone and compares them with the checkpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar, cast

from appliance import errors, models, settings
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, inputs, registry

T = TypeVar("T")
CHECK_SECONDS = 10.0  # how long the replay check may take to reach the fork step
STEP_ACTIONS = frozenset({"step.completed", "step.failed", "step.reused"})
_SHOWN_CHARS = 80


@dataclasses.dataclass(frozen=True, slots=True)
class Replayed:
    """The task a replay started."""

    task_id: int
    replay_of: int
    from_step: str | None
    reused_steps: int


# ---- the check -----------------------------------------------------------------------------


class _Reached(BaseException):
    """The check reached the fork step with every step before it as recorded."""


class _Diverged(BaseException):
    """The workflow made a step other than the recorded one."""


class _Unavailable:
    """Stands in for a daemon service during the check: any use of it is refused."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Callable[..., NoReturn]:
        def refuse(*_: Any, **__: Any) -> NoReturn:
            raise errors.ReplayMismatchError(
                f"the workflow calls the service {self._name!r} ({attribute}) outside a step; "
                "it cannot be replayed from checkpoints"
            )

        return refuse


class _Probe(context.TaskContext):
    """A context that reads steps back from the source's checkpoints up to the fork step."""

    def __init__(self, task: models.Task, steps: Sequence[models.Step], fork: int) -> None:
        super().__init__(
            task_id=task.task_id,
            tenant_id=task.tenant_id,
            attempt=task.attempts,
            checkpoints=tuple((s.name, s.output, s.error) for s in steps[:fork]),
            writer=self._no_writes,
            draining=lambda: False,
            workflow=task.workflow,
        )
        self._names = [s.name for s in steps]
        self._fork = fork

    @staticmethod
    async def _no_writes(step: models.PendingStep) -> bool:
        raise errors.EngineError(f"the replay check tried to checkpoint step {step.name!r}")

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        position = self.next_position
        recorded = self._names[position]
        if name != recorded:
            raise _Diverged(
                f"step {position} is {name!r} in the workflow now but was checkpointed as "
                f"{recorded!r}"
            )
        if position >= self._fork:
            raise _Reached
        return await super().step(name, fn, *args)

    def service(self, name: str, kind: type[T], missing: str) -> T:
        return cast(T, _Unavailable(name))


async def check(
    workflow: registry.Workflow,
    task: models.Task,
    steps: Sequence[models.Step],
    fork: int,
    *,
    seconds: float = CHECK_SECONDS,
) -> None:
    """ReplayMismatchError naming the first difference between the steps the workflow makes
    now, up to position `fork`, and the task's checkpoints."""
    fork_name = f"step {fork} {steps[fork].name!r}"
    refused = f"task {task.task_id} cannot be replayed from {fork_name}"
    probe = _Probe(task, steps, fork)
    try:
        async with asyncio.timeout(seconds):
            await workflow.fn(probe, inputs.of(task.input))
    except _Reached:
        return
    except _Diverged as exc:
        raise errors.ReplayMismatchError(
            f"{refused}: the workflow's code no longer matches its checkpoints: {exc}"
        ) from None
    except TimeoutError:
        raise errors.ReplayMismatchError(
            f"{refused}: replaying its checkpoints, the workflow did not reach {fork_name} "
            f"within {seconds:g}s"
        ) from None
    except errors.ReplayMismatchError as exc:
        raise errors.ReplayMismatchError(f"{refused}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of workflow code is the answer
        raise errors.ReplayMismatchError(
            f"{refused}: replaying its checkpoints, the workflow raised "
            f"{type(exc).__name__}: {exc} at step {probe.next_position - 1}, before reaching "
            f"{fork_name}"
        ) from None
    raise errors.ReplayMismatchError(
        f"{refused}: the workflow's code no longer matches its checkpoints: it now returns "
        f"after {probe.next_position} step(s), before {fork_name}"
    )


# ---- the replay ----------------------------------------------------------------------------


def fork_position(task_id: int, steps: Sequence[models.Step], from_step: str) -> int:
    """The position of the first step named `from_step`, or InputError listing the names."""
    for step in steps:
        if step.name == from_step:
            return step.position
    known = ", ".join(dict.fromkeys(s.name for s in steps))
    raise errors.InputError(
        f"task {task_id} has no step {from_step!r}; "
        + (f"its steps: {known}" if known else "it has no checkpoints (replay it whole)")
    )


async def replay(
    pool: dbpool.Pool | dbpool.Connection,
    workflows: registry.Registry,
    config: settings.EngineSettings,
    *,
    task_id: int,
    from_step: str | None,
    actor: str,
) -> Replayed:
    """Start a task replaying `task_id` from step `from_step` (None: from the start)."""
    task = await dbtasks.get_task(pool, task_id)
    if task is None:
        raise errors.NotFoundError(f"no task {task_id}")
    try:
        workflow = workflows.get(task.workflow)
    except errors.UnknownWorkflowError as exc:
        raise errors.ReplayMismatchError(f"task {task_id} cannot be replayed: {exc}") from None
    position: int | None = None
    if from_step is not None:
        steps = await dbtasks.list_steps(pool, task_id)
        position = fork_position(task_id, steps, from_step)
        await check(workflow, task, steps, position)
    new_id = await dbtasks.replay_task(
        pool,
        task_id=task_id,
        position=position,
        step=from_step,
        actor=actor,
        max_attempts=workflow.max_attempts or config.max_attempts,
        max_crashes=config.max_crashes,
    )
    if new_id is None:
        raise errors.NotFoundError(f"no task {task_id}")
    return Replayed(new_id, task_id, from_step, position or 0)


# ---- the audit log suffices ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AuditReplay:
    """Step results rebuilt from a task's audit entries, against its checkpoints."""

    task_id: int
    entries: int  # audit entries of the task's chain
    steps: int  # checkpoints
    rebuilt: int  # step results rebuilt from the entries
    difference: str | None  # the first one, or None when all match


@dataclasses.dataclass(frozen=True, slots=True)
class _Result:
    seq: int
    name: str
    output: str
    error: str | None


async def rebuild_from_audit(pool: dbpool.Pool | dbpool.Connection, task_id: int) -> AuditReplay:
    """Rebuild the task's step results from its audit chain alone; compare with checkpoints."""
    chain = f"task:{task_id}"
    entries = await dbaudit.list_chain(pool, chain)
    checkpoints = await dbtasks.list_checkpoint_texts(pool, task_id)
    if not entries and not checkpoints and await dbtasks.get_task(pool, task_id) is None:
        raise errors.NotFoundError(f"no task {task_id}")
    breaks = await dbaudit.find_breaks_in_chain(pool, chain)
    rebuilt, difference = _rebuild(entries)
    if breaks:
        difference = f"its audit chain is broken at #{breaks[0].seq}: {breaks[0].reason}"
    elif difference is None:
        difference = _compare(rebuilt, {c.position: c for c in checkpoints})
    return AuditReplay(task_id, len(entries), len(checkpoints), len(rebuilt), difference)


def _rebuild(entries: Sequence[models.AuditEntry]) -> tuple[dict[int, _Result], str | None]:
    """The step results the entries carry, by position; or the first entry that carries none."""
    results: dict[int, _Result] = {}
    for entry in entries:
        if entry.action not in STEP_ACTIONS:
            continue
        detail = entry.detail if isinstance(entry.detail, dict) else {}
        position, name = detail.get("position"), detail.get("step")
        if not isinstance(position, int) or not isinstance(name, str):
            return results, f"audit entry #{entry.seq} ({entry.action}) names no step"
        where = f"audit entry #{entry.seq} (step {position} {name!r})"
        output, error = detail.get("output"), detail.get("error")
        if not isinstance(output, str):
            return results, (
                f"{where} carries no result: it was written before step results were audited "
                "(migration 0014)"
            )
        if position in results:
            return results, f"{where} records step {position} a second time"
        results[position] = _Result(entry.seq, name, output, error)
    return results, None


def _compare(
    rebuilt: dict[int, _Result], checkpoints: dict[int, dbtasks.CheckpointText]
) -> str | None:
    for position in sorted(rebuilt.keys() | checkpoints.keys()):
        entry, stored = rebuilt.get(position), checkpoints.get(position)
        if entry is None:
            name = stored.name if stored is not None else ""
            return f"checkpoint {position} {name!r} has no audit entry"
        if stored is None:
            return (
                f"audit entry #{entry.seq} records step {position} {entry.name!r}, "
                "which has no checkpoint"
            )
        where = f"step {position}: audit entry #{entry.seq}"
        if entry.name != stored.name:
            return f"{where} names it {entry.name!r}, the checkpoint {stored.name!r}"
        for what, audited, kept in (
            ("output", entry.output, stored.output),
            ("error", entry.error, stored.error),
        ):
            if audited != kept:
                return (
                    f"{where} {stored.name!r} holds the {what} {_shown(audited)}, "
                    f"the checkpoint {_shown(kept)}"
                )
    return None


def _shown(text: str | None) -> str:
    """A JSON text cut for a message."""
    if text is None:
        return "none"
    return json.dumps(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")
