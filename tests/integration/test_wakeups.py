"""Submits that commit together wake the workers together: concurrent submits through a pool
share a notification sent after their commits instead of each notifying in its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.engine import context, registry, worker
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

SUBMITS = 6


def workflows() -> registry.Registry:
    reg = registry.Registry()

    @reg.workflow("wake.noop")
    async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
        return None

    return reg


class TestWakeups:
    async def test_concurrent_submits_share_a_notification(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Submits held back together are answered after fewer notifications than submits."""
        reg, config = workflows(), support.engine_settings()
        notified: list[int] = []
        listener = await dbpool.connect(database_dsn)
        await listener.add_listener(worker.CHANNEL, lambda *_: notified.append(1))
        try:
            async with db.acquire() as holder, holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM appliance.tenants WHERE tenant_id = 'default' FOR UPDATE"
                )
                submits = [
                    asyncio.create_task(
                        support.submitted(db, reg, config, workflow="wake.noop", task_input=i)
                    )
                    for i in range(SUBMITS)
                ]
                await support.wait_until(
                    lambda: _waiting_on_lock(db), what=f"{SUBMITS} submits to wait"
                )
            answers = await asyncio.gather(*submits)
            await listener.fetchval("SELECT 1")  # the notifications sent so far are read
            await asyncio.sleep(0)  # and their callbacks run
        finally:
            await listener.close()
        assert len({a.task_id for a in answers}) == SUBMITS
        assert 1 <= len(notified) < SUBMITS


async def _waiting_on_lock(db: dbpool.Pool) -> bool:
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting == SUBMITS
