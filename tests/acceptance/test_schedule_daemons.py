"""Schedules in real daemons: `[[schedules]]` from the config reaches Postgres, and a slot
whose daemon is killed (kill -9) while firing it is fired once by the daemons left."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from appliance.db import pool as dbpool
from tests.support import daemon, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SCHEDULE = {
    "name": "every-minute",
    "cron": "* * * * *",
    "workflow": workflows.COUNTED,
    "input": {"hold": 0},
    "catchup": "all",  # every slot since the one daemon one was firing, so that one too
    "overlap": "allow",
}
OVERDUE = """
UPDATE appliance.schedules SET next_fire_at = date_trunc('minute', now()) - interval '1 minute'
 RETURNING next_fire_at
"""
BLOCKED = """
SELECT count(*) FROM pg_locks
 WHERE relation = 'appliance.schedule_slots'::regclass AND NOT granted
"""
SLOT_TASKS = """
SELECT count(*) FROM appliance.tasks t JOIN appliance.schedule_slots s ON s.task_id = t.task_id
 WHERE s.slot_at = $1 AND s.outcome = 'fired'
"""
KEYS_TWICE = """
SELECT count(*) FROM (SELECT idempotency_key FROM appliance.tasks
                       WHERE idempotency_key LIKE 'schedule:%' GROUP BY 1 HAVING count(*) > 1) k
"""


def overrides() -> dict[str, Any]:
    return {"schedules": [SCHEDULE], "scheduler.poll_seconds": 0.2}


class TestDaemons:
    async def test_a_slot_whose_daemon_dies_mid_slot_fires_once(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Daemon one syncs the config and dies (kill -9) holding an overdue slot, its task
        inserted; daemons two and three start and the slot gets exactly one task."""
        await workflows.create_step_runs(db)
        for name in ("one", "two", "three"):
            (tmp_path / name).mkdir()
        first = await daemon.start(
            database_dsn, tmp_path / "one", name="one", node="n1", overrides=overrides()
        )
        try:
            assert await db.fetchval("SELECT origin FROM appliance.schedules") == "config"
            async with db.acquire() as conn, conn.transaction():
                await conn.execute(
                    "LOCK TABLE appliance.schedule_slots IN SHARE ROW EXCLUSIVE MODE"
                )
                slot = await db.fetchval(OVERDUE)

                async def one_blocked() -> bool:
                    return bool(await db.fetchval(BLOCKED))

                await daemon.wait_until(one_blocked, what="daemon one firing", daemons=[first])
                await first.kill()
            async with contextlib.AsyncExitStack() as stack:
                for name, node in (("two", "n2"), ("three", "n3")):
                    await stack.enter_async_context(
                        daemon.running(
                            database_dsn,
                            tmp_path / name,
                            name=name,
                            node=node,
                            overrides=overrides(),
                        )
                    )

                async def fired() -> bool:
                    return bool(await db.fetchval(SLOT_TASKS, slot))

                await daemon.wait_until(fired, what="the overdue slot's task")
        finally:
            await first.kill()

        assert await db.fetchval(SLOT_TASKS, slot) == 1
        assert await db.fetchval(KEYS_TWICE) == 0
