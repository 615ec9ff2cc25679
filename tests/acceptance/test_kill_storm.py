"""The durability promise under a storm of `kill -9`: daemons killed mid-task again and again,
and not one task fails for it (each is allowed a single attempt of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.db import pool as dbpool
from tests.support import storm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

TASKS = 300
STORM_SECONDS = 75.0
MIN_KILLS = 5  # a daemon takes ~10 s to start on a box at load 20; ~1 s when idle
MIN_LOST = 10


class TestKillStorm:
    async def test_no_task_fails_however_often_its_worker_is_killed(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """300 tasks of one attempt each, four daemons killed one after another: all succeed."""
        result = await storm.run(database_dsn, tmp_path, tasks=TASKS, storm_seconds=STORM_SECONDS)

        assert result.failures == []
        assert result.states == {"succeeded": TASKS}
        assert result.kills >= MIN_KILLS, result.figures()
        assert sum(result.lost_attempts.values()) >= MIN_LOST, result.figures()
