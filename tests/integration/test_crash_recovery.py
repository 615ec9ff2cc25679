"""Attempts lost with their worker, in-process against the real Postgres: not charged, the task
keeps its place in the queue, and a task that ends its worker every time still ends."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from appliance import models, settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

DEAD_LEASE_SECONDS = 0.2
LOSSES = ("node_restarted", "lease_expired")


def counting(reg: registry.Registry, calls: collections.Counter[str], order: list[Any]) -> None:
    """Register `work`: one counted step; the order in which tasks start is kept."""

    async def effect(name: Any) -> Any:
        calls[str(name)] += 1
        return name

    @reg.workflow("work")
    async def work(ctx: context.TaskContext, task_input: Any) -> Any:
        order.append(task_input)
        return await ctx.step("effect", effect, task_input)


async def lose_worker(
    db: dbpool.Pool, reg: registry.Registry, *, how: str, node: str = "gone"
) -> models.ClaimedTask:
    """A worker claims the next task and dies with it; the task is recovered `how`."""
    claimed = await support.fake_claim(
        db, reg, worker_id=f"{node}:1", node=node, lease_seconds=DEAD_LEASE_SECONDS
    )
    await recover(db, how, node)
    return claimed


async def task_of(db: dbpool.Pool, task_id: int) -> models.Task:
    task = await dbtasks.get_task(db, task_id)
    assert task is not None
    return task


class TestCrashesAreNotCharged:
    @pytest.mark.parametrize("how", LOSSES)
    async def test_a_task_of_one_attempt_survives_three_lost_workers(
        self, db: dbpool.Pool, database_dsn: str, how: str
    ) -> None:
        """A task allowed one attempt is requeued after each of three crashes, then succeeds."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()
        counting(reg, calls, [])
        cfg = support.engine_settings()
        task_id = await support.submit(
            db, reg, cfg, workflow="work", task_input="a", max_attempts=1
        )
        for _ in range(3):
            await lose_worker(db, reg, how=how)
            assert (await task_of(db, task_id)).state == "queued"
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts, task.crashes) == ("succeeded", 4, 3)
        assert await support.outcomes(db, task_id) == [how, how, how, "succeeded"]
        assert calls == {"a": 1}

    async def test_a_real_failure_after_crashes_still_gets_its_retries(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Two crashes leave both attempts of max_attempts=2 to the workflow's own failures."""
        reg = registry.Registry()

        @reg.workflow("flaky")
        async def flaky(ctx: context.TaskContext, task_input: Any) -> Any:
            if ctx.attempt == 3:
                raise RuntimeError("the first attempt that runs fails")
            return ctx.attempt

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="flaky", max_attempts=2)
        for how in LOSSES:
            await lose_worker(db, reg, how=how)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", 4)
        assert await support.outcomes(db, task_id) == [*LOSSES, "retry", "succeeded"]

    async def test_the_lost_attempts_are_counted_as_crashes(self, db: dbpool.Pool) -> None:
        """Each recovery counts one crash on the task and says so in its task.requeued event."""
        reg = registry.Registry()
        counting(reg, collections.Counter(), [])
        cfg = support.engine_settings(max_crashes=7)
        task_id = await support.submit(db, reg, cfg, workflow="work", task_input="a")
        for how in LOSSES:
            await lose_worker(db, reg, how=how)

        task = await task_of(db, task_id)
        assert (task.crashes, task.max_crashes, task.state) == (2, 7, "queued")
        events = await db.fetch(
            "SELECT payload FROM appliance.outbox_events"
            " WHERE task_id = $1 AND type = 'task.requeued' ORDER BY event_seq",
            task_id,
        )
        assert [(e["payload"]["reason"], e["payload"]["crashes"]) for e in events] == [
            ("node_restarted", 1),
            ("lease_expired", 2),
        ]


class TestCrashLoop:
    @pytest.mark.parametrize("how", LOSSES)
    async def test_a_task_that_ends_its_worker_every_time_fails_at_max_crashes(
        self, db: dbpool.Pool, how: str
    ) -> None:
        """The max_crashes-th lost worker fails the task, saying how often and why."""
        reg = registry.Registry()
        counting(reg, collections.Counter(), [])
        cfg = support.engine_settings(max_crashes=4)
        task_id = await support.submit(db, reg, cfg, workflow="work", task_input="a")
        for _ in range(3):
            await lose_worker(db, reg, how=how)
        assert (await task_of(db, task_id)).state == "queued"
        await lose_worker(db, reg, how=how)

        task = await task_of(db, task_id)
        assert (task.state, task.crashes) == ("failed", 4)
        assert task.error is not None
        assert "lost 4 times" in task.error
        assert how in task.error
        assert "max_crashes" in task.error
        assert (await support.event_types(db, task_id))[-1] == "task.failed"

    async def test_task_retry_gives_a_crash_looped_task_its_crashes_back(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task failed by max_crashes and retried runs with its crash count at zero."""
        reg = registry.Registry()
        counting(reg, collections.Counter(), [])
        cfg = support.engine_settings(max_crashes=1)
        task_id = await support.submit(db, reg, cfg, workflow="work", task_input="a")
        await lose_worker(db, reg, how="node_restarted")
        assert (await task_of(db, task_id)).state == "failed"

        assert await dbtasks.retry_task(db, task_id=task_id, actor="test", attempts=1) == "queued"
        assert (await task_of(db, task_id)).crashes == 0
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])
        assert task.state == "succeeded"

    async def test_the_crash_limit_is_much_larger_than_the_attempts(self) -> None:
        """By default a task may lose its worker many more times than it may fail."""
        engine = settings.EngineSettings()
        assert engine.max_crashes >= 5 * engine.max_attempts


class TestQueuePlace:
    @pytest.mark.parametrize("how", [*LOSSES, "released"])
    async def test_a_recovered_task_runs_before_tasks_submitted_after_it(
        self, db: dbpool.Pool, database_dsn: str, how: str
    ) -> None:
        """A task taken back from a lost (or stopped) worker is not put behind later tasks."""
        order: list[Any] = []
        hold = asyncio.Event()
        reg = registry.Registry()

        async def effect(name: Any) -> Any:
            if name == "first" and not hold.is_set():
                hold.set()
                await asyncio.sleep(3600)  # until the worker is stopped
            return name

        @reg.workflow("work")
        async def work(ctx: context.TaskContext, task_input: Any) -> Any:
            order.append(task_input)
            return await ctx.step("effect", effect, task_input)

        cfg = support.engine_settings(concurrency=1)
        first = await support.submit(db, reg, cfg, workflow="work", task_input="first")

        async def submit_later() -> list[int]:
            return [
                await support.submit(db, reg, cfg, workflow="work", task_input=name)
                for name in ("second", "third")
            ]

        async def first_step_runs() -> bool:
            return hold.is_set()

        if how == "released":  # a worker stopped while it ran the first task
            async with support.running_worker(db, database_dsn, cfg, reg) as w:
                await support.wait_until(first_step_runs, what="the first step", workers=[w])
                later = await submit_later()
                await w.worker.stop(grace=0)
            order.clear()
        else:  # a worker died while it ran the first task
            hold.set()
            claimed = await support.fake_claim(
                db, reg, worker_id="gone:1", node="gone", lease_seconds=DEAD_LEASE_SECONDS
            )
            assert claimed.task_id == first
            later = await submit_later()
            await recover(db, how)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_all(db, [first, *later], workers=[w])

        assert order == ["first", "second", "third"]


async def recover(db: dbpool.Pool, how: str, node: str = "gone") -> None:
    """Requeue the dead worker's task `how`: as its restarted node, or as the heartbeat's sweep
    of expired leases."""

    async def recovered() -> bool:
        if how == "node_restarted":
            count = await dbtasks.requeue_abandoned(db, node=node, actor="test")
        else:
            count = await dbtasks.expire_leases(
                db, actor="test", lease_seconds=DEAD_LEASE_SECONDS, outage=False
            )
        return count == 1

    await support.wait_until(recovered, what=f"the dead worker's task to be requeued ({how})")
