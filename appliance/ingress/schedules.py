"""Cron schedules: what the config, the commands and the scheduler do with them.

Postgres holds every schedule and its state (`migrations/0017_schedules.sql`); the config's
`[[schedules]]` are written into it at each daemon start (`sync`), commands add, pause, resume,
remove and run them (`add` ... `run_now`), and each node's scheduler fires their due slots
(`fire_next`), all through this module.

Exactly once per slot: `fire_next` handles one schedule in one transaction. It locks the row
of the schedule due longest (`FOR UPDATE SKIP LOCKED`: another node passes it over), submits
each slot's task under the idempotency key `schedule:<id>:<slot>`, records the slot and moves
the schedule to its next slot, and commits all of it at once. A node that dies before the
commit leaves no task and no slot behind, and the row free for the next node.

Policies, per schedule:

- catch-up (slots that passed while no node fired them): `skip` none, `latest` (default) the
  newest, `all` the newest `catchup_limit`, oldest first (see `cron.plan`);
- overlap (a slot comes while a task the schedule started has not ended: queued, running or
  waiting): `skip` (default) records the slot as skipped, `allow` starts another, and
  `cancel-previous` cancels the earlier tasks (a running one stops at its next step boundary)
  and starts the new one. `run-now` follows the same policy; with `skip` it is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from appliance import errors, models, settings
from appliance.db import pool as dbpool
from appliance.db import schedules as dbschedules
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry, submission
from appliance.ingress import cron

log = logging.getLogger(__name__)

CONFIG_ACTOR = "config"


def slot_key(schedule_id: int, slot: dt.datetime) -> str:
    """The idempotency key of a slot's task: one task per schedule and slot, across nodes."""
    return f"schedule:{schedule_id}:{slot.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


def _run_now_key(schedule_id: int, at: dt.datetime) -> str:
    return f"schedule:{schedule_id}:run-now:{at.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


def check(workflows: registry.Registry, definition: settings.Schedule) -> str:
    """The definition's input as JSON, once its workflow is known and the input fits it."""
    workflows.get(definition.workflow).check_input(definition.input)
    return context.encode(definition.input, f"schedule {definition.name!r}: its input is")


def _same(schedule: models.Schedule, definition: settings.Schedule, origin: str) -> bool:
    return (
        schedule.cron,
        schedule.timezone,
        schedule.workflow,
        schedule.input,
        schedule.catchup,
        schedule.catchup_limit,
        schedule.overlap,
        schedule.origin,
    ) == (
        definition.cron,
        definition.timezone,
        definition.workflow,
        definition.input,
        definition.catchup,
        definition.catchup_limit,
        definition.overlap,
        origin,
    )


async def sync(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    definitions: Sequence[settings.Schedule],
    *,
    now: dt.datetime,
) -> list[str]:
    """Write the config's schedules into Postgres; returns the names added or changed.

    Only the definition comes from the config: a schedule keeps its paused state and its slots.
    A changed cron or zone takes effect from the next slot after now. A schedule the config no
    longer lists stays until `appliance schedules remove` (every node writes its own config's
    list, so a node without one must not remove the others'). ConfigError names a schedule
    whose workflow, input or tenant is unknown.
    """
    written: list[str] = []
    for definition in definitions:
        where = f"schedules: {definition.name!r} of tenant {definition.tenant!r}"
        try:
            input_json = check(workflows, definition)
            if await _write(pool, definition, input_json, origin="config", now=now):
                written.append(definition.name)
        except errors.InputError as exc:
            raise errors.ConfigError(f"{where}: {exc.message}") from exc
    return written


async def _write(
    pool: dbpool.Pool,
    definition: settings.Schedule,
    input_json: str,
    *,
    origin: str,
    now: dt.datetime,
) -> bool:
    """Insert the config's schedule or bring its definition up to date; False: unchanged."""
    current = await dbschedules.get_schedule(
        pool, tenant_id=definition.tenant, name=definition.name
    )
    timing = cron.parse(definition.cron, definition.timezone)
    if current is None:
        await dbschedules.insert_schedule(
            pool,
            tenant_id=definition.tenant,
            name=definition.name,
            cron=definition.cron,
            timezone=definition.timezone,
            workflow=definition.workflow,
            input_json=input_json,
            catchup=definition.catchup,
            catchup_limit=definition.catchup_limit,
            overlap=definition.overlap,
            origin=origin,
            next_fire_at=timing.after(now),
            actor=CONFIG_ACTOR,
        )
        return True
    if _same(current, definition, origin):
        return False
    next_fire_at = current.next_fire_at
    if (current.cron, current.timezone) != (definition.cron, definition.timezone):
        next_fire_at = timing.after(max(now, current.last_slot_at or now))
    await dbschedules.update_schedule(
        pool,
        schedule_id=current.schedule_id,
        cron=definition.cron,
        timezone=definition.timezone,
        workflow=definition.workflow,
        input_json=input_json,
        catchup=definition.catchup,
        catchup_limit=definition.catchup_limit,
        overlap=definition.overlap,
        origin=origin,
        next_fire_at=next_fire_at,
        actor=CONFIG_ACTOR,
    )
    return True


async def add(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    definition: settings.Schedule,
    *,
    now: dt.datetime,
    actor: str,
) -> models.Schedule:
    """Add a schedule at run time; StateError when its tenant has one of that name."""
    input_json = check(workflows, definition)
    timing = cron.parse(definition.cron, definition.timezone)
    await dbschedules.insert_schedule(
        pool,
        tenant_id=definition.tenant,
        name=definition.name,
        cron=definition.cron,
        timezone=definition.timezone,
        workflow=definition.workflow,
        input_json=input_json,
        catchup=definition.catchup,
        catchup_limit=definition.catchup_limit,
        overlap=definition.overlap,
        origin="command",
        next_fire_at=timing.after(now),
        actor=actor,
    )
    return await get(pool, tenant_id=definition.tenant, name=definition.name)


async def listing(pool: dbpool.Pool, *, tenant_id: str | None) -> list[models.Schedule]:
    """Every schedule (or one tenant's), by tenant and name."""
    return await dbschedules.list_schedules(pool, tenant_id=tenant_id)


async def get(pool: dbpool.Pool, *, tenant_id: str, name: str) -> models.Schedule:
    """The schedule; NotFoundError naming it."""
    found = await dbschedules.get_schedule(pool, tenant_id=tenant_id, name=name)
    if found is None:
        raise errors.NotFoundError(
            f"no schedule {name!r} in tenant {tenant_id!r} (`appliance schedules list` shows them)"
        )
    return found


async def pause(pool: dbpool.Pool, *, tenant_id: str, name: str, actor: str) -> bool:
    """Stop firing the schedule; returns whether it was paused already."""
    was_paused = await dbschedules.set_schedule_paused(
        pool, tenant_id=tenant_id, name=name, paused=True, next_fire_at=None, actor=actor
    )
    if was_paused is None:
        await get(pool, tenant_id=tenant_id, name=name)  # raises NotFoundError
    return bool(was_paused)


async def resume(
    pool: dbpool.Pool, *, tenant_id: str, name: str, actor: str, now: dt.datetime
) -> bool:
    """Fire the schedule again from its next slot after now (the slots that passed while it
    was paused are not caught up); returns whether it was paused."""
    schedule = await get(pool, tenant_id=tenant_id, name=name)
    upcoming = cron.parse(schedule.cron, schedule.timezone).after(now)
    was_paused = await dbschedules.set_schedule_paused(
        pool, tenant_id=tenant_id, name=name, paused=False, next_fire_at=upcoming, actor=actor
    )
    return bool(was_paused)


async def remove(pool: dbpool.Pool, *, tenant_id: str, name: str, actor: str) -> None:
    """Delete the schedule and its slot records; the tasks it started stay."""
    if not await dbschedules.delete_schedule(pool, tenant_id=tenant_id, name=name, actor=actor):
        await get(pool, tenant_id=tenant_id, name=name)  # raises NotFoundError


@dataclasses.dataclass(frozen=True)
class Started:
    """A task a schedule started now, and the earlier ones it cancelled for it."""

    task_id: int
    cancelled: tuple[int, ...]


async def run_now(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    engine: settings.EngineSettings,
    *,
    tenant_id: str,
    name: str,
    actor: str,
    now: dt.datetime,
) -> Started:
    """Start the schedule's task now (paused or not), without moving its slots. The overlap
    policy applies: with `skip`, a task of the schedule that has not ended is StateError."""
    async with dbschedules.transaction(pool) as conn:
        schedule = await dbschedules.lock_schedule(conn, tenant_id=tenant_id, name=name)
        if schedule is None:
            raise errors.NotFoundError(
                f"no schedule {name!r} in tenant {tenant_id!r} "
                "(`appliance schedules list` shows them)"
            )
        unfinished = await dbschedules.unfinished_tasks(conn, schedule.open_tasks)
        if unfinished and schedule.overlap == "skip":
            raise errors.StateError(
                f"schedule {name!r}: task {unfinished[-1]} has not ended and its overlap policy "
                f"is 'skip'; wait for it, or cancel it (`appliance task cancel {unfinished[-1]}`)"
            )
        cancelled = await _cancel(conn, schedule, unfinished, actor=actor)
        if cancelled:
            unfinished = []
        submitted = await submission.submit(
            conn,
            workflows,
            engine,
            tenant_id=schedule.tenant_id,
            workflow=schedule.workflow,
            task_input=schedule.input,
            idempotency_key=_run_now_key(schedule.schedule_id, now),
            actor=actor,
        )
        await dbschedules.record_slot(
            conn,
            schedule_id=schedule.schedule_id,
            slot_at=now,
            tenant_id=schedule.tenant_id,
            outcome="run-now",
            task_id=submitted.task_id,
            reason=None,
        )
        await dbschedules.record_run_now(
            conn,
            schedule_id=schedule.schedule_id,
            task_id=submitted.task_id,
            open_tasks=[*unfinished, submitted.task_id],
            actor=actor,
        )
    return Started(submitted.task_id, tuple(cancelled))


async def _cancel(
    conn: dbpool.Connection, schedule: models.Schedule, unfinished: list[int], *, actor: str
) -> list[int]:
    """Under `cancel-previous`, cancel the schedule's unfinished tasks; the ones cancelled."""
    if schedule.overlap != "cancel-previous":
        return []
    for task_id in unfinished:
        await dbtasks.cancel_task(conn, task_id=task_id, actor=actor)
    return unfinished


class FiringError(errors.ApplianceError):
    """A schedule's due slots could not be fired."""

    def __init__(self, schedule: models.Schedule, reason: str) -> None:
        super().__init__(
            f"schedule {schedule.name!r} of tenant {schedule.tenant_id!r} fired nothing: {reason}"
        )
        self.schedule_id = schedule.schedule_id


@dataclasses.dataclass(frozen=True)
class Fired:
    """What one pass over a due schedule did."""

    schedule: models.Schedule
    started: tuple[tuple[dt.datetime, int], ...]  # (slot, task id)
    skipped: tuple[dt.datetime, ...]  # by the overlap policy
    failed: tuple[tuple[dt.datetime, str], ...]  # (slot, why its task could not be submitted)
    missed: int
    upcoming: dt.datetime


async def fire_next(
    pool: dbpool.Pool,
    workflows: registry.Registry,
    engine: settings.EngineSettings,
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    passed_over: Sequence[int] = (),
) -> Fired | None:
    """Fire the due slots of the schedule due longest (not one of `passed_over`, nor one
    another node is firing), in one transaction; None when no schedule is due."""
    async with dbschedules.transaction(pool) as conn:
        schedule = await dbschedules.claim_due_schedule(conn, now=now, passed_over=passed_over)
        if schedule is None:
            return None
        try:
            fired = await _fire(conn, workflows, engine, schedule, now=now, grace=grace)
        except errors.DatabaseUnavailableError:
            raise
        except Exception as exc:  # one schedule that cannot fire must not stop the others
            raise FiringError(schedule, f"{type(exc).__name__}: {exc}") from exc
    return fired


async def _fire(
    conn: dbpool.Connection,
    workflows: registry.Registry,
    engine: settings.EngineSettings,
    schedule: models.Schedule,
    *,
    now: dt.datetime,
    grace: dt.timedelta,
) -> Fired:
    """The due slots of the locked schedule, by its policies, and its next slot."""
    timing = cron.parse(schedule.cron, schedule.timezone)
    plan = cron.plan(
        timing,
        due=schedule.next_fire_at,
        now=now,
        catchup=schedule.catchup,
        limit=schedule.catchup_limit,
        grace=grace,
    )
    unfinished = await dbschedules.unfinished_tasks(conn, schedule.open_tasks)
    started: list[tuple[dt.datetime, int]] = []
    skipped: list[dt.datetime] = []
    failed: list[tuple[dt.datetime, str]] = []
    actor = f"schedule:{schedule.name}"
    for slot in plan.fire:
        if unfinished and schedule.overlap == "skip":
            skipped.append(slot)
            reason = f"task {unfinished[-1]} has not ended (overlap = 'skip')"
            await _record(conn, schedule, slot, "skipped", None, reason=reason)
            continue
        if await _cancel(conn, schedule, unfinished, actor=actor):
            unfinished = []
        try:
            async with conn.transaction():  # a savepoint: a refused submit leaves the rest
                submitted = await submission.submit(
                    conn,
                    workflows,
                    engine,
                    tenant_id=schedule.tenant_id,
                    workflow=schedule.workflow,
                    task_input=schedule.input,
                    idempotency_key=slot_key(schedule.schedule_id, slot),
                    actor=actor,
                )
        except errors.InputError as exc:
            failed.append((slot, exc.message))
            await _record(conn, schedule, slot, "failed", None, reason=exc.message)
            continue
        started.append((slot, submitted.task_id))
        unfinished.append(submitted.task_id)
        await _record(conn, schedule, slot, "fired", submitted.task_id)
    await dbschedules.advance_schedule(
        conn,
        schedule_id=schedule.schedule_id,
        next_fire_at=plan.upcoming,
        last_slot_at=plan.newest,
        last_task_id=started[-1][1] if started else None,
        open_tasks=unfinished,
        missed=plan.missed,
    )
    return Fired(
        schedule, tuple(started), tuple(skipped), tuple(failed), plan.missed, plan.upcoming
    )


async def _record(
    conn: dbpool.Connection,
    schedule: models.Schedule,
    slot: dt.datetime,
    outcome: models.SlotOutcome,
    task_id: int | None,
    *,
    reason: str | None = None,
) -> None:
    await dbschedules.record_slot(
        conn,
        schedule_id=schedule.schedule_id,
        slot_at=slot,
        tenant_id=schedule.tenant_id,
        outcome=outcome,
        task_id=task_id,
        reason=reason,
    )


def describe(schedule: models.Schedule) -> dict[str, object]:
    """A schedule as data for people and machines: its next slot in UTC and on its own clock,
    the expression in words, its last task and that task's state."""
    timing = cron.parse(schedule.cron, schedule.timezone)
    data: dict[str, object] = {
        f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)
    }
    data["open_tasks"] = list(schedule.open_tasks)
    data["next_fire_at"] = None if schedule.paused else schedule.next_fire_at
    data["next_fire_local"] = (
        None if schedule.paused else schedule.next_fire_at.astimezone(timing.zone).isoformat()
    )
    data["description"] = timing.describe()
    return data
