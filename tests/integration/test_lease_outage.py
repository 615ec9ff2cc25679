"""Time with Postgres out of reach expires no lease: two workers ride out an outage longer than
their lease on a real cluster the tests stop and start, and a reported outage pauses expiry."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from appliance.db import migrations
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.db.embedded import EmbeddedPostgres
from appliance.engine import context, registry
from tests.support import engine as support
from tests.support import postgres

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

LEASE_SECONDS = 3.0
OUTAGE_SECONDS = 2 * LEASE_SECONDS
RECOVERY_SECONDS = 30.0


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def cluster() -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A throwaway Postgres cluster of this module, with a migrated database in it."""
    server = postgres.throwaway_cluster()
    try:
        await server.start()
        name = f"appliance_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        dsn = postgres.with_database(server.dsn(), name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield server, dsn
    finally:
        await server.stop()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_pool(
    cluster: tuple[EmbeddedPostgres, str],
) -> AsyncIterator[dbpool.Pool]:
    """A pool on the emptied cluster database, with the tenant `default`."""
    _, dsn = cluster
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=12)
    try:
        async with pool.acquire() as conn:
            await postgres.truncate(conn)
        await dbtenants.create_tenant(pool, tenant_id="default", name="default", actor="test")
        yield pool
    finally:
        await pool.close()


def held_until(reg: registry.Registry, runs: collections.Counter[int], gate: asyncio.Event) -> None:
    """Register `long`: one step, counted per task, that runs until the gate opens."""

    async def long_step(task_id: int) -> str:
        runs[task_id] += 1
        await gate.wait()
        return "done"

    @reg.workflow("long")
    async def long(ctx: context.TaskContext, task_input: Any) -> Any:
        return await ctx.step("long", long_step, ctx.task_id)


async def outage(server: EmbeddedPostgres) -> None:
    """Stop the server for longer than a lease, then start it again."""
    await server.stop()
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: its length is the test's subject
    await server.start()


async def server_started(pool: dbpool.Pool) -> dt.datetime:
    started: dt.datetime = await pool.fetchval("SELECT pg_postmaster_start_time()")
    return started


class TestOutage:
    async def test_no_running_task_is_taken_from_a_healthy_worker(
        self, cluster: tuple[EmbeddedPostgres, str], cluster_pool: dbpool.Pool
    ) -> None:
        """Four tasks on two workers survive a stop and start of Postgres, each in one attempt."""
        server, dsn = cluster
        runs: collections.Counter[int] = collections.Counter()
        gate = asyncio.Event()
        reg = registry.Registry()
        held_until(reg, runs, gate)
        one, two = (
            support.engine_settings(node_name=n, concurrency=2, lease_seconds=LEASE_SECONDS)
            for n in ("n1", "n2")
        )
        ids = [await support.submit(cluster_pool, reg, one, workflow="long") for _ in range(4)]
        async with (
            support.running_worker(cluster_pool, dsn, one, reg) as w1,
            support.running_worker(cluster_pool, dsn, two, reg) as w2,
        ):
            await support.wait_until(
                lambda: self._running(cluster_pool, ids), what="four tasks running"
            )
            await outage(server)

            async def settled() -> list[Any] | None:
                """Once a whole lease (and a sweep) has passed since the server came back, or
                as soon as any task was taken from its worker."""
                rows = await cluster_pool.fetch(
                    "SELECT attempts, lease_expires_at > now() AS leased,"
                    " now() > pg_postmaster_start_time() + make_interval(secs => $2) AS later"
                    " FROM appliance.tasks WHERE task_id = ANY($1::bigint[])",
                    ids,
                    LEASE_SECONDS * 4 / 3,
                )
                if any(row["attempts"] > 1 for row in rows):
                    return rows
                return rows if all(row["leased"] and row["later"] for row in rows) else None

            await support.wait_until(
                settled, what="a lease past the restart", timeout=RECOVERY_SECONDS
            )
            gate.set()
            tasks = await support.wait_for_all(cluster_pool, ids, workers=[w1, w2])

        assert {t.task_id: (t.state, t.attempts) for t in tasks} == dict.fromkeys(
            ids, ("succeeded", 1)
        )
        assert runs == dict.fromkeys(ids, 1)
        nodes = await cluster_pool.fetch("SELECT DISTINCT node FROM appliance.task_attempts")
        assert {row["node"] for row in nodes} == {"n1", "n2"}

    async def test_a_dead_workers_task_waits_a_lease_after_the_restart(
        self, cluster: tuple[EmbeddedPostgres, str], cluster_pool: dbpool.Pool
    ) -> None:
        """A task whose worker died before the outage is taken over, a lease after it ended."""
        server, dsn = cluster
        runs: collections.Counter[int] = collections.Counter()
        gate = asyncio.Event()
        gate.set()
        reg = registry.Registry()
        held_until(reg, runs, gate)
        cfg = support.engine_settings(node_name="n1", lease_seconds=LEASE_SECONDS)
        task_id = await support.submit(cluster_pool, reg, cfg, workflow="long")
        await support.fake_claim(
            cluster_pool, reg, worker_id="gone:1", node="gone", lease_seconds=LEASE_SECONDS
        )
        async with support.running_worker(cluster_pool, dsn, cfg, reg) as w:
            await outage(server)
            task = await support.wait_for_state(
                cluster_pool, task_id, workers=[w], timeout=RECOVERY_SECONDS
            )
        back = await server_started(cluster_pool)

        assert task.state == "succeeded"
        lost, taken = await dbtasks.list_attempts(cluster_pool, task_id)
        assert lost.outcome == "lease_expired"
        assert lost.ended_at is not None
        assert lost.ended_at >= back + dt.timedelta(seconds=LEASE_SECONDS)
        assert taken.node == "n1"

    @staticmethod
    async def _running(pool: dbpool.Pool, ids: list[int]) -> bool:
        count: int = await pool.fetchval(
            "SELECT count(*) FROM appliance.tasks WHERE state = 'running'"
            " AND task_id = ANY($1::bigint[])",
            ids,
        )
        return count == len(ids)


class TestReportedOutage:
    async def test_a_reported_outage_pauses_expiry_for_a_lease(self, db: dbpool.Pool) -> None:
        """A worker back from an outage holds off every sweep of expired leases for a lease."""
        lease = 1.0
        reg = registry.Registry()
        held_until(reg, collections.Counter(), asyncio.Event())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="long")
        await support.fake_claim(db, reg, worker_id="gone:1", node="gone", lease_seconds=0.01)

        async def expired() -> bool:
            late: bool = await db.fetchval(
                "SELECT lease_expires_at < now() FROM appliance.tasks WHERE task_id = $1", task_id
            )
            return late

        await support.wait_until(expired, what="the lease to expire")
        reported = await dbtasks.expire_leases(db, actor="w1", lease_seconds=lease, outage=True)
        assert reported == 0

        async def swept() -> bool:
            count = await dbtasks.expire_leases(db, actor="w2", lease_seconds=lease, outage=False)
            return count == 1

        await support.wait_until(swept, what="the sweep after the pause")
        resumed: dt.datetime = await db.fetchval("SELECT resumed_at FROM appliance.lease_pauses")
        [lost] = await dbtasks.list_attempts(db, task_id)
        assert lost.ended_at is not None
        assert lost.ended_at >= resumed + dt.timedelta(seconds=lease)
