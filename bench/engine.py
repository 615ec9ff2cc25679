"""Engine benchmark: throughput against the commit floor, idle latency, resume after kill -9.

    python bench/engine.py [--tasks 1000] [--concurrency 8]

Uses DATABASE_URL, else the server on localhost:5432, else a throwaway cluster; creates a
fresh database for the run and drops it after. The last line is one JSON object with every
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import settings  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tasks as dbtasks  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.engine import context, registry, submission, worker  # noqa: E402
from bench import workflows  # noqa: E402
from tests.support import postgres  # noqa: E402

STEPS = 3


async def _noop(value: int) -> int:
    return value + 1


def _registry() -> registry.Registry:
    reg = registry.Registry()

    @reg.workflow("bench.noop3")
    async def noop3(ctx: context.TaskContext, task_input: Any) -> Any:
        value = 0
        for i in range(STEPS):
            value = await ctx.step(f"s{i}", _noop, value)
        return value

    return reg


async def commit_floor(dsn: str, steps: int, concurrency: int) -> float:
    """Steps/s of a plain loop: one INSERT and COMMIT per step, `concurrency` connections."""
    setup = await asyncpg.connect(dsn)
    await setup.execute(
        "CREATE TABLE bench_floor (id bigserial PRIMARY KEY, tenant_id text, step jsonb)"
    )
    await setup.close()
    per_worker = steps // concurrency
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]

    async def loop(conn: asyncpg.Connection) -> None:
        for i in range(per_worker):
            await conn.execute(
                "INSERT INTO bench_floor (tenant_id, step) VALUES ($1, $2::jsonb)",
                "default",
                json.dumps({"i": i}),
            )

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return per_worker * concurrency / elapsed


async def throughput(
    pool: dbpool.Pool, dsn: str, tasks: int, concurrency: int
) -> tuple[float, float]:
    """(tasks/s, steps/s) for `tasks` queued tasks of STEPS no-op steps."""
    reg = _registry()
    config = settings.EngineSettings(
        node_name="bench", concurrency=concurrency, tenant_concurrency=concurrency
    )
    for i in range(tasks):
        await submission.submit(
            pool,
            reg,
            config,
            tenant_id="default",
            workflow="bench.noop3",
            task_input={"i": i},
            actor="bench",
        )
    done = asyncio.Event()
    finished = 0

    def on_finished(_: int, outcome: str) -> None:
        nonlocal finished
        if outcome == "succeeded":
            finished += 1
            if finished == tasks:
                done.set()

    work = worker.Worker(pool, dsn, config, reg, on_finished=on_finished)
    started = time.perf_counter()
    runner = asyncio.create_task(work.run())
    await done.wait()
    elapsed = time.perf_counter() - started
    await work.stop()
    await runner
    return tasks / elapsed, tasks * STEPS / elapsed


async def idle_latency(pool: dbpool.Pool, dsn: str, count: int) -> list[float]:
    """Enqueue-to-done milliseconds, one task at a time, into an idle engine."""
    reg = _registry()
    config = settings.EngineSettings(node_name="bench-idle", concurrency=8)
    waiting: dict[int, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()

    def on_finished(task_id: int, _: str) -> None:
        future = waiting.get(task_id)
        if future is not None and not future.done():
            future.set_result(None)

    work = worker.Worker(pool, dsn, config, reg, on_finished=on_finished)
    runner = asyncio.create_task(work.run())
    await work.started.wait()
    await asyncio.sleep(0.2)
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        sub = await submission.submit(
            pool,
            reg,
            config,
            tenant_id="default",
            workflow="bench.noop3",
            task_input={"idle": i},
            actor="bench",
        )
        future = waiting.setdefault(sub.task_id, loop.create_future())
        await future
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    await work.stop()
    await runner
    return latencies


async def resume_after_restart(dsn: str, held: int) -> float:
    """Seconds from restarting a kill -9'd node to all its `held` tasks running again."""
    folder = Path(tempfile.mkdtemp(prefix="bench"))
    config_file = folder / "appliance.toml"
    config_file.write_text("")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "APPLIANCE_DATABASE__URL": dsn,
        "APPLIANCE_ENGINE__NODE_NAME": "bench-node",
        "APPLIANCE_ENGINE__CONCURRENCY": str(held + 4),
        "APPLIANCE_ENGINE__TENANT_CONCURRENCY": str(held + 4),
        "APPLIANCE_ENGINE__WORKFLOW_MODULES": '["bench.workflows"]',
        "APPLIANCE_HEALTH__PORT": "0",
        "APPLIANCE_HEALTH__HOST": "127.0.0.1",
        "APPLIANCE_OUTBOX__SINKS": '["file"]',
        "APPLIANCE_OUTBOX__FILE_PATH": str(folder / "events.jsonl"),
        "APPLIANCE_STATE_DIR": str(folder),
    }
    command = [sys.executable, "-m", "appliance.cli", "--config", str(config_file), "run"]
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
    config = settings.EngineSettings()
    for i in range(held):
        await submission.submit(
            pool,
            registry.registry,
            config,
            tenant_id="default",
            workflow=workflows.SLEEPY,
            task_input={"i": i},
            actor="bench",
        )
    quiet = asyncio.subprocess.DEVNULL
    first = await asyncio.create_subprocess_exec(*command, env=env, stderr=quiet)
    await _wait_running(pool, held, attempt=1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    restarted = time.perf_counter()
    second = await asyncio.create_subprocess_exec(*command, env=env, stderr=quiet)
    await _wait_running(pool, held, attempt=2)
    elapsed = time.perf_counter() - restarted
    second.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        await second.wait()
    await pool.close()
    return elapsed


async def _wait_running(pool: dbpool.Pool, held: int, *, attempt: int) -> None:
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        running = await dbtasks.list_tasks(pool, state="running", limit=held + 1)
        if sum(1 for task in running if task.attempts == attempt) == held:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{held} tasks did not reach attempt {attempt} running")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--held", type=int, default=20)
    args = parser.parse_args()
    async with postgres.server() as server, postgres.fresh_database(server, "bench") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=4, max_size=args.concurrency + 8)
        await dbtenants.create_tenant(pool, tenant_id="default", name="default", actor="bench")
        floor = await commit_floor(dsn, args.tasks * STEPS, args.concurrency)
        print(f"commit floor: {floor:,.0f} steps/s (INSERT+COMMIT, {args.concurrency} conns)")
        tasks_per_s, steps_per_s = await throughput(pool, dsn, args.tasks, args.concurrency)
        print(
            f"engine: {tasks_per_s:,.0f} tasks/s, {steps_per_s:,.0f} steps/s "
            f"= {steps_per_s / floor:.0%} of the floor (checkpoint+audit+outbox per step)"
        )
        latencies = await idle_latency(pool, dsn, args.idle)
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        print(f"idle enqueue-to-done: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({args.idle} tasks)")
        await pool.close()
        resume = await resume_after_restart(dsn, args.held)
        print(f"resume after kill -9 and restart: {resume:.2f} s for {args.held} tasks")
    figures = {
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "tasks_per_s": round(tasks_per_s, 1),
        "steps_per_s": round(steps_per_s, 1),
        "floor_steps_per_s": round(floor, 1),
        "ratio_to_floor": round(steps_per_s / floor, 3),
        "idle_p50_ms": round(p50, 3),
        "idle_p99_ms": round(p99, 3),
        "idle_mean_ms": round(statistics.fmean(latencies), 3),
        "resume_after_restart_s": round(resume, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
