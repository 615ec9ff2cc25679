"""Submits that commit together wake the workers together: concurrent submits through a pool
share a notification sent after their commits instead of each notifying in its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance import models
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

SUBMITS = 6


def workflows() -> registry.Registry:
    reg = registry.Registry()

    @reg.workflow("wake.noop")
    async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
        return None

    return reg


class Notifications:
    """Counts the notifications the submits send, in their transaction or after it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inline = 0
        self.after = 0
        submit, notify = dbtasks.submit_task, dbtasks.notify_workers

        async def submit_task(*args: Any, **kwargs: Any) -> tuple[models.Submitted, str, Any]:
            self.inline += kwargs["notify"]
            return await submit(*args, **kwargs)

        async def notify_workers(conn: dbpool.Pool | dbpool.Connection) -> None:
            await notify(conn)
            self.after += 1

        monkeypatch.setattr(dbtasks, "submit_task", submit_task)
        monkeypatch.setattr(dbtasks, "notify_workers", notify_workers)


class TestWakeups:
    async def test_concurrent_submits_share_a_notification(
        self, db: dbpool.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Submits held back together send fewer notifications than they are, at least one
        of them after the commits."""
        reg, config = workflows(), support.engine_settings()
        sent = Notifications(monkeypatch)
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
            await support.wait_until(lambda: _waiting_on_lock(db), what=f"{SUBMITS} submits")
        answers = await asyncio.gather(*submits)
        assert len({a.task_id for a in answers}) == SUBMITS
        assert sent.inline == 1
        assert 1 <= sent.after < SUBMITS - 1

    async def test_a_lone_submit_notifies_in_its_transaction(
        self, db: dbpool.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One submit at a time costs no notification of its own."""
        reg, config = workflows(), support.engine_settings()
        sent = Notifications(monkeypatch)
        for i in range(3):
            await support.submitted(db, reg, config, workflow="wake.noop", task_input=i)
        assert (sent.inline, sent.after) == (3, 0)


async def _waiting_on_lock(db: dbpool.Pool) -> bool:
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE '%appliance.submit_task%'"
    )
    return waiting == SUBMITS
