"""A kill storm: `appliance run` daemons work through a queue of tasks while, one after another,
they are killed with SIGKILL and started again under the same node name.

Every task is submitted with max_attempts=1, so a single attempt charged for a crash would fail
it. At a steady pace the storm kills one daemon whose worker runs tasks (whether or not it has
said it is ready) and starts its successor; it stops when the queue is done, `max_kills`
daemons were killed or `storm_seconds` have passed, and the daemons left finish the queue.
`tests/acceptance/test_kill_storm.py` and `bench/storm.py` run it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
from pathlib import Path
from typing import Any

from appliance import settings
from appliance.db import pool as dbpool
from appliance.engine import registry, submission
from tests.support import daemon, workflows

DAEMON_SETTINGS: dict[str, Any] = {
    "engine.concurrency": 4,
    "engine.tenant_concurrency": 4,
    "engine.lease_seconds": 2.0,
    "engine.shutdown_grace_seconds": 1.0,
    "database.pool_min": 1,
    "database.pool_max": 4,
}
SUBMIT = settings.EngineSettings(node_name="storm", max_attempts=1)
DRAIN_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class Result:
    """What the storm did, and how every task ended."""

    tasks: int
    kills: int
    seconds: float
    states: dict[str, int]
    lost_attempts: dict[str, int]  # outcome (node_restarted, lease_expired) -> attempts
    most_crashes: int  # the most attempts one task lost to kills
    failures: list[str]  # "task N: error" of every task that failed

    def figures(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "kills": self.kills,
            "storm_seconds": round(self.seconds, 1),
            "failed": self.states.get("failed", 0),
            "succeeded": self.states.get("succeeded", 0),
            "lost_attempts": self.lost_attempts,
            "most_crashes_of_one_task": self.most_crashes,
        }


class _Slot:
    """One node name, and the daemon process running under it now."""

    def __init__(self, dsn: str, folder: Path, node: str) -> None:
        self.dsn, self.folder, self.node = dsn, folder, node
        self.generation = 0
        self.daemon: daemon.Daemon | None = None

    async def start(self) -> None:
        self.generation += 1
        self.daemon = await daemon.spawn(
            self.dsn,
            self.folder,
            name=f"{self.node}-{self.generation}",
            node=self.node,
            overrides=DAEMON_SETTINGS,
        )

    async def kill(self) -> None:
        victim, self.daemon = self.daemon, None
        if victim is not None:
            await victim.kill()


async def run(
    dsn: str,
    folder: Path,
    *,
    tasks: int = 300,
    slots: int = 4,
    max_kills: int = 50,
    storm_seconds: float = 60.0,
    kill_every: float = 1.0,
    seed: int = 9,
) -> Result:
    """Submit `tasks` tasks, run the storm, wait for the queue to be done; the result."""
    rng = random.Random(seed)  # noqa: S311 - task lengths, reproducible, not secrets
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
    nodes = [_Slot(dsn, folder, f"storm-{i}") for i in range(slots)]
    try:
        ids = await _submit(pool, [round(rng.uniform(0.3, 1.5), 2) for _ in range(tasks)])
        for slot in nodes:
            await slot.start()
        loop = asyncio.get_running_loop()
        began = loop.time()
        kills = 0
        while kills < max_kills and loop.time() - began < storm_seconds:
            if await _left(pool) == 0:
                break
            victim = await _victim(pool, nodes)
            if victim is None:
                await asyncio.sleep(0.05)
                continue
            await victim.kill()
            kills += 1
            await victim.start()
            await asyncio.sleep(kill_every)  # the storm's pace
        seconds = loop.time() - began
        running = [slot.daemon for slot in nodes if slot.daemon is not None]

        async def done() -> bool:
            return await _left(pool) == 0

        await daemon.wait_until(
            done, what=f"the {len(ids)} tasks to end", daemons=running, timeout=DRAIN_SECONDS
        )
        return await _result(pool, len(ids), kills, seconds)
    finally:
        for slot in nodes:
            await slot.kill()
        await pool.close()


async def _submit(pool: dbpool.Pool, durations: list[float]) -> list[int]:
    async with pool.acquire() as conn, conn.transaction():
        return [
            (
                await submission.submit(
                    conn,
                    registry.registry,
                    SUBMIT,
                    tenant_id="default",
                    workflow=workflows.SLEEPY,
                    task_input={"seconds": seconds},
                    actor="storm",
                )
            ).task_id
            for seconds in durations
        ]


async def _left(pool: dbpool.Pool) -> int:
    """Tasks not ended yet."""
    left: int = await pool.fetchval(
        "SELECT count(*) FROM appliance.tasks WHERE state IN ('queued', 'running')"
    )
    return left


async def _victim(pool: dbpool.Pool, nodes: list[_Slot]) -> _Slot | None:
    """A daemon whose own worker runs tasks now (ready or not yet; not the tasks its killed
    predecessor left), the one started least often first."""
    owners = await pool.fetch(
        "SELECT DISTINCT lease_owner FROM appliance.tasks WHERE state = 'running'"
    )
    working = {str(row["lease_owner"]).rsplit(":", 2)[-2] for row in owners}  # node:pid:tag
    ready = [
        slot
        for slot in nodes
        if slot.daemon is not None and str(slot.daemon.process.pid) in working
    ]
    return min(ready, key=lambda slot: slot.generation, default=None)


async def _result(pool: dbpool.Pool, tasks: int, kills: int, seconds: float) -> Result:
    states = {
        row["state"]: row["n"]
        for row in await pool.fetch(
            "SELECT state, count(*) AS n FROM appliance.tasks GROUP BY state"
        )
    }
    lost: collections.Counter[str] = collections.Counter()
    for row in await pool.fetch(
        "SELECT outcome, count(*) AS n FROM appliance.task_attempts"
        " WHERE outcome IN ('node_restarted', 'lease_expired') GROUP BY outcome"
    ):
        lost[row["outcome"]] = row["n"]
    most: int = await pool.fetchval("SELECT coalesce(max(crashes), 0) FROM appliance.tasks")
    failures = [
        f"task {row['task_id']}: {row['error']}"
        for row in await pool.fetch(
            "SELECT task_id, error FROM appliance.tasks WHERE state = 'failed' ORDER BY task_id"
        )
    ]
    return Result(tasks, kills, seconds, states, dict(lost), most, failures)
