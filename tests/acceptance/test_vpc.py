"""The VPC shape: one ingress process and three workers on one database, as separate processes.

The ingress takes signed webhook deliveries and hands them to the workers through Postgres
alone; the workers share the tasks, and when one is killed with SIGKILL mid-step the other two
take its tasks over once their leases end, running no completed step again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from appliance import models
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.ingress import signatures
from tests.support import daemon, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
LEASE_SECONDS = 2.0
HEARTBEAT_SECONDS = LEASE_SECONDS / 3
WORKERS = ("w1", "w2", "w3")
CONCURRENCY = 4
TASKS = CONCURRENCY * len(WORKERS)  # every slot of every worker taken
INGRESS = {
    "mode": "ingress",
    "engine.node_name": "ingress",
    "ingress.enabled": True,
    "ingress.host": "127.0.0.1",
    "ingress.port": 0,
    "ingress.sources": [
        {
            "tenant": "default",
            "name": "jobs",
            "workflow": workflows.DELIVERED,
            "secrets": [SECRET],
        }
    ],
}
WORKER = {
    "mode": "worker",
    "engine.concurrency": CONCURRENCY,
    "engine.lease_seconds": LEASE_SECONDS,
}


@pytest_asyncio.fixture(loop_scope="session")
async def tables(db: dbpool.Pool) -> dbpool.Pool:
    """The emptied session database, with an empty public.step_runs."""
    await workflows.create_step_runs(db)
    return db


async def deliver(port: int, delivery_id: str, body: dict[str, Any]) -> int:
    """POST one Standard Webhooks delivery to the ingress; the answer's status."""
    raw = json.dumps(body).encode()
    now = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signatures.sign_standard(SECRET, delivery_id, now, raw),
    }
    url = f"http://127.0.0.1:{port}/hooks/default/jobs"
    async with aiohttp.ClientSession() as http, http.post(url, data=raw, headers=headers) as got:
        return got.status


async def running_in_step_two(db: dbpool.Pool) -> dict[int, str] | None:
    """{task: node} once every task has started step two in its first attempt."""
    rows = await db.fetch(
        "SELECT a.task_id, a.node FROM appliance.task_attempts a"
        " JOIN public.step_runs r ON r.task_id = a.task_id AND r.attempt = a.attempt"
        " WHERE a.attempt = 1 AND r.step = 'two'"
    )
    return {row["task_id"]: row["node"] for row in rows} if len(rows) == TASKS else None


async def step_runs(db: dbpool.Pool) -> dict[int, dict[str, list[int]]]:
    """{task: {step: [attempt of each execution]}} from public.step_runs."""
    runs: dict[int, dict[str, list[int]]] = {}
    for row in await db.fetch("SELECT task_id, step, attempt FROM public.step_runs ORDER BY at"):
        runs.setdefault(row["task_id"], {}).setdefault(row["step"], []).append(row["attempt"])
    return runs


async def all_succeeded(
    db: dbpool.Pool, task_ids: Sequence[int], daemons: Sequence[daemon.Daemon]
) -> list[models.Task]:
    async def ended() -> list[models.Task] | None:
        found = [await dbtasks.get_task(db, task_id) for task_id in task_ids]
        done = [t for t in found if t is not None and t.state in models.TERMINAL_STATES]
        return done if len(done) == len(task_ids) else None

    return await daemon.wait_until(ended, what="every task to end", daemons=daemons)


class TestWorkersBehindAnIngress:
    async def test_work_is_shared_and_a_killed_workers_tasks_are_taken_over_once(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """12 deliveries through the ingress run 4 on each worker; kill -9 one mid-step: the
        other two take its 4 tasks within a lease and a heartbeat; every step that completed
        ran once, and only the cut step ran again."""
        gate = tmp_path / "gate"

        def folder(name: str) -> Path:
            path = tmp_path / name
            path.mkdir()
            return path

        async with contextlib.AsyncExitStack() as stack:
            started = await asyncio.gather(
                daemon.start(database_dsn, folder("ingress"), name="ingress", overrides=INGRESS),
                *(
                    daemon.start(database_dsn, folder(name), name=name, node=name, overrides=WORKER)
                    for name in WORKERS
                ),
            )
            for process in started:
                stack.push_async_callback(process.kill)
            ingress, *workers = started
            answers = [
                await deliver(ingress.ready["ingress_port"], f"job-{i}", {"gate": str(gate)})
                for i in range(TASKS)
            ]
            placed = await daemon.wait_until(
                lambda: running_in_step_two(tables),
                what=f"{TASKS} tasks in step two",
                daemons=started,
            )
            killed, *survivors = workers
            await killed.kill()
            killed_at = dt.datetime.now(dt.UTC)
            gate.touch()
            done = await all_succeeded(tables, sorted(placed), [ingress, *survivors])

        assert answers == [202] * TASKS
        assert {t.state for t in done} == {"succeeded"}, [t.error for t in done]
        assert sorted(placed.values()) == sorted(WORKERS * CONCURRENCY)  # 4 on each
        taken_over = {task for task, node in placed.items() if node == killed.name}
        runs = await step_runs(tables)
        waits = []
        for task_id in placed:
            attempts = await dbtasks.list_attempts(tables, task_id)
            if task_id in taken_over:
                first, second = attempts
                assert (first.node, first.outcome) == (killed.name, "lease_expired")
                assert second.node in {s.name for s in survivors}
                assert second.outcome == "succeeded"
                waits.append((second.started_at - killed_at).total_seconds())
                assert waits[-1] < LEASE_SECONDS + HEARTBEAT_SECONDS + 0.5, waits
                assert runs[task_id] == {"one": [1], "two": [1, 2], "three": [2]}
            else:
                assert [(a.node, a.outcome) for a in attempts] == [(placed[task_id], "succeeded")]
                assert runs[task_id] == {"one": [1], "two": [1], "three": [1]}
        assert ingress.ready["worker"] is None  # the ingress runs no task itself
        print(
            f"\n{TASKS} tasks, {CONCURRENCY} on each of {len(WORKERS)} workers; the killed one's "
            f"{len(waits)} taken over {min(waits):.2f}-{max(waits):.2f} s after kill -9 "
            f"(lease {LEASE_SECONDS:g} s + heartbeat {HEARTBEAT_SECONDS:.2f} s)"
        )
