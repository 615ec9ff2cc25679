"""Console benchmark: pages under a full database, and the live stream's fan-out.

    python bench/console.py [--tasks 100000] [--steps-per-task 10] [--requests 200] [--clients 50]

Fills a fresh database (DATABASE_URL, else the server on localhost:5432, else a throwaway
cluster; dropped after) with SQL alone: `--tasks` tasks over three tenants and 30 days, each
with `--steps-per-task` checkpoints, an attempt and its audit entries, and a model call for each
agent task; then one agent task of 50 steps made through the real audit functions (its chain
verifies). The console app is served on 127.0.0.1 as the box owner sees it (every tenant) and
asked `--requests` times, one request at a time, for: the task list, the task list filtered
(tenant and state), the 50-step task's timeline, and the cost page; p50 and p95 in ms each.
Last, `--clients` clients listen to /api/v1/events and a task event is committed: the time until
each has the event. The clients run in this process, on the same cores as the server and
Postgres. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import health, operations, settings  # noqa: E402
from appliance.console import app as console_web  # noqa: E402
from appliance.console import identity  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from tests.support import postgres  # noqa: E402

TENANTS = ("acme", "globex", "default")
TIMELINE_STEPS = 50
WARMUP = 10

FILL = """
INSERT INTO appliance.tasks (tenant_id, workflow, input, state, attempts, max_attempts, output,
                             error, created_at, started_at, finished_at, updated_at, run_after)
SELECT (ARRAY['acme', 'globex', 'default'])[1 + i % 3],
       CASE WHEN i % 2 = 0 THEN 'agent.run' ELSE 'demo.folder_digest' END,
       CASE WHEN i % 2 = 0
            THEN json_build_object('agent', 'support', 'prompt', 'question ' || i)
            ELSE json_build_object('folder', '/srv/inbox/' || i) END,
       CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 97 = 0 THEN 'queued' ELSE 'succeeded' END,
       1, 3, '"done"'::json,
       CASE WHEN i % 50 = 0 THEN 'RuntimeError: upstream said no (' || i || ')' END,
       at, at, at + interval '2 seconds', at + interval '2 seconds', at
  FROM generate_series(1, $1::int) AS i,
       LATERAL (SELECT now() - interval '30 days' * (1 - i::float8 / $1::int) AS at) t;

INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt, started_at,
                             duration_ms)
SELECT t.task_id, p, t.tenant_id, 'step-' || p, '{"ok": true}'::json, 1,
       t.started_at + p * interval '100 milliseconds', 90
  FROM appliance.tasks t, generate_series(0, $2::int - 1) AS p;

INSERT INTO appliance.task_attempts (task_id, attempt, tenant_id, node, worker, started_at,
                                     ended_at, outcome)
SELECT task_id, 1, tenant_id, 'n1', 'n1:1:bench', started_at, finished_at,
       CASE state WHEN 'failed' THEN 'failed' ELSE 'succeeded' END
  FROM appliance.tasks WHERE state <> 'queued';

INSERT INTO appliance.audit_entries (chain, seq, tenant_id, task_id, actor, action, detail,
                                     created_at, prev_hash, hash)
SELECT 'task:' || t.task_id, s.seq, t.tenant_id, t.task_id, 'bench',
       CASE WHEN s.seq = 1 THEN 'task.submitted' ELSE 'step.completed' END, '{}'::jsonb,
       t.created_at + s.seq * interval '100 milliseconds',
       sha256(convert_to(t.task_id || ':' || (s.seq - 1), 'UTF8')),
       sha256(convert_to(t.task_id || ':' || s.seq, 'UTF8'))
  FROM appliance.tasks t, generate_series(1, $2::int + 1) AS s (seq);

INSERT INTO appliance.model_calls (tenant_id, task_id, position, agent, agent_version, model,
    started_at, latency_ms, input_tokens, cache_creation_input_tokens, cache_write_5m_tokens,
    cache_write_1h_tokens, cache_read_input_tokens, output_tokens, cost_usd, uncached_cost_usd)
SELECT tenant_id, task_id, 2, 'support', 1, 'claude-sonnet-4-6', started_at, 800, 300, 0, 0, 0,
       2000, 120, 0.003300, 0.008700
  FROM appliance.tasks WHERE workflow = 'agent.run';
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _fill(pool: dbpool.Pool, tasks: int, steps: int) -> int:
    """The bulk rows, then one 50-step agent task through the real functions; its id."""
    for tenant in TENANTS:
        await dbtenants.create_tenant(pool, tenant_id=tenant, name=tenant, actor="bench")
    async with pool.acquire() as conn:
        for statement in FILL.split(";\n\n"):
            arguments = [value for key, value in (("$1", tasks), ("$2", steps)) if key in statement]
            if "$2" in statement and "$1" not in statement:
                statement = statement.replace("$2", "$1")  # noqa: PLW2901 - one parameter
            await conn.execute(statement, *arguments)
        task_id: int = await conn.fetchval(
            "INSERT INTO appliance.tasks (tenant_id, workflow, input, state, attempts, "
            "started_at, finished_at, output) VALUES ('acme', 'agent.run', "
            '\'{"agent": "support", "prompt": "fifty"}\', \'succeeded\', 1, now(), '
            "now() + interval '5 seconds', '\"done\"') RETURNING task_id"
        )
        await conn.execute(
            "INSERT INTO appliance.task_attempts (task_id, attempt, tenant_id, node, worker, "
            "ended_at, outcome) VALUES ($1, 1, 'acme', 'n1', 'n1:1:bench', "
            "now() + interval '5 seconds', 'succeeded')",
            task_id,
        )
        for position in range(TIMELINE_STEPS):
            await conn.execute(
                "INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt,"
                " started_at, duration_ms) VALUES ($1, $2, 'acme', $3, '1', 1, "
                "now() + $2::int * interval '100 milliseconds', 80)",
                task_id,
                position,
                f"model:{position}" if position % 2 else f"tool:{position}:lookup",
            )
            await conn.execute(
                "SELECT appliance.audit_append('task:' || $1::bigint, 'acme', $1, 'bench', "
                "'step.completed', jsonb_build_object('position', $2::int))",
                task_id,
                position,
            )
        await conn.execute("ANALYZE")
    return task_id


async def _timed(session: aiohttp.ClientSession, path: str, count: int) -> list[float]:
    """Latencies in ms of `count` sequential GETs (after a warm-up)."""
    found: list[float] = []
    for n in range(WARMUP + count):
        began = time.perf_counter()
        async with session.get(path, headers={"Accept": "text/html"}) as answer:
            await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{path}: {answer.status}")
        if n >= WARMUP:
            found.append((time.perf_counter() - began) * 1000)
    return found


async def _fan_out(base: str, pool: dbpool.Pool, task_id: int, clients: int) -> list[float]:
    """Seconds from a task event's commit until each of `clients` listeners has it."""
    arrived: list[float] = []
    ready = asyncio.Event()
    connected = 0
    sent_at = 0.0

    async def listen() -> None:
        nonlocal connected
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/api/v1/events", timeout=aiohttp.ClientTimeout(total=30)) as r,
        ):
            await r.content.readline()
            connected += 1
            if connected == clients:
                ready.set()
            async for line in r.content:
                if line.startswith(b"event: task.submitted"):
                    arrived.append(time.perf_counter() - sent_at)
                    return

    listeners = [asyncio.create_task(listen()) for _ in range(clients)]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.5)  # every stream past its first poll
    sent_at = time.perf_counter()
    await pool.execute(
        "SELECT appliance.task_event($1, 'acme', 'bench', 'task.submitted', '{}'::jsonb)", task_id
    )
    await asyncio.wait_for(asyncio.gather(*listeners), 30)
    return arrived


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--steps-per-task", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    figures: dict[str, Any] = {"tasks": args.tasks, "steps": args.tasks * args.steps_per_task}
    async with postgres.server() as server, postgres.fresh_database(server, "console") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=4, max_size=16)
        began = time.perf_counter()
        task_id = await _fill(pool, args.tasks, args.steps_per_task)
        print(f"filled in {time.perf_counter() - began:.0f} s")
        config = settings.Settings()
        backend = console_web.Backend()
        backend.attach(operations.build(pool, config))
        readiness = health.Readiness(database=True, database_reason="", schema_current=True)
        app = console_web.build(
            readiness, backend, console_web.Resolvers(tcp=identity.LoopbackOwner())
        )
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        pages = {
            "task_list": "/tasks",
            "task_list_filtered": "/tasks?tenant=acme&state=failed",
            "timeline_50_steps": f"/tasks/{task_id}",
            "cost_page": "/costs",
        }
        async with aiohttp.ClientSession(base_url=base) as session:
            for name, path in pages.items():
                latencies = await _timed(session, path, args.requests)
                p50, p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
                print(f"{name} ({path}): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
                figures[f"{name}_p50_ms"] = round(p50, 2)
                figures[f"{name}_p95_ms"] = round(p95, 2)
        arrived = await _fan_out(base, pool, task_id, args.clients)
        print(
            f"{args.clients} SSE clients: the change reached all within "
            f"{max(arrived) * 1000:.0f} ms (median {_percentile(arrived, 0.5) * 1000:.0f} ms)"
        )
        figures["sse_clients"] = len(arrived)
        figures["sse_max_ms"] = round(max(arrived) * 1000, 1)
        figures["sse_p50_ms"] = round(_percentile(arrived, 0.5) * 1000, 1)
        await runner.cleanup()
        await pool.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
