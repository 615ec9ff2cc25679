"""`/metrics` of a running `appliance run`: the edge daemon serves it beside /readyz, its
numbers are what `appliance task list` and `appliance cost` print, and a worker (mode =
"worker", no console) serves it on loopback, or nowhere when told so."""

from __future__ import annotations

import collections
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from appliance import models, settings
from appliance.agents import costs
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry, submission
from tests.support import daemon, scrape, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="session")]

SUBMIT_CONFIG = settings.EngineSettings(node_name="test")


@pytest_asyncio.fixture(loop_scope="session")
async def tables(db: dbpool.Pool) -> dbpool.Pool:
    """The emptied session database, with the table the test workflows record their steps in."""
    await workflows.create_step_runs(db)
    return db


async def submit(db: dbpool.Pool, workflow: str, tenant_id: str = "default") -> int:
    """A task, through the real submission path."""
    answer = await submission.submit(
        db,
        registry.registry,
        SUBMIT_CONFIG,
        tenant_id=tenant_id,
        workflow=workflow,
        task_input=None,
        actor="test",
    )
    return answer.task_id


async def ended(db: dbpool.Pool, task_ids: list[int]) -> bool:
    tasks = [await dbtasks.get_task(db, task_id) for task_id in task_ids]
    return all(t is not None and t.state in models.TERMINAL_STATES for t in tasks)


class TestEdgeDaemon:
    async def test_its_metrics_are_what_task_list_and_cost_print(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Tasks by state and cost per tenant equal the CLI's; the steps its worker ran are
        in its step histogram."""
        db = tables
        ran = [await submit(db, workflows.COUNTED) for _ in range(3)]
        ran += [await submit(db, workflows.FAILS, tenant_id="acme")]
        await costs.record_call(
            db,
            tenant_id="acme",
            task_id=ran[-1],
            position=0,
            agent="writer",
            agent_version=1,
            model="claude-sonnet-4-5",
            request_id=f"req_{uuid.uuid4().hex}",
            latency_ms=100.0,
            usage=costs.Usage(input_tokens=1_000, cache_read_input_tokens=4_000, output_tokens=10),
            cache_note=None,
        )
        async with daemon.running(database_dsn, tmp_path) as running:
            await daemon.wait_until(
                lambda: ended(db, ran), what="the tasks to end", daemons=[running]
            )
            page = await scrape.scrape(f"http://127.0.0.1:{running.health_port}/metrics")
        listed = await daemon.cli(
            "task", "list", "--json", "--limit", "1000", folder=tmp_path, dsn=database_dsn
        )
        report = await daemon.cli(
            "cost", "--json", "--by", "tenant", folder=tmp_path, dsn=database_dsn
        )
        assert page.status == 200
        assert page.value("appliance_postgres_up") == 1
        by_state = collections.Counter((t["tenant_id"], t["state"]) for t in listed.json())
        exported = {
            (s.labels["tenant"], s.labels["state"]): s.value
            for s in page.families["appliance_tasks"].samples
        }
        assert exported == by_state
        for row in report.json():
            cost = page.value("appliance_llm_cost_usd_total", tenant=row["tenant_id"])
            assert scrape.close(cost, Decimal(row["cost_usd"]))
        steps = sum([len(await dbtasks.list_steps(db, task_id)) for task_id in ran[:3]])
        observed = page.value("appliance_step_duration_seconds_count", workflow=workflows.COUNTED)
        assert observed == steps == 9


class TestWorker:
    async def test_a_worker_serves_metrics_on_loopback(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """mode = "worker" has no console, yet /metrics answers on the health.host it is given."""
        overrides = {"mode": "worker", "health.host": "127.0.0.1"}
        async with daemon.running(database_dsn, tmp_path, overrides=overrides) as running:
            assert running.health_port > 0
            page = await scrape.scrape(f"http://127.0.0.1:{running.health_port}/metrics")
        assert page.status == 200
        assert page.value("appliance_postgres_up") == 1
        assert "appliance_tasks" in page.families

    async def test_a_worker_told_no_host_listens_on_nothing(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A worker given no health.host listens on nothing, as before."""
        overrides = {"mode": "worker", "health.host": "tailnet"}  # the default: none given
        async with daemon.running(database_dsn, tmp_path, overrides=overrides) as running:
            assert running.ready["health_port"] == 0
