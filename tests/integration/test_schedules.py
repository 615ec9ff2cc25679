"""Schedules on the real Postgres: once per slot across schedulers, DST, the policies, the
config, and what commands do to a schedule.

Time is simulated: a scheduler reads a `SimulatedClock` (or is handed the instant to fire at),
so 200 minutes of slots pass in seconds. No worker runs here: the tasks a schedule starts stay
queued unless a test ends them, which is what the overlap policies look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import pytest

from appliance import errors, models, settings
from appliance.db import pool as dbpool
from appliance.db import schedules as dbschedules
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from appliance.ingress import scheduler, schedules
from tests.support import engine
from tests.support.clock import SimulatedClock

pytestmark = [pytest.mark.timeout(60)]

WORKFLOW = "sched.noop"
START = dt.datetime(2026, 1, 5, 0, 0, 30, tzinfo=dt.UTC)
STEPS = (20, 40, 59, 60, 61, 90, 150)  # seconds the simulated clock moves at a time
KILL_LOCK = "LOCK TABLE appliance.schedule_slots IN SHARE ROW EXCLUSIVE MODE"
BLOCKED = """
SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.relation = 'appliance.schedule_slots'::regclass AND NOT l.granted
"""

workflows = registry.Registry()


@workflows.workflow(WORKFLOW)
async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
    """A workflow whose tasks only need to exist."""
    return task_input


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def definition(**overrides: Any) -> settings.Schedule:
    values: dict[str, Any] = {"name": "every-minute", "cron": "* * * * *", "workflow": WORKFLOW}
    values.update(overrides)
    return settings.Schedule(**values)


async def add(db: dbpool.Pool, now: dt.datetime = START, **overrides: Any) -> models.Schedule:
    return await schedules.add(db, workflows, definition(**overrides), now=now, actor="test")


def make_scheduler(
    pool: dbpool.Pool, clock: scheduler.Clock | None = None, **config: Any
) -> scheduler.Scheduler:
    return scheduler.Scheduler(
        pool,
        workflows,
        engine.engine_settings(),
        settings.SchedulerSettings(**config),
        clock=clock,
    )


async def fired_slots(db: dbpool.Pool, name: str = "every-minute") -> list[str]:
    """The slots a schedule's tasks were started for (from their keys), as `YYYY-MM-DDTHH:MM`."""
    rows = await db.fetch(
        "SELECT t.idempotency_key FROM appliance.tasks t JOIN appliance.schedules s"
        " ON t.idempotency_key LIKE 'schedule:' || s.schedule_id || ':%'"
        " WHERE s.name = $1 ORDER BY t.task_id",
        name,
    )
    return [row["idempotency_key"].split(":", 2)[2][:16] for row in rows]


async def state(db: dbpool.Pool, name: str = "every-minute") -> models.Schedule:
    return await schedules.get(db, tenant_id="default", name=name)


async def count_tasks(db: dbpool.Pool) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM appliance.tasks")
    return count


async def named_pool(dsn: str, name: str) -> asyncpg.Pool:
    """A pool whose sessions show `name` as their application (to tell schedulers apart)."""

    async def init(conn: asyncpg.Connection) -> None:
        for kind in ("json", "jsonb"):
            await conn.set_type_codec(
                kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )

    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=init, server_settings={"application_name": name}
    )
    return pool


async def gone(db: dbpool.Pool, pid: int) -> bool:
    """True once the server has no session `pid`."""
    return not await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


@contextlib.asynccontextmanager
async def table_locked(db: dbpool.Pool) -> AsyncIterator[None]:
    """schedule_slots locked against inserts: a node firing a slot stops before recording it,
    its task inserted and its transaction open."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(KILL_LOCK)
        yield


class TestExactlyOnce:
    @pytest.mark.timeout(120)
    async def test_three_schedulers_fire_200_slots_as_200_tasks_one_killed_mid_slot(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Three schedulers over 200 simulated minutes; the one firing slot 101 dies holding
        it (its connection cut, its loop stopped); every slot has exactly one task."""
        await add(db, catchup="all", catchup_limit=100, overlap="allow")
        clock = SimulatedClock(START)
        end = START + dt.timedelta(minutes=200)
        pools = {name: await named_pool(database_dsn, f"scheduler-{name}") for name in "abc"}
        running: dict[str, contextlib.AsyncExitStack] = {}
        rng = random.Random(2026)  # noqa: S311 - seeded on purpose: a failure reproduces

        blocked: list[asyncpg.Record] = []
        stopping: list[asyncio.Task[None]] = []

        async def one_blocked() -> bool:
            blocked[:] = await db.fetch(BLOCKED)
            return len(blocked) == 1

        async def fired_until_now() -> bool:
            due = min(200, int((clock.now() - START.replace(second=0)).total_seconds() // 60))
            return await count_tasks(db) == due

        try:
            for name, pool in pools.items():
                running[name] = contextlib.AsyncExitStack()
                await running[name].enter_async_context(make_scheduler(pool, clock))
            victim = None
            while clock.now() < end:
                if victim is None and await count_tasks(db) >= 100:
                    async with table_locked(db):
                        clock.advance(60)
                        await engine.wait_until(one_blocked, what="a scheduler waits mid-slot")
                        [(pid, application)] = [tuple(row.values()) for row in blocked]
                        victim = application.removeprefix("scheduler-")
                        await db.execute("SELECT pg_terminate_backend($1)", pid)
                        await engine.wait_until(partial(gone, db, pid), what="its session ended")
                    # the process goes too, all its connections with it (as a kill does); its
                    # stop is not waited for (a killed process does not stop cleanly either)
                    pools[victim].terminate()
                    stopping.append(asyncio.create_task(running.pop(victim).aclose()))
                    clock.advance(1)  # the survivors' next look
                else:
                    left = int((end - clock.now()).total_seconds())
                    clock.advance(max(1, min(rng.choice(STEPS), left)))
                await engine.wait_until(
                    fired_until_now, what=f"the slots up to {clock.now()} fired"
                )
        finally:
            for stack in running.values():
                await stack.aclose()
            for task in stopping:
                task.cancel()
            if stopping:
                await asyncio.wait(stopping, timeout=5)
            for pool in pools.values():
                pool.terminate()

        assert victim is not None
        slots = await fired_slots(db)
        expected = [f"{START + dt.timedelta(minutes=m):%Y-%m-%dT%H:%M}" for m in range(1, 201)]
        assert sorted(slots) == expected
        recorded = await db.fetchval(
            "SELECT count(*) FROM appliance.schedule_slots WHERE outcome = 'fired'"
        )
        assert recorded == 200
        assert (await state(db)).next_fire_at == utc("2026-01-05T03:21")


DST_CASES = [
    (
        "Europe/Berlin",
        "30 2 * * *",
        ("2026-03-27T12:00", "2026-03-30T12:00"),
        ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"],  # 02:30 skipped: 03:00
    ),
    (
        "Europe/Berlin",
        "30 2 * * *",
        ("2026-10-23T12:00", "2026-10-26T12:00"),
        ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"],  # repeated 02:30: once
    ),
    (
        "Europe/Berlin",
        "0 * * * *",
        ("2026-10-24T22:30", "2026-10-25T03:30"),
        ["2026-10-24T23:00"] + [f"2026-10-25T0{h}:00" for h in range(4)],  # every real hour
    ),
    (
        "America/New_York",
        "30 2 * * *",
        ("2026-03-06T12:00", "2026-03-09T12:00"),
        ["2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"],
    ),
    (
        "America/New_York",
        "30 1 * * *",
        ("2026-10-30T12:00", "2026-11-02T12:00"),
        ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"],
    ),
    (
        "America/New_York",
        "0 * * * *",
        ("2026-03-08T05:30", "2026-03-08T09:30"),
        [f"2026-03-08T0{h}:00" for h in range(6, 10)],  # 01:00 EST, 03:00, 04:00, 05:00 EDT
    ),
]


class TestDaylightSaving:
    @pytest.mark.parametrize(
        ("zone", "expression", "window", "expected"),
        DST_CASES,
        ids=[f"{z} {e} {w[0][:10]}" for z, e, w, _ in DST_CASES],
    )
    async def test_slots_across_a_change_fire_as_cron_does(
        self,
        db: dbpool.Pool,
        zone: str,
        expression: str,
        window: tuple[str, str],
        expected: list[str],
    ) -> None:
        """A scheduler looking every 15 minutes across the change starts the slots Debian's
        cron would run (in UTC): a skipped time after the jump, a repeated one once."""
        start, end = utc(window[0]), utc(window[1])
        await add(db, start, cron=expression, timezone=zone, overlap="allow")
        fires = make_scheduler(db)
        now = start
        while now <= end:
            await fires.fire_due(now)
            now += dt.timedelta(minutes=15)

        assert await fired_slots(db) == expected


class TestCatchup:
    async def test_latest_fires_the_newest_missed_slot(self, db: dbpool.Pool) -> None:
        """Down from 10:00 to 14:30: the 14:00 slot fires, four slots are counted missed."""
        await add(db, utc("2026-01-05T09:59"), cron="0 * * * *")

        await make_scheduler(db).fire_due(utc("2026-01-05T14:30"))

        assert await fired_slots(db) == ["2026-01-05T14:00"]
        after = await state(db)
        assert (after.missed_slots, after.next_fire_at) == (4, utc("2026-01-05T15:00"))
        assert after.last_slot_at == utc("2026-01-05T14:00")

    async def test_skip_fires_no_late_slot_but_the_next_on_time(self, db: dbpool.Pool) -> None:
        """With skip, the missed slots start nothing; the next slot, seen on time, fires."""
        await add(db, utc("2026-01-05T09:59"), cron="0 * * * *", catchup="skip")
        fires = make_scheduler(db, grace_seconds=60)

        await fires.fire_due(utc("2026-01-05T14:30"))
        assert await fired_slots(db) == []
        assert (await state(db)).missed_slots == 5
        await fires.fire_due(utc("2026-01-05T15:00:20"))

        assert await fired_slots(db) == ["2026-01-05T15:00"]

    async def test_all_fires_the_newest_up_to_the_limit(self, db: dbpool.Pool) -> None:
        """With all and a limit of 3, the last three of five missed slots fire, in order."""
        await add(
            db,
            utc("2026-01-05T09:59"),
            cron="0 * * * *",
            catchup="all",
            catchup_limit=3,
            overlap="allow",
        )

        await make_scheduler(db).fire_due(utc("2026-01-05T14:30"))

        assert await fired_slots(db) == [f"2026-01-05T{h}:00" for h in (12, 13, 14)]
        assert (await state(db)).missed_slots == 2


async def cancel_all(db: dbpool.Pool) -> None:
    for row in await db.fetch("SELECT task_id FROM appliance.tasks"):
        await dbtasks.cancel_task(db, task_id=row["task_id"], actor="test")


class TestOverlap:
    async def test_skip_records_the_slot_and_starts_nothing(self, db: dbpool.Pool) -> None:
        """While the 00:01 task is queued, the 00:02 slot is skipped; once it ended, 00:03 fires."""
        await add(db)
        fires = make_scheduler(db)

        await fires.fire_due(utc("2026-01-05T00:01:05"))
        await fires.fire_due(utc("2026-01-05T00:02:05"))
        assert await fired_slots(db) == ["2026-01-05T00:01"]
        reason = await db.fetchval(
            "SELECT reason FROM appliance.schedule_slots WHERE outcome = 'skipped'"
        )
        assert "has not ended" in reason
        await cancel_all(db)
        await fires.fire_due(utc("2026-01-05T00:03:05"))

        assert await fired_slots(db) == ["2026-01-05T00:01", "2026-01-05T00:03"]

    async def test_allow_starts_another(self, db: dbpool.Pool) -> None:
        """With allow, each slot starts its task beside the earlier ones."""
        await add(db, overlap="allow")
        fires = make_scheduler(db)

        for minute in (1, 2, 3):
            await fires.fire_due(utc(f"2026-01-05T00:0{minute}:05"))

        assert await fired_slots(db) == [f"2026-01-05T00:0{m}" for m in (1, 2, 3)]
        assert len((await state(db)).open_tasks) == 3

    async def test_cancel_previous_cancels_the_earlier_task(self, db: dbpool.Pool) -> None:
        """With cancel-previous, the 00:02 slot cancels the 00:01 task and starts its own."""
        await add(db, overlap="cancel-previous")
        fires = make_scheduler(db)

        await fires.fire_due(utc("2026-01-05T00:01:05"))
        await fires.fire_due(utc("2026-01-05T00:02:05"))

        rows = await db.fetch("SELECT state, cancel_requested_by FROM appliance.tasks ORDER BY 1")
        assert [tuple(r.values()) for r in rows] == [
            ("cancelled", "schedule:every-minute"),
            ("queued", None),
        ]
        assert (await state(db)).open_tasks == ((await state(db)).last_task_id,)


class TestRunNow:
    async def test_it_starts_a_task_without_moving_the_slots(self, db: dbpool.Pool) -> None:
        """run-now starts the task at once; the next slot stays where it was."""
        added = await add(db, cron="@daily")

        started = await schedules.run_now(
            db,
            workflows,
            engine.engine_settings(),
            tenant_id="default",
            name="every-minute",
            actor="test",
            now=START,
        )

        after = await state(db)
        assert (after.last_task_id, after.next_fire_at) == (started.task_id, added.next_fire_at)
        outcome = await db.fetchval("SELECT outcome FROM appliance.schedule_slots")
        assert outcome == "run-now"

    async def test_under_skip_it_is_refused_while_a_task_runs(self, db: dbpool.Pool) -> None:
        """With overlap skip, run-now names the task that has not ended and starts nothing."""
        await add(db)
        await make_scheduler(db).fire_due(utc("2026-01-05T00:01:05"))
        [task_id] = [r["task_id"] for r in await db.fetch("SELECT task_id FROM appliance.tasks")]

        with pytest.raises(errors.StateError, match=f"task {task_id} has not ended"):
            await schedules.run_now(
                db,
                workflows,
                engine.engine_settings(),
                tenant_id="default",
                name="every-minute",
                actor="test",
                now=START,
            )
        assert await count_tasks(db) == 1

    async def test_under_cancel_previous_it_cancels_first(self, db: dbpool.Pool) -> None:
        """With cancel-previous, run-now cancels the running task and says which."""
        await add(db, overlap="cancel-previous")
        await make_scheduler(db).fire_due(utc("2026-01-05T00:01:05"))
        [first] = [r["task_id"] for r in await db.fetch("SELECT task_id FROM appliance.tasks")]

        started = await schedules.run_now(
            db,
            workflows,
            engine.engine_settings(),
            tenant_id="default",
            name="every-minute",
            actor="test",
            now=START,
        )

        assert started.cancelled == (first,)
        task = await dbtasks.get_task(db, first)
        assert task is not None
        assert task.state == "cancelled"


class TestPauseResumeRemove:
    async def test_a_paused_schedule_fires_nothing_and_resumes_from_now(
        self, db: dbpool.Pool
    ) -> None:
        """Paused over three slots, resumed at 03:30: no catch-up, the next slot is 04:00."""
        await add(db, utc("2026-01-05T00:30"), cron="0 * * * *")
        assert not await schedules.pause(db, tenant_id="default", name="every-minute", actor="t")
        fires = make_scheduler(db)

        await fires.fire_due(utc("2026-01-05T03:10"))
        assert await fired_slots(db) == []
        assert await schedules.resume(
            db, tenant_id="default", name="every-minute", actor="t", now=utc("2026-01-05T03:30")
        )
        await fires.fire_due(utc("2026-01-05T04:00:01"))

        assert await fired_slots(db) == ["2026-01-05T04:00"]
        assert (await state(db)).missed_slots == 0

    async def test_pausing_twice_says_it_was_paused(self, db: dbpool.Pool) -> None:
        """A second pause changes nothing and reports the schedule was paused already."""
        await add(db)
        await schedules.pause(db, tenant_id="default", name="every-minute", actor="t")

        assert await schedules.pause(db, tenant_id="default", name="every-minute", actor="t")
        actions = await db.fetch(
            "SELECT action FROM appliance.audit_entries WHERE action LIKE 'schedule.%' ORDER BY seq"
        )
        assert [r["action"] for r in actions] == ["schedule.added", "schedule.paused"]

    async def test_removing_keeps_the_tasks(self, db: dbpool.Pool) -> None:
        """A removed schedule's slot records go; the tasks it started stay."""
        await add(db)
        await make_scheduler(db).fire_due(utc("2026-01-05T00:01:05"))

        await schedules.remove(db, tenant_id="default", name="every-minute", actor="t")

        assert await count_tasks(db) == 1
        assert await db.fetchval("SELECT count(*) FROM appliance.schedule_slots") == 0
        with pytest.raises(errors.NotFoundError, match="every-minute"):
            await schedules.remove(db, tenant_id="default", name="every-minute", actor="t")

    async def test_a_second_schedule_of_the_same_name_is_refused(self, db: dbpool.Pool) -> None:
        """Names are unique per tenant: adding one again says it exists."""
        await add(db)

        with pytest.raises(errors.StateError, match="already exists"):
            await add(db)


class TestConfig:
    async def test_the_config_adds_then_leaves_an_unchanged_schedule(self, db: dbpool.Pool) -> None:
        """The first sync adds the schedule; a second with the same definition writes nothing."""
        first = await schedules.sync(db, workflows, [definition(cron="@hourly")], now=START)
        second = await schedules.sync(db, workflows, [definition(cron="@hourly")], now=START)

        assert (first, second) == (["every-minute"], [])
        assert (await state(db)).origin == "config"

    async def test_a_changed_cron_moves_the_next_slot_and_keeps_pause(
        self, db: dbpool.Pool
    ) -> None:
        """A new cron takes effect from the next slot after now; a pause stays a pause."""
        await schedules.sync(db, workflows, [definition(cron="@hourly")], now=START)
        await schedules.pause(db, tenant_id="default", name="every-minute", actor="t")

        await schedules.sync(
            db, workflows, [definition(cron="30 6 * * *", timezone="Europe/Berlin")], now=START
        )

        after = await state(db)
        assert (after.cron, after.paused) == ("30 6 * * *", True)
        assert after.next_fire_at == utc("2026-01-05T05:30")

    @pytest.mark.parametrize(
        ("overrides", "says"),
        [
            ({"workflow": "no.such.workflow"}, "no.such.workflow"),
            ({"tenant": "nobody"}, "unknown tenant 'nobody'"),
        ],
    )
    async def test_a_schedule_naming_nothing_known_is_a_config_error(
        self, db: dbpool.Pool, overrides: dict[str, str], says: str
    ) -> None:
        """An unknown workflow or tenant stops the start, naming the schedule."""
        with pytest.raises(errors.ConfigError, match=says) as caught:
            await schedules.sync(db, workflows, [definition(**overrides)], now=START)
        assert "'every-minute'" in str(caught.value)


class TestSchedulerLoop:
    async def test_a_schedule_that_cannot_fire_does_not_hold_up_the_others(
        self, db: dbpool.Pool
    ) -> None:
        """A schedule whose zone the system no longer knows is passed over, once logged."""
        await add(db, name="broken")
        await add(db, name="fine", cron="2 0 * * *")
        await db.execute(
            "UPDATE appliance.schedules SET timezone = 'Gone/Away' WHERE name = $1", "broken"
        )

        fired = await make_scheduler(db).fire_due(utc("2026-01-05T00:02:05"))

        assert fired == 1
        assert await fired_slots(db, "fine") == ["2026-01-05T00:02"]

    async def test_the_loop_fires_at_the_slot_of_its_clock(self, db: dbpool.Pool) -> None:
        """Entered, the scheduler fires a slot once its clock reaches it, and stops on exit."""
        clock = SimulatedClock(START)
        await add(db)
        async with make_scheduler(db, clock):
            clock.advance(35)

            async def one() -> bool:
                return await count_tasks(db) == 1

            await engine.wait_until(one, what="the 00:01 slot fired")
        clock.advance(60)
        await asyncio.sleep(0.1)

        assert await count_tasks(db) == 1
        assert await dbschedules.next_fire_at(db) == utc("2026-01-05T00:02")
