"""Metrics benchmark: how long a scrape of /metrics takes as the database grows.

    python bench/metrics.py [--tasks 100000] [--scrapes 20]

Fills a fresh database with `--tasks` tasks over 5 tenants and 10 workflows in every state
(ended ones with durations), one attempt each plus a lost one for a tenth, as many model calls
and a backlog of outbox events, then scrapes an exporter over a loopback socket `--scrapes`
times. Uses DATABASE_URL, else the server on localhost:5432, else a throwaway cluster; the
database is dropped after. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import metrics, settings  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from tests.support import postgres, scrape  # noqa: E402

TENANTS = 5
WORKFLOWS = 10

FILL = [
    """INSERT INTO appliance.tenants (tenant_id, name)
       SELECT 'tenant' || i, 'tenant ' || i FROM generate_series(1, $1::int) AS i""",
    """INSERT INTO appliance.tasks (tenant_id, workflow, input, state, run_after, attempts,
                                   created_at, started_at, finished_at)
       SELECT 'tenant' || (1 + i % $2::int), 'workflow' || (i % $3::int), '{}',
              (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'cancelled', 'queued',
                     'waiting', 'running'])[1 + i % 8],
              now() - make_interval(secs => i % 600), 1,
              now() - make_interval(secs => 3600), now() - make_interval(secs => 3000),
              CASE WHEN i % 8 < 5 THEN now() - make_interval(secs => 3000 - (i % 900)) END
         FROM generate_series(1, $1::int) AS i""",
    """INSERT INTO appliance.task_attempts (task_id, attempt, tenant_id, node, worker, outcome)
       SELECT t.task_id, 1, t.tenant_id, 'n1', 'w1',
              CASE WHEN t.task_id % 10 = 0 THEN 'lease_expired' ELSE 'succeeded' END
         FROM appliance.tasks t""",
    """INSERT INTO appliance.model_calls (tenant_id, task_id, agent, agent_version, model,
                                         started_at, latency_ms, input_tokens,
                                         cache_creation_input_tokens, cache_write_5m_tokens,
                                         cache_write_1h_tokens, cache_read_input_tokens,
                                         output_tokens, cost_usd, uncached_cost_usd)
       SELECT t.tenant_id, t.task_id, 'agent' || (t.task_id % 3), 1, 'claude-sonnet-4-5', now(),
              800, 1000, 2000, 2000, 0, 4000, 300, 0.0123, 0.0240
         FROM appliance.tasks t""",
    """INSERT INTO appliance.outbox_events (tenant_id, task_id, type, payload)
       SELECT t.tenant_id, t.task_id, 'task.submitted', '{}'
         FROM appliance.tasks t WHERE t.task_id % 10 = 0""",
]


async def run(tasks: int, scrapes: int) -> dict[str, Any]:
    async with postgres.server() as server, postgres.fresh_database(server) as dsn:
        pool = await dbpool.create_pool(dsn, min_size=1, max_size=4)
        try:
            started = time.perf_counter()
            async with pool.acquire() as conn:
                await conn.execute(FILL[0], TENANTS)
                await conn.execute(FILL[1], tasks, TENANTS, WORKFLOWS)
                for statement in FILL[2:]:
                    await conn.execute(statement)
                await conn.execute("ANALYZE")
            filled = time.perf_counter() - started
            exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None, pool=pool)
            times, query = [], []
            async with scrape.serving(exporter) as url:
                await scrape.scrape(url)  # warm: the first query plans and reads from disk
                for _ in range(scrapes):
                    began = time.perf_counter()
                    page = await scrape.scrape(url)
                    times.append(time.perf_counter() - began)
                    query.append(page.value("appliance_metrics_query_seconds"))
            return {
                "tasks": tasks,
                "fill_seconds": round(filled, 1),
                "scrape_p50_ms": round(statistics.median(times) * 1000, 1),
                "scrape_p95_ms": round(_p95(times) * 1000, 1),
                "query_p50_ms": round(statistics.median(query) * 1000, 1),
                "series": sum(len(f.samples) for f in page.families.values()),
                "bytes": len(page.text),
            }
        finally:
            await pool.close()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    figures = asyncio.run(run(args.tasks, args.scrapes))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
