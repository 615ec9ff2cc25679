"""Query wrappers of `sql/tasks.sql`: tasks, step checkpoints and attempts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from appliance import errors, models
from appliance.db import pool, sql

_Q = sql.load("tasks")


def _claimed(rows: Sequence[pool.Record]) -> list[models.ClaimedTask]:
    return [
        models.ClaimedTask(
            task_id=row["task_id"],
            tenant_id=row["tenant_id"],
            workflow=row["workflow"],
            input=row["input"],
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            checkpoints=tuple((name, output, error) for name, output, error in row["checkpoints"]),
        )
        for row in rows
    ]


async def submit_task(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    workflow: str,
    input_json: str,
    priority: int,
    run_after: dt.datetime | None,
    max_attempts: int,
    idempotency_key: str | None,
    concurrency_key: str | None,
    concurrency_limit: int | None,
    actor: str,
    max_crashes: int,
    notify: bool = True,
) -> tuple[models.Submitted, str, Any]:
    """Insert a task; returns it with the workflow and input it was (first) submitted with.
    Without `notify`, the caller wakes the workers once it committed (`notify_workers`)."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["submit_task"],
            tenant_id,
            workflow,
            input_json,
            priority,
            run_after,
            max_attempts,
            idempotency_key,
            concurrency_key,
            concurrency_limit,
            actor,
            max_crashes,
            notify,
        )
    if row is None:
        raise errors.EngineError("submit_task returned no row")
    return models.Submitted(row["task_id"], row["created"]), row["workflow"], row["input"]


async def notify_workers(conn: pool.Connection | pool.Pool) -> None:
    """Wake the workers (a notification of its own transaction)."""
    with pool.translated():
        await conn.execute(_Q["notify_workers"])


async def claim_tasks(
    conn: pool.Connection | pool.Pool,
    *,
    worker: str,
    node: str,
    limit: int,
    lease_seconds: float,
    workflows: Sequence[str],
    tenant_share: int,
) -> list[models.ClaimedTask]:
    """Lease up to `limit` ready tasks."""
    with pool.translated():
        rows = await conn.fetch(
            _Q["claim_tasks"], worker, node, limit, lease_seconds, list(workflows), tenant_share
        )
    return _claimed(rows)


async def record_step(
    conn: pool.Connection | pool.Pool,
    *,
    task_id: int,
    worker: str,
    attempt: int,
    step: models.PendingStep,
) -> bool:
    """Checkpoint one step; returns True when a cancel was requested.

    Raises LeaseLostError when this worker no longer holds this attempt's lease. A write that
    raced another writer of the task's audit chain (a cancel request) is retried once.
    """
    for tries_left in (1, 0):
        try:
            with pool.translated():
                cancel: bool | None = await conn.fetchval(
                    _Q["record_step"],
                    task_id,
                    worker,
                    attempt,
                    step.position,
                    step.name,
                    step.output_json,
                    step.started_at,
                    step.duration_ms,
                    step.error_json,
                )
        except errors.ChainContentionError:
            if not tries_left:
                raise
            continue
        if cancel is None:
            raise errors.LeaseLostError(
                f"task {task_id} attempt {attempt} is no longer leased to {worker}"
            )
        return cancel
    raise errors.EngineError("unreachable")


async def finish_task(
    conn: pool.Connection | pool.Pool,
    *,
    task_id: int,
    worker: str,
    attempt: int,
    outcome: str,
    output_json: str | None,
    error: str | None,
    retry_at: dt.datetime | None,
    step: models.PendingStep | None,
    node: str,
    claim: int,
    lease_seconds: float,
    workflows: Sequence[str],
    tenant_share: int,
) -> list[models.ClaimedTask]:
    """End an attempt, writing the pending checkpoint, and claim up to `claim` next tasks."""
    with pool.translated():
        rows = await conn.fetch(
            _Q["finish_task"],
            task_id,
            worker,
            attempt,
            outcome,
            output_json,
            error,
            retry_at,
            step.position if step else None,
            step.name if step else None,
            step.output_json if step else None,
            step.started_at if step else None,
            step.duration_ms if step else None,
            step.error_json if step else None,
            node,
            claim,
            lease_seconds,
            list(workflows),
            tenant_share,
        )
    return _claimed(rows)


async def requeue_abandoned(
    conn: pool.Connection | pool.Pool,
    *,
    node: str | None = None,
    task_ids: Sequence[int] | None = None,
    actor: str,
) -> int:
    """Requeue a restarted node's tasks, the given tasks of worker `actor`, or expired ones
    (without the outage grace of `expire_leases`). The lost attempts are not charged, and the
    tasks keep their place in the queue."""
    with pool.translated():
        count: int = await conn.fetchval(
            _Q["requeue_abandoned"], node, list(task_ids) if task_ids is not None else None, actor
        )
    return count


async def expire_leases(
    conn: pool.Connection | pool.Pool, *, actor: str, lease_seconds: float, outage: bool
) -> int:
    """Requeue the tasks whose lease expired, unless Postgres was away within the last lease
    (`outage`: the caller could not reach it since its previous sweep); returns how many."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["expire_leases"], actor, lease_seconds, outage)
    return count


async def extend_leases(
    conn: pool.Connection | pool.Pool, *, worker: str, lease_seconds: float, task_ids: Sequence[int]
) -> set[int]:
    """Heartbeat; returns the ids of the tasks this worker still holds."""
    with pool.translated():
        rows = await conn.fetch(_Q["extend_leases"], worker, lease_seconds, list(task_ids))
    return {row["task_id"] for row in rows}


async def next_due_at(
    conn: pool.Connection | pool.Pool, *, workflows: Sequence[str]
) -> dt.datetime | None:
    """When the next queued task becomes ready (None when the queue is empty)."""
    with pool.translated():
        due: dt.datetime | None = await conn.fetchval(_Q["next_due_at"], list(workflows))
    return due


async def cancel_task(conn: pool.Connection | pool.Pool, *, task_id: int, actor: str) -> str | None:
    """'cancelled', 'cancelling', 'ended:<state>' when it had ended, or None if unknown."""
    with pool.translated():
        result: str | None = await conn.fetchval(_Q["cancel_task"], task_id, actor)
    return result


async def retry_task(
    conn: pool.Connection | pool.Pool, *, task_id: int, actor: str, attempts: int
) -> str | None:
    """'queued' (with `attempts` more attempts), 'refused:<state>', or None if unknown."""
    with pool.translated():
        result: str | None = await conn.fetchval(_Q["retry_task"], task_id, actor, attempts)
    return result


def _task(row: pool.Record) -> models.Task:
    return models.Task(**pool.record_dict(row))


async def get_task(conn: pool.Connection | pool.Pool, task_id: int) -> models.Task | None:
    """One task, or None."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_task"], task_id)
    return _task(row) if row else None


async def list_tasks(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> list[models.Task]:
    """The newest tasks first."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_tasks"], tenant_id, state, limit)
    return [_task(row) for row in rows]


async def list_steps(conn: pool.Connection | pool.Pool, task_id: int) -> list[models.Step]:
    """A task's checkpoints in order."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_steps"], task_id)
    return [models.Step(**pool.record_dict(row)) for row in rows]


async def list_attempts(conn: pool.Connection | pool.Pool, task_id: int) -> list[models.Attempt]:
    """A task's attempts in order."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_attempts"], task_id)
    return [models.Attempt(**pool.record_dict(row)) for row in rows]


async def count_tasks_by_state(conn: pool.Connection | pool.Pool) -> dict[str, int]:
    """How many tasks are in each state."""
    with pool.translated():
        rows = await conn.fetch(_Q["count_tasks_by_state"])
    return {row["state"]: row["n"] for row in rows}


async def resume_waiting(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, reason_prefix: str, actor: str
) -> int:
    """Requeue a tenant's tasks waiting for a reason with this prefix; returns how many."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["resume_waiting"], tenant_id, reason_prefix, actor)
    return count


@dataclasses.dataclass(frozen=True, slots=True)
class TaskQuery:
    """How list_tasks_page and count_tasks_matching narrow the tasks of some tenants."""

    tenants: Sequence[str]
    state: str | None = None
    workflow: str | None = None
    agent: str | None = None
    text: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def arguments(self) -> tuple[Any, ...]:
        return (
            list(self.tenants),
            self.state,
            self.workflow,
            self.agent,
            self.text,
            self.since,
            self.until,
        )


async def list_tasks_page(
    conn: pool.Connection | pool.Pool, query: TaskQuery, *, before: int | None, limit: int
) -> list[models.Task]:
    """A page of the tasks matching `query`, newest first, ids below `before`."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_tasks_page"], *query.arguments(), before, limit)
    return [_task(row) for row in rows]


async def count_tasks_matching(conn: pool.Connection | pool.Pool, query: TaskQuery) -> int:
    """How many tasks match `query`."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["count_tasks_matching"], *query.arguments())
    return count


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCount:
    """Tasks of one tenant, workflow and state not yet ended; the oldest one's age."""

    tenant_id: str
    workflow: str
    state: str
    tasks: int
    oldest_seconds: float


async def count_queue(
    conn: pool.Connection | pool.Pool, tenants: Sequence[str]
) -> list[QueueCount]:
    """The queue of these tenants per workflow and state."""
    with pool.translated():
        rows = await conn.fetch(_Q["count_queue"], list(tenants))
    return [QueueCount(**pool.record_dict(row)) for row in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointText:
    """A checkpoint as stored: its output and error as their JSON text, verbatim."""

    position: int
    name: str
    output: str
    error: str | None


async def list_checkpoint_texts(
    conn: pool.Connection | pool.Pool, task_id: int
) -> list[CheckpointText]:
    """A task's checkpoints in order, as the JSON text stored."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_checkpoint_texts"], task_id)
    return [CheckpointText(**pool.record_dict(row)) for row in rows]


async def replay_task(
    conn: pool.Connection | pool.Pool,
    *,
    task_id: int,
    position: int | None,
    step: str | None,
    actor: str,
    max_attempts: int,
    max_crashes: int,
) -> int | None:
    """A new task replaying `task_id`, reusing its checkpoints before `position` (None: none);
    its id, or None when the task does not exist. A write that raced the source's lease holder
    on its audit chain is retried once."""
    for tries_left in (1, 0):
        try:
            with pool.translated():
                new_id: int | None = await conn.fetchval(
                    _Q["replay_task"], task_id, position, step, actor, max_attempts, max_crashes
                )
        except errors.ChainContentionError:
            if not tries_left:
                raise
            continue
        return new_id
    raise errors.EngineError("unreachable")
