"""`/metrics` scraped over a real socket against the real Postgres: what it reports equals what
the database (and the commands reading it) say, every family follows Prometheus' naming rules,
and a database that does not answer gives `appliance_postgres_up 0` on a 200 page."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client.metrics_core import Metric

from appliance import metrics, models, settings
from appliance.agents import costs
from appliance.db import migrations
from appliance.db import outbox as dboutbox
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from tests.support import engine, postgres, scrape, workload

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

STATES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
# The appliance's families a page has without the database: up, and this process's own.
PROCESS_OWN = {
    "appliance_postgres_up",
    "appliance_build_info",
    "appliance_step_duration_seconds",
    "appliance_webhook_requests",
    "appliance_exposure_violations",
    "appliance_exposure_violating_sockets",
}


@pytest_asyncio.fixture(loop_scope="session")
async def made(db: dbpool.Pool, database_dsn: str) -> workload.Workload:
    """The workload of tests/support/workload.py in the emptied database."""
    return await workload.make(db, database_dsn)


@pytest_asyncio.fixture(loop_scope="session")
async def url(db: dbpool.Pool) -> AsyncIterator[str]:
    """/metrics of an exporter reading the test database, on a loopback port."""
    exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None, pool=db)
    async with scrape.serving(exporter) as served:
        yield served


async def tasks_of(db: dbpool.Pool, *, tenant: str, state: str) -> list[models.Task]:
    """What `appliance task list --tenant T --state S` lists (all of them)."""
    return await dbtasks.list_tasks(db, tenant_id=tenant, state=state, limit=10_000)


class TestTasks:
    async def test_tasks_by_state_equal_the_task_list(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """Every tenant's count in every state is what the task list shows."""
        page = await scrape.scrape(url)
        for tenant in ("default", "acme", "globex"):
            for state in STATES:
                listed = await tasks_of(db, tenant=tenant, state=state)
                assert page.value("appliance_tasks", tenant=tenant, state=state) == len(listed), (
                    tenant,
                    state,
                )
        assert page.value("appliance_tasks", state="succeeded") == 3
        assert page.value("appliance_tasks", state="failed") == 1
        assert page.value("appliance_tasks", state="cancelled") == 1

    async def test_task_durations_count_the_tasks_that_ended_after_a_claim(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """The histogram counts the ended tasks that ran, and sums their first-claim-to-end
        times; a task cancelled before any claim has no duration."""
        page = await scrape.scrape(url)
        ran = await tasks_of(db, tenant="acme", state="succeeded")
        ran += await tasks_of(db, tenant="globex", state="succeeded")
        name = "appliance_task_duration_seconds"
        labels = {"workflow": workload.STEPS, "state": "succeeded"}
        assert page.value(f"{name}_count", **labels) == len(ran) == 3
        assert page.value(f"{name}_bucket", le="+Inf", **labels) == 3
        expected = sum(
            (t.finished_at - t.started_at).total_seconds()
            for t in ran
            if t.finished_at is not None and t.started_at is not None
        )
        assert scrape.close(page.value(f"{name}_sum", **labels), expected, tolerance=1e-6)
        assert page.value(f"{name}_count", state="cancelled") == 0

    async def test_duration_buckets_are_cumulative_and_hold_each_task_once(
        self, made: workload.Workload, url: str
    ) -> None:
        """Each bucket holds every task at or below its bound; they grow up to the count."""
        page = await scrape.scrape(url)
        labels = {"workflow": workload.STEPS, "state": "succeeded"}
        buckets = page.labelled("appliance_task_duration_seconds_bucket", "le")
        bounds = sorted(buckets, key=float)
        counts = [
            page.value("appliance_task_duration_seconds_bucket", le=b, **labels) for b in bounds
        ]
        assert counts == sorted(counts)
        assert len(bounds) == len(metrics.TASK_BUCKETS) + 1
        assert counts[0] >= 3  # these tasks took well under the first bound (0.1 s)

    async def test_step_durations_are_observed_as_the_worker_writes_checkpoints(
        self, db: dbpool.Pool, database_dsn: str, url: str
    ) -> None:
        """Each checkpoint a worker of this process writes is one observation."""
        name = "appliance_step_duration_seconds_count"
        before = (await scrape.scrape(url)).value(name, workflow=workload.STEPS)
        made = await workload.make(db, database_dsn)
        steps = [step for task_id in made.ran for step in await dbtasks.list_steps(db, task_id)]
        after = (await scrape.scrape(url)).value(name, workflow=workload.STEPS)
        assert after - before == len(steps) == 6


class TestQueue:
    async def test_depth_counts_the_ready_tasks_only(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """Queued tasks due now count; a delayed one does not."""
        page = await scrape.scrape(url)
        now = dt.datetime.now(dt.UTC)
        for tenant in ("acme", "globex"):
            queued = await tasks_of(db, tenant=tenant, state="queued")
            due = [t for t in queued if t.run_after <= now]
            assert page.value("appliance_queue_depth", tenant=tenant) == len(due)
        assert page.value("appliance_queue_depth", tenant="acme") == 2
        assert page.value("appliance_queue_depth", tenant="globex") == 0

    async def test_oldest_age_is_how_long_the_first_ready_task_waited(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """The age is the time since the earliest run_after of the ready tasks."""
        queued = await tasks_of(db, tenant="acme", state="queued")
        earliest = min(t.run_after for t in queued)
        before = (dt.datetime.now(dt.UTC) - earliest).total_seconds()
        page = await scrape.scrape(url)
        after = (dt.datetime.now(dt.UTC) - earliest).total_seconds()
        age = page.value(
            "appliance_queue_oldest_age_seconds", tenant="acme", workflow=workload.PARKED
        )
        assert before - 0.05 <= age <= after + 0.05


class TestAttempts:
    async def test_claims_takeovers_and_recoveries_count_the_attempts(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """Claims are the attempts; one lease expired and was taken over, one node took its
        task back after a restart."""
        page = await scrape.scrape(url)
        attempts: list[models.Attempt] = []
        for tenant in ("default", "acme", "globex"):
            for state in STATES:
                for task in await tasks_of(db, tenant=tenant, state=state):
                    attempts += await dbtasks.list_attempts(db, task.task_id)
        assert page.value("appliance_task_claims_total") == len(attempts)
        expired = [a for a in attempts if a.outcome == "lease_expired"]
        restarted = [a for a in attempts if a.outcome == "node_restarted"]
        assert page.value("appliance_lease_takeovers_total", tenant="acme") == len(expired) == 1
        assert page.value("appliance_crash_recoveries_total", tenant="acme") == len(restarted) == 1


class TestOutboxAndApprovals:
    async def test_outbox_backlog_is_what_doctor_counts(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """No relay runs here: every event is pending, as count_pending_events says."""
        backlog = await dboutbox.count_pending_events(db)
        page = await scrape.scrape(url)
        assert page.value("appliance_outbox_backlog_events") == backlog.pending > 0
        assert page.value("appliance_outbox_failing_events") == backlog.failing
        assert page.value("appliance_outbox_oldest_age_seconds") >= (backlog.oldest_seconds or 0)

    async def test_approvals_waiting_by_tenant(self, made: workload.Workload, url: str) -> None:
        """The pending request counts for its tenant, with its wait."""
        page = await scrape.scrape(url)
        assert page.value("appliance_approvals_pending", tenant="acme") == 1
        assert page.value("appliance_approvals_pending", tenant="globex") == 0
        assert page.value("appliance_approvals_oldest_age_seconds", tenant="acme") > 0


class TestCosts:
    async def test_cost_and_tokens_equal_the_cost_report(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """Per tenant: calls, every token category and the cost are `appliance cost`'s."""
        page = await scrape.scrape(url)
        report = await costs.cost_report(db, by="tenant")
        assert {row.tenant_id for row in report} == {"acme", "globex"}
        for row in report:
            assert row.tenant_id is not None
            tenant = row.tenant_id
            assert page.value("appliance_llm_calls_total", tenant=tenant) == row.calls
            tokens = page.labelled("appliance_llm_tokens_total", "category", tenant=tenant)
            assert tokens == {
                "input": row.input_tokens,
                "cache_write": row.cache_creation_input_tokens,
                "cache_read": row.cache_read_input_tokens,
                "output": row.output_tokens,
            }
            assert scrape.close(
                page.value("appliance_llm_cost_usd_total", tenant=tenant), row.cost_usd
            )
            saving = page.value("appliance_llm_cache_savings_usd", tenant=tenant)
            assert scrape.close(saving, row.saving_usd)

    async def test_budget_left_is_the_limit_less_this_months_spend(
        self, db: dbpool.Pool, made: workload.Workload, url: str
    ) -> None:
        """acme's monthly 5 USD, less what its calls of this month cost."""
        month = dt.datetime.now(dt.UTC).date().replace(day=1)
        (spent,) = await costs.cost_report(db, by="tenant", since=month, tenant_id="acme")
        page = await scrape.scrape(url)
        assert page.value("appliance_budget_limit_usd", tenant="acme") == 5
        assert scrape.close(
            page.value("appliance_budget_remaining_usd", tenant="acme"), 5 - spent.cost_usd
        )
        assert "globex" not in page.labelled("appliance_budget_limit_usd", "tenant")


async def migrated_database(server_dsn: str) -> str:
    """A new database on the server, migrated; its DSN."""
    name = f"appliance_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = postgres.with_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    return dsn


async def _answered(url: str) -> scrape.Page | None:
    page = await scrape.scrape(url)
    return page if page.value("appliance_postgres_up") == 1 else None


NAME = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_PREFIXES = ("process_", "python_")
# Label names allowed: bounded by configuration or code, never per task, person or request.
LABELS = {
    "tenant", "workflow", "state", "agent", "model", "category", "code", "holder", "version",
    "endpoint",
    "le", "generation", "implementation", "major", "minor", "patchlevel",
}  # fmt: skip
TIME_WORDS = ("duration", "age", "seconds", "time", "latency")
MONEY_WORDS = ("cost", "budget", "savings", "usd")


def problems_of(family: Metric) -> list[str]:
    """Where one family breaks the Prometheus naming rules (reference/console.md 3.1)."""
    name = family.name
    found = []
    if not NAME.fullmatch(name):
        found.append("not snake_case")
    if not name.startswith(("appliance_", *DEFAULT_PREFIXES)):
        found.append("not under the appliance_ prefix")
    if not family.documentation.strip():
        found.append("no HELP")
    if family.type == "counter" and not all(s.name.endswith("_total") for s in family.samples):
        found.append("a counter sample without _total")
    if family.type != "counter" and name.endswith("_total"):
        found.append("_total on a non-counter")
    return found + unit_problems(name) + label_problems(family)


def unit_problems(name: str) -> list[str]:
    """Base units only: a time ends in _seconds, money in _usd; no milli-, minutes, percent."""
    found = []
    if re.search(r"milli|micro|_ms\b|_ms_|minutes|hours|percent", name):
        found.append("not in base units")
    for words, suffix, what in ((TIME_WORDS, "_seconds", "time"), (MONEY_WORDS, "_usd", "money")):
        mentioned = name.startswith("appliance_") and any(w in name for w in words)
        if mentioned and not name.endswith(suffix):
            found.append(f"a {what} not in {suffix}")
    return found


def label_problems(family: Metric) -> list[str]:
    """Labels of bounded values only, none repeating the name."""
    found = []
    for label in sorted({label for sample in family.samples for label in sample.labels}):
        if label not in LABELS:
            found.append(f"label {label!r} is not a bounded one")
        if label != "le" and f"_{label}_" in f"_{family.name}_":
            found.append(f"label {label!r} repeated in the name")
    return found


class TestNaming:
    async def test_every_family_follows_the_conventions(
        self, made: workload.Workload, url: str
    ) -> None:
        """Prefix, snake_case, HELP, `_total` on counters only, base units, bounded labels."""
        metrics.WEBHOOK_REQUESTS.labels("202").inc(0)  # a labelled child, so its samples show
        metrics.EXPOSED_SOCKETS.labels("daemon").set(0)
        page = await scrape.scrape(url)
        ours = [f for f in page.families.values() if f.name.startswith("appliance_")]
        assert len(ours) >= 25
        assert all(f.samples for f in ours if f.name != "appliance_exposure_violations"), [
            f.name for f in ours if not f.samples
        ]
        broken = {f.name: problems_of(f) for f in page.families.values() if problems_of(f)}
        assert broken == {}

    async def test_the_checks_catch_a_broken_name(self) -> None:
        """The rules above are not vacuous: a milliseconds gauge with a task label fails."""
        family = Metric("appliance_step_ms", "", "gauge")
        family.add_sample("appliance_step_ms", {"task_id": "7"}, 1.0)
        assert problems_of(family) == [
            "no HELP",
            "not in base units",
            "label 'task_id' is not a bounded one",
        ]


class TestDatabaseAway:
    async def test_no_database_yet_is_up_zero_on_a_200(self) -> None:
        """Before the daemon has its pool, the page answers with postgres_up 0 only."""
        exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None)
        async with scrape.serving(exporter) as url:
            page = await scrape.scrape(url)
        assert page.status == 200
        assert page.value("appliance_postgres_up") == 0
        assert {name for name in page.families if name.startswith("appliance_")} == PROCESS_OWN
        assert "process_cpu_seconds" in page.families  # the client's defaults are still there

    async def test_a_query_past_its_timeout_is_up_zero_in_time(self, db: dbpool.Pool) -> None:
        """A query blocked by a lock is cut at query_timeout_seconds: 200, postgres_up 0."""
        config = settings.MetricsSettings(query_timeout_seconds=0.5)
        exporter = metrics.Exporter(config, mesh=None, pool=db)
        async with scrape.serving(exporter) as url, db.acquire() as holder, holder.transaction():
            await holder.execute("LOCK TABLE appliance.tasks IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            page = await scrape.scrape(url)
            took = time.monotonic() - started
        assert page.status == 200
        assert page.value("appliance_postgres_up") == 0
        assert took < 2.0

    @pytest.mark.slow
    async def test_postgres_stopped_is_up_zero_on_a_200_and_back_when_it_returns(self) -> None:
        """On a cluster of its own: stopped, the page answers 200 with postgres_up 0 and no
        database series; started again, they are back without a restart of anything."""
        server = postgres.throwaway_cluster()
        try:
            await server.start()
            dsn = await migrated_database(server.dsn())
            pool = await dbpool.create_pool(dsn, min_size=1, max_size=2, timeout=2)
            exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None, pool=pool)
            try:
                async with scrape.serving(exporter) as url:
                    up = await scrape.scrape(url)
                    await server.stop()
                    down = await scrape.scrape(url)
                    await server.start()
                    back = await engine.wait_until(
                        lambda: _answered(url), what="the database's series to come back"
                    )
            finally:
                await pool.close()
        finally:
            await server.stop()
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)
        assert (up.status, up.value("appliance_postgres_up")) == (200, 1)
        assert "appliance_tasks" in up.families
        assert (down.status, down.value("appliance_postgres_up")) == (200, 0)
        assert {name for name in down.families if name.startswith("appliance_")} == PROCESS_OWN
        assert back.value("appliance_postgres_up") == 1

    async def test_concurrent_scrapes_share_one_query(self, db: dbpool.Pool) -> None:
        """Ten scrapes at once read the database once (one query shows its own time)."""
        exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None, pool=db)
        readings = await asyncio.gather(*(exporter.read() for _ in range(10)))
        assert len({id(reading) for reading in readings}) == 1
        assert readings[0].snapshot is not None
