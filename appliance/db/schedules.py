"""Query wrappers of `sql/schedules.sql`: cron schedules and the slots they fired."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence

from appliance import errors, models
from appliance.db import pool, sql

_Q = sql.load("schedules")


def _schedule(row: pool.Record) -> models.Schedule:
    values = pool.record_dict(row)
    values["open_tasks"] = tuple(values["open_tasks"])
    return models.Schedule(**values)


@contextlib.asynccontextmanager
async def transaction(executor: pool.Pool) -> AsyncIterator[pool.Connection]:
    """A pooled connection inside a transaction; Postgres gone at any point raises
    DatabaseUnavailableError."""
    with pool.translated():
        async with executor.acquire() as conn, conn.transaction():
            yield conn


async def get_schedule(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, name: str
) -> models.Schedule | None:
    """The schedule, or None."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_schedule"], tenant_id, name)
    return _schedule(row) if row is not None else None


async def list_schedules(
    conn: pool.Connection | pool.Pool, *, tenant_id: str | None
) -> list[models.Schedule]:
    """Every schedule, or one tenant's, by tenant and name."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_schedules"], tenant_id)
    return [_schedule(row) for row in rows]


async def insert_schedule(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    name: str,
    cron: str,
    timezone: str,
    workflow: str,
    input_json: str,
    catchup: models.Catchup,
    catchup_limit: int,
    overlap: models.Overlap,
    origin: str,
    next_fire_at: dt.datetime,
    actor: str,
) -> int:
    """Add a schedule (audited); StateError when the tenant has one of that name."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["insert_schedule"],
            tenant_id,
            name,
            cron,
            timezone,
            workflow,
            input_json,
            catchup,
            catchup_limit,
            overlap,
            origin,
            next_fire_at,
            actor,
        )
    if row is None:
        raise errors.EngineError("insert_schedule returned no row")
    schedule_id: int = row["schedule_id"]
    return schedule_id


async def update_schedule(
    conn: pool.Connection | pool.Pool,
    *,
    schedule_id: int,
    cron: str,
    timezone: str,
    workflow: str,
    input_json: str,
    catchup: models.Catchup,
    catchup_limit: int,
    overlap: models.Overlap,
    origin: str,
    next_fire_at: dt.datetime,
    actor: str,
) -> None:
    """Replace a schedule's definition and its next slot (audited)."""
    with pool.translated():
        await conn.execute(
            _Q["update_schedule"],
            schedule_id,
            cron,
            timezone,
            workflow,
            input_json,
            catchup,
            catchup_limit,
            overlap,
            origin,
            next_fire_at,
            actor,
        )


async def set_schedule_paused(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    name: str,
    paused: bool,
    next_fire_at: dt.datetime | None,
    actor: str,
) -> bool | None:
    """Pause or resume (from `next_fire_at`); whether it was paused before, None: no such
    schedule. An unchanged state writes nothing."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["set_schedule_paused"], tenant_id, name, paused, next_fire_at, actor
        )
    return None if row is None else bool(row["was_paused"])


async def delete_schedule(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, name: str, actor: str
) -> bool:
    """Remove the schedule and its slot records (audited); False when there was none."""
    with pool.translated():
        row = await conn.fetchrow(_Q["delete_schedule"], tenant_id, name, actor)
    return row is not None


async def claim_due_schedule(
    conn: pool.Connection, *, now: dt.datetime, passed_over: Sequence[int]
) -> models.Schedule | None:
    """Lock the schedule due longest at `now` (none of `passed_over`) for this transaction,
    skipping those another node holds; None when none is left."""
    with pool.translated():
        row = await conn.fetchrow(_Q["claim_due_schedule"], now, list(passed_over))
    return _schedule(row) if row is not None else None


async def lock_schedule(
    conn: pool.Connection, *, tenant_id: str, name: str
) -> models.Schedule | None:
    """Lock the schedule for this transaction (waiting for a node firing it); None: none."""
    with pool.translated():
        row = await conn.fetchrow(_Q["lock_schedule"], tenant_id, name)
    return _schedule(row) if row is not None else None


async def unfinished_tasks(conn: pool.Connection, task_ids: Sequence[int]) -> list[int]:
    """Those of the tasks that have not ended, in the order given."""
    if not task_ids:
        return []
    with pool.translated():
        rows = await conn.fetch(_Q["unfinished_tasks"], list(task_ids))
    return [row["task_id"] for row in rows]


async def record_slot(
    conn: pool.Connection | pool.Pool,
    *,
    schedule_id: int,
    slot_at: dt.datetime,
    tenant_id: str,
    outcome: models.SlotOutcome,
    task_id: int | None,
    reason: str | None,
) -> bool:
    """Record what became of a slot; False when it was recorded before."""
    with pool.translated():
        recorded = await conn.fetchval(
            _Q["record_slot"], schedule_id, slot_at, tenant_id, outcome, task_id, reason
        )
    return bool(recorded)


async def advance_schedule(
    conn: pool.Connection,
    *,
    schedule_id: int,
    next_fire_at: dt.datetime,
    last_slot_at: dt.datetime | None,
    last_task_id: int | None,
    open_tasks: Sequence[int],
    missed: int,
) -> None:
    """Move the schedule past the slots just handled."""
    with pool.translated():
        await conn.execute(
            _Q["advance_schedule"],
            schedule_id,
            next_fire_at,
            last_slot_at,
            last_task_id,
            list(open_tasks),
            missed,
        )


async def record_run_now(
    conn: pool.Connection,
    *,
    schedule_id: int,
    task_id: int,
    open_tasks: Sequence[int],
    actor: str,
) -> None:
    """Remember the task run-now started (audited in the tenant's chain)."""
    with pool.translated():
        await conn.execute(_Q["record_run_now"], schedule_id, task_id, list(open_tasks), actor)


async def next_fire_at(conn: pool.Connection | pool.Pool) -> dt.datetime | None:
    """The soonest slot of any unpaused schedule."""
    with pool.translated():
        soonest: dt.datetime | None = await conn.fetchval(_Q["next_fire_at"])
    return soonest
