"""The daemon as an operator runs it: `appliance run` subprocesses, killed, restarted, drained."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from appliance import models, settings
from appliance.db import migrations
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.db.embedded import EmbeddedPostgres
from appliance.engine import registry, submission
from tests.support import daemon, postgres, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

Executor = dbpool.Pool | dbpool.Connection

SUBMIT_CONFIG = settings.EngineSettings(node_name="test", max_attempts=3)
STAND_IN = Path(__file__).resolve().parents[1] / "support" / "bin" / "tailscale"
LEASE_SECONDS = 2.0


# ---- factories and reads -----------------------------------------------------------------------


async def submit(
    executor: Executor, workflow: str, task_input: Any = None, **overrides: Any
) -> int:
    """Submit a new task through the real submission path; returns its id."""
    answer = await submission.submit(
        executor,
        registry.registry,
        SUBMIT_CONFIG,
        tenant_id="default",
        workflow=workflow,
        task_input=task_input,
        actor="test",
        **overrides,
    )
    assert answer.created
    return answer.task_id


async def step_runs(executor: Executor, task_id: int) -> dict[str, list[int]]:
    """{step: [attempt of each execution, in order]} from public.step_runs."""
    rows = await executor.fetch(
        "SELECT step, attempt FROM public.step_runs WHERE task_id = $1 ORDER BY at, attempt",
        task_id,
    )
    runs: dict[str, list[int]] = {}
    for row in rows:
        runs.setdefault(row["step"], []).append(row["attempt"])
    return runs


async def attempts(executor: Executor, task_id: int) -> list[tuple[int, str, str]]:
    """(attempt, node, outcome) of each attempt of the task."""
    return [(a.attempt, a.node, a.outcome) for a in await dbtasks.list_attempts(executor, task_id)]


async def wait_for_step(
    executor: Executor, task_id: int, step: str, *, attempt: int, daemons: Sequence[daemon.Daemon]
) -> None:
    """Until `step` of the task has started in `attempt` (its row is in step_runs)."""

    async def started() -> bool:
        return attempt in (await step_runs(executor, task_id)).get(step, [])

    await daemon.wait_until(
        started, what=f"step {step} of task {task_id} in attempt {attempt}", daemons=daemons
    )


async def wait_for_attempt(
    executor: Executor, task_id: int, attempt: int, *, daemons: Sequence[daemon.Daemon]
) -> models.Attempt:
    """The task's attempt `attempt`, once it has started."""

    async def found() -> models.Attempt | None:
        for row in await dbtasks.list_attempts(executor, task_id):
            if row.attempt == attempt:
                return row
        return None

    return await daemon.wait_until(
        found, what=f"attempt {attempt} of task {task_id}", daemons=daemons
    )


async def wait_for_states(
    executor: Executor,
    task_ids: Collection[int],
    states: Collection[str] = models.TERMINAL_STATES,
    *,
    daemons: Sequence[daemon.Daemon],
    timeout: float = daemon.WAIT_SECONDS,
) -> list[models.Task]:
    """Every one of the tasks, once each is in one of `states` (by default: ended)."""

    async def reached() -> list[models.Task] | None:
        found = [await dbtasks.get_task(executor, task_id) for task_id in task_ids]
        done = [t for t in found if t is not None and t.state in states]
        return done if len(done) == len(task_ids) else None

    return await daemon.wait_until(
        reached,
        what=f"tasks {sorted(task_ids)} to be {sorted(states)}",
        daemons=daemons,
        timeout=timeout,
    )


def shipped(events_file: Path) -> list[dict[str, Any]]:
    """The messages the file sink has written so far."""
    if not events_file.exists():
        return []
    text = events_file.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def wait_for_shipped(
    events_file: Path, task_id: int, event_type: str, *, daemons: Sequence[daemon.Daemon]
) -> list[dict[str, Any]]:
    """The task's shipped messages, once one of type `event_type` is among them."""

    async def arrived() -> list[dict[str, Any]] | None:
        mine = [m for m in shipped(events_file) if m["task_id"] == task_id]
        return mine if any(m["type"] == event_type for m in mine) else None

    return await daemon.wait_until(
        arrived, what=f"{event_type} of task {task_id} in {events_file}", daemons=daemons
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- fixtures ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def tables(db: dbpool.Pool) -> dbpool.Pool:
    """The emptied session database, with an empty public.step_runs."""
    await workflows.create_step_runs(db)
    return db


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_database(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A throwaway Postgres cluster of this test alone, with a migrated database in it."""
    cluster = postgres.throwaway_cluster()
    try:
        await cluster.start()
        name = f"appliance_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(cluster.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        dsn = postgres.with_database(cluster.dsn(), name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
            await dbtenants.create_tenant(conn, tenant_id="default", name="default", actor="test")
            await workflows.create_step_runs(conn)
        finally:
            await conn.close()
        yield cluster, dsn
    finally:
        await cluster.stop()
        shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


# ---- tests -------------------------------------------------------------------------------------


class TestCrashRecovery:
    async def test_a_restarted_node_resumes_its_task_from_the_last_checkpoint(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """kill -9 mid-step, restart under the same node name: done steps are not run again."""
        gate = tmp_path / "gate"
        async with daemon.running(database_dsn, tmp_path, name="first", node="n1") as first:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            await first.kill()
        async with daemon.running(database_dsn, tmp_path, name="second", node="n1") as second:
            resumed = await wait_for_attempt(tables, task_id, 2, daemons=[second])
            await wait_for_step(tables, task_id, "two", attempt=2, daemons=[second])
            gate.touch()
            [task] = await wait_for_states(tables, [task_id], daemons=[second])

        assert task.state == "succeeded", task.error
        assert task.output == ["one", "two", "three"]
        assert await step_runs(tables, task_id) == {"one": [1], "two": [1, 2], "three": [2]}
        assert await attempts(tables, task_id) == [
            (1, "n1", "node_restarted"),
            (2, "n1", "succeeded"),
        ]
        assert (resumed.started_at - second.ready_at).total_seconds() < 1.0

    async def test_the_restarted_node_logs_that_it_took_its_task_back(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """The restart reports how many tasks of its node it requeued."""
        gate = tmp_path / "gate"
        async with daemon.running(database_dsn, tmp_path, name="first", node="n1") as first:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            await first.kill()
        async with daemon.running(database_dsn, tmp_path, name="second", node="n1") as second:
            reclaimed = second.events("engine.reclaimed")
        assert [r["count"] for r in reclaimed] == [1]


class TestLeaseTakeover:
    async def test_another_node_takes_over_a_dead_nodes_task_after_its_lease(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """kill -9 node a mid-step: node b requeues and finishes the task once the lease ends."""
        gate = tmp_path / "gate"
        overrides = {"engine.lease_seconds": LEASE_SECONDS}
        async with daemon.running(
            database_dsn, tmp_path, name="a", node="a", overrides=overrides
        ) as a:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[a])
            async with daemon.running(
                database_dsn, tmp_path, name="b", node="b", overrides=overrides
            ) as b:
                await a.kill()
                killed_at = now()
                taken = await wait_for_attempt(tables, task_id, 2, daemons=[b])
                gate.touch()
                [task] = await wait_for_states(tables, [task_id], daemons=[b])

        assert task.state == "succeeded", task.error
        assert await attempts(tables, task_id) == [
            (1, "a", "lease_expired"),
            (2, "b", "succeeded"),
        ]
        assert await step_runs(tables, task_id) == {"one": [1], "two": [1, 2], "three": [2]}
        waited = (taken.started_at - killed_at).total_seconds()
        heartbeat = LEASE_SECONDS / 3
        assert LEASE_SECONDS - heartbeat - 0.2 < waited < LEASE_SECONDS + heartbeat + 0.5

    async def test_two_daemons_never_run_the_same_step(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Two daemons share a burst of tasks; every step of every task runs exactly once."""
        overrides = {"engine.concurrency": 2}
        async with (
            daemon.running(database_dsn, tmp_path, name="a", node="a", overrides=overrides) as a,
            daemon.running(database_dsn, tmp_path, name="b", node="b", overrides=overrides) as b,
        ):
            async with tables.acquire() as conn, conn.transaction():
                task_ids = [await submit(conn, workflows.COUNTED, {"i": i}) for i in range(30)]
            done = await wait_for_states(tables, task_ids, daemons=[a, b])

        assert {t.state for t in done} == {"succeeded"}
        rows = await tables.fetch(
            "SELECT task_id, step, count(*) AS n FROM public.step_runs GROUP BY task_id, step"
        )
        assert len(rows) == 3 * len(task_ids)
        assert {row["n"] for row in rows} == {1}
        nodes = await tables.fetch("SELECT DISTINCT node FROM appliance.task_attempts")
        assert {row["node"] for row in nodes} == {"a", "b"}


class TestShutdown:
    async def test_sigterm_lets_the_running_step_finish_and_exits_zero(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """SIGTERM mid-step: the step completes and is checkpointed, the task is released."""
        grace = 5.0
        overrides = {"engine.shutdown_grace_seconds": grace}
        async with daemon.running(
            database_dsn, tmp_path, name="first", node="n1", overrides=overrides
        ) as first:
            task_id = await submit(tables, workflows.COUNTED, {"hold": 1.0})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            signalled = asyncio.get_running_loop().time()
            code = await first.terminate(timeout=grace + 5)
            took = asyncio.get_running_loop().time() - signalled

        assert code == 0, first.tail()
        assert took < grace
        task = await dbtasks.get_task(tables, task_id)
        assert task is not None
        assert task.state == "queued"
        assert [s.name for s in await dbtasks.list_steps(tables, task_id)] == ["one", "two"]
        assert [outcome for _, _, outcome in await attempts(tables, task_id)] == ["released"]

    async def test_a_released_task_is_finished_by_the_next_daemon(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """After a drain, another daemon finishes the task without rerunning completed steps."""
        overrides = {"engine.shutdown_grace_seconds": 5.0}
        async with daemon.running(
            database_dsn, tmp_path, name="first", node="n1", overrides=overrides
        ) as first:
            task_id = await submit(tables, workflows.COUNTED, {"hold": 1.0})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            assert await first.terminate() == 0, first.tail()
        async with daemon.running(database_dsn, tmp_path, name="second", node="n2") as second:
            [task] = await wait_for_states(tables, [task_id], daemons=[second])

        assert task.state == "succeeded", task.error
        runs = await step_runs(tables, task_id)
        assert {step: len(seen) for step, seen in runs.items()} == {"one": 1, "two": 1, "three": 1}
        assert [(node, outcome) for _, node, outcome in await attempts(tables, task_id)] == [
            ("n1", "released"),
            ("n2", "succeeded"),
        ]

    async def test_readiness_is_red_while_draining(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """After SIGTERM, /readyz answers 503 "shutting down" while the daemon drains."""
        overrides = {"engine.shutdown_grace_seconds": 5.0}
        async with daemon.running(database_dsn, tmp_path, overrides=overrides) as running:
            task_id = await submit(tables, workflows.COUNTED, {"hold": 2.0})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[running])
            assert await running.get("/readyz") == (200, {"status": "ready"})
            running.process.send_signal(signal.SIGTERM)
            await running.wait_for_log("daemon.stopping")
            status, body = await running.get("/readyz")
            assert await running.wait_exit() == 0

        assert status == 503
        assert "shutting down" in body["reasons"]

    async def test_a_step_longer_than_the_grace_is_cancelled_and_rerun_later(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A step still running when the grace ends is cut off; the task goes back to the queue."""
        grace = 0.5
        gate = tmp_path / "gate"
        overrides = {"engine.shutdown_grace_seconds": grace}
        async with daemon.running(
            database_dsn, tmp_path, name="first", node="n1", overrides=overrides
        ) as first:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            signalled = asyncio.get_running_loop().time()
            assert await first.terminate() == 0, first.tail()
            took = asyncio.get_running_loop().time() - signalled
        released = await dbtasks.get_task(tables, task_id)
        checkpointed = [s.name for s in await dbtasks.list_steps(tables, task_id)]
        async with daemon.running(database_dsn, tmp_path, name="second", node="n2") as second:
            gate.touch()
            [task] = await wait_for_states(tables, [task_id], daemons=[second])

        assert took < grace + 2.0
        assert released is not None
        assert released.state == "queued"
        assert checkpointed == ["one"]
        assert task.state == "succeeded", task.error
        assert await step_runs(tables, task_id) == {"one": [1], "two": [1, 2], "three": [2]}
        assert [outcome for _, _, outcome in await attempts(tables, task_id)] == [
            "released",
            "succeeded",
        ]


class TestConsoleFailure:
    async def test_a_console_that_cannot_bind_after_the_worker_started_releases_its_tasks(
        self,
        tables: dbpool.Pool,
        database_dsn: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The tailnet comes up on an address the box cannot bind while a step runs: exit 78,
        the running task released to the queue, not left held by a dead worker."""
        state = tmp_path / "tailscale-state.json"
        state.write_text(json.dumps({"BackendState": "NeedsLogin"}), encoding="utf-8")
        monkeypatch.setenv("FAKE_TAILSCALE_STATE_FILE", str(state))
        overrides = {
            "health.host": settings.TAILNET,
            "mesh.tailscale": str(STAND_IN),
            "engine.shutdown_grace_seconds": 0.2,
        }
        edge = await daemon.spawn(database_dsn, tmp_path, name="edge", overrides=overrides)
        try:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(tmp_path / "never")})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[edge])
            # The stand-in's Running node has 100.104.58.51, an address this box does not hold.
            state.write_text(json.dumps({"BackendState": "Running"}), encoding="utf-8")
            code = await edge.wait_exit()
        finally:
            await edge.kill()

        assert code == 78, edge.tail()
        assert "cannot listen on 100.104.58.51" in "\n".join(edge.lines)
        task = await dbtasks.get_task(tables, task_id)
        assert task is not None
        assert task.state == "queued"
        assert [outcome for _, _, outcome in await attempts(tables, task_id)] == ["released"]


class TestNodeName:
    async def test_a_second_daemon_under_a_live_name_exits_78_naming_the_holder(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A daemon started under a running one's node name refuses to start (exit 78, naming
        the holder) and takes nothing: the running task's steps run once, in one attempt."""
        gate = tmp_path / "gate"
        async with daemon.running(database_dsn, tmp_path, name="first", node="n1") as first:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            second = await daemon.cli(
                "run",
                folder=tmp_path,
                dsn=database_dsn,
                overrides={
                    "engine.node_name": "n1",
                    "health.port": 0,
                    "health.host": "127.0.0.1",
                    "outbox.sinks": ["file"],
                    "outbox.file_path": str(tmp_path / "second.jsonl"),
                },
                timeout=daemon.READY_SECONDS,
            )
            gate.touch()
            [task] = await wait_for_states(tables, [task_id], daemons=[first])

        assert second.code == 78, second.stderr
        assert f"'n1' is held by pid {first.process.pid} on host {socket.gethostname()}" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        assert task.state == "succeeded", task.error
        assert await step_runs(tables, task_id) == {"one": [1], "two": [1], "three": [1]}
        assert await attempts(tables, task_id) == [(1, "n1", "succeeded")]


class TestCrashLoop:
    @pytest.mark.timeout(240)
    async def test_a_task_that_kills_its_daemon_every_time_fails_at_max_crashes(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Restarted after each kill its task makes, the daemon fails that task at its third
        crash with the reason, and `task show` gives both counts (text and --json)."""
        config = settings.EngineSettings(node_name="test", max_attempts=3, max_crashes=3)
        answer = await submission.submit(
            tables,
            registry.registry,
            config,
            tenant_id="default",
            workflow=workflows.KILLS_WORKER,
            task_input={},
            actor="test",
        )
        task_id = answer.task_id

        async def state() -> str:
            task = await dbtasks.get_task(tables, task_id)
            assert task is not None
            return task.state

        starts = 0
        while starts < 6 and await state() != "failed":
            starts += 1
            process = await daemon.spawn(database_dsn, tmp_path, name=f"d{starts}", node="n1")

            async def ended_or_dead(process: daemon.Daemon = process) -> bool:
                return process.exited or await state() == "failed"

            await daemon.wait_until(ended_or_dead, what="the task to fail or kill the daemon")
            await process.kill()
        failed = await dbtasks.get_task(tables, task_id)
        shown = await daemon.cli("task", "show", str(task_id), folder=tmp_path, dsn=database_dsn)
        as_json = await daemon.cli(
            "task", "show", str(task_id), "--json", folder=tmp_path, dsn=database_dsn
        )

        assert failed is not None
        assert (failed.state, failed.crashes, starts) == ("failed", 3, 4)
        assert failed.error is not None
        assert "lost 3 times" in failed.error
        assert "max_crashes" in failed.error
        assert [outcome for _, _, outcome in await attempts(tables, task_id)] == [
            "node_restarted"
        ] * 3
        assert shown.code == 0, shown.stderr
        lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if " " in line)
        assert (lines.get("crashes"), lines.get("max_crashes")) == ("3", "3")
        assert as_json.code == 0, as_json.stderr
        assert (as_json.json()["crashes"], as_json.json()["max_crashes"]) == (3, 3)


class TestHealth:
    async def test_a_ready_daemon_is_alive_and_ready(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """/healthz and /readyz both answer 200 once the daemon has logged daemon.ready."""
        async with daemon.running(database_dsn, tmp_path) as running:
            assert await running.get("/healthz") == (200, {"status": "alive"})
            assert await running.get("/readyz") == (200, {"status": "ready"})


class TestOutbox:
    async def test_the_file_sink_receives_a_tasks_events_in_order(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """submitted, started, three step.completed, succeeded: in order, each id once."""
        events_file = tmp_path / "events.jsonl"
        async with daemon.running(database_dsn, tmp_path) as running:
            task_id = await submit(tables, workflows.COUNTED, {})
            mine = await wait_for_shipped(events_file, task_id, "task.succeeded", daemons=[running])

        assert [m["type"] for m in mine] == [
            "task.submitted",
            "task.started",
            "step.completed",
            "step.completed",
            "step.completed",
            "task.succeeded",
        ]
        assert [m["payload"].get("step") for m in mine[2:5]] == list(workflows.STEPS)
        ids = [m["id"] for m in shipped(events_file)]
        assert len(ids) == len(set(ids))
        assert [m["seq"] for m in mine] == sorted(m["seq"] for m in mine)

    async def test_every_event_is_delivered_across_a_kill_and_restart(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """After kill -9 and restart: all events shipped, repeats keep their id, order holds."""
        events_file = tmp_path / "events.jsonl"
        gate = tmp_path / "gate"
        async with daemon.running(database_dsn, tmp_path, name="first") as first:
            task_id = await submit(tables, workflows.COUNTED, {"gate": str(gate)})
            await wait_for_step(tables, task_id, "two", attempt=1, daemons=[first])
            await first.kill()
        async with daemon.running(database_dsn, tmp_path, name="second") as second:
            gate.touch()
            await wait_for_shipped(events_file, task_id, "task.succeeded", daemons=[second])

            async def all_delivered() -> bool:
                pending: int = await tables.fetchval(
                    "SELECT count(*) FROM appliance.outbox_events WHERE delivered_at IS NULL"
                )
                return pending == 0

            await daemon.wait_until(all_delivered, what="no undelivered event", daemons=[second])

        written = await tables.fetch(
            "SELECT event_id::text AS id, type FROM appliance.outbox_events "
            "WHERE task_id = $1 ORDER BY event_seq",
            task_id,
        )
        messages = [m for m in shipped(events_file) if m["task_id"] == task_id]
        by_id: dict[str, dict[str, Any]] = {}
        first_seen: list[str] = []
        for message in messages:
            if message["id"] in by_id:
                assert message == by_id[message["id"]], "a repeat differs from the first copy"
            else:
                by_id[message["id"]] = message
                first_seen.append(message["id"])
        assert first_seen == [row["id"] for row in written]
        assert "task.requeued" in [row["type"] for row in written]
        last_seen = list(dict.fromkeys(reversed([m["id"] for m in messages])))[::-1]
        assert last_seen == first_seen, "a redelivery reordered the task's events"


class TestFailure:
    async def test_a_failed_task_runs_again_after_task_retry(
        self, tables: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """`appliance task retry` gives a failed task one more attempt, and the daemon runs it."""
        async with daemon.running(database_dsn, tmp_path) as running:
            task_id = await submit(tables, workflows.FAILS, {})
            [failed] = await wait_for_states(tables, [task_id], daemons=[running])
            assert failed.state == "failed"
            assert failed.error is not None
            assert "test.fails always fails" in failed.error
            retried = await daemon.cli(
                "task",
                "retry",
                str(task_id),
                folder=tmp_path,
                dsn=database_dsn,
                overrides={"engine.max_attempts": 1},
            )
            assert retried.code == 0, retried.stderr

            async def second_attempt_ended() -> bool:
                rows = await attempts(tables, task_id)
                return len(rows) == 2 and rows[1][2] != "running"

            await daemon.wait_until(
                second_attempt_ended, what="the retried attempt to end", daemons=[running]
            )

        assert [outcome for _, _, outcome in await attempts(tables, task_id)] == [
            "failed",
            "failed",
        ]


class TestPostgresRestart:
    async def test_the_daemon_rides_out_a_postgres_restart(
        self, cluster_database: tuple[EmbeddedPostgres, str], tmp_path: Path
    ) -> None:
        """Readiness follows Postgres down and up, one log line per outage, no task is lost."""
        cluster, dsn = cluster_database
        conn = await asyncpg.connect(dsn)
        try:
            before = [await submit(conn, workflows.SLEEPY, {"seconds": 1.0}) for _ in range(3)]
        finally:
            await conn.close()
        async with daemon.running(dsn, tmp_path) as running:
            await self._wait_running(dsn, before, running)
            assert await running.get("/readyz") == (200, {"status": "ready"})

            await cluster.stop()
            stopped = asyncio.get_running_loop().time()
            _, body = await daemon.wait_until(
                lambda: self._readyz(running, 503), what="/readyz 503", daemons=[running]
            )
            assert asyncio.get_running_loop().time() - stopped < 1.5
            assert any(reason.startswith("database") for reason in body["reasons"])
            # The outage lasts a while on purpose: the daemon retries many times meanwhile.
            await asyncio.sleep(1.5)
            assert running.count("db.unavailable") == 1

            await cluster.start()
            started = asyncio.get_running_loop().time()
            await daemon.wait_until(
                lambda: self._readyz(running, 200), what="/readyz 200 again", daemons=[running]
            )
            assert asyncio.get_running_loop().time() - started < 2.0
            conn = await asyncpg.connect(dsn)
            try:
                after = [await submit(conn, workflows.COUNTED, {}) for _ in range(3)]
                done = await wait_for_states(conn, before + after, daemons=[running], timeout=30)
            finally:
                await conn.close()

        assert running.count("db.unavailable") == 1
        assert running.count("db.recovered") == 1
        assert {t.task_id: t.state for t in done} == dict.fromkeys(before + after, "succeeded")

    @pytest.mark.timeout(180)
    async def test_an_outage_is_logged_once_without_a_traceback(
        self, cluster_database: tuple[EmbeddedPostgres, str], tmp_path: Path
    ) -> None:
        """While Postgres is away the log has one line for the outage and none with a
        traceback, however often the daemon retries; one line for the recovery."""
        cluster, dsn = cluster_database
        async with daemon.running(dsn, tmp_path) as running:
            before = len(running.records)
            await cluster.stop()
            await running.wait_for_log("db.unavailable")
            # The outage lasts a while on purpose: every part of the daemon retries meanwhile.
            await asyncio.sleep(4.0)
            await cluster.start()
            await running.wait_for_log("db.recovered", timeout=30)
            during = running.records[before:]

        assert [r for r in during if "exc" in r] == []
        assert [r["msg"] for r in during if str(r.get("logger", "")).startswith("asyncpg")] == []
        assert running.count("db.unavailable") == 1
        assert running.count("db.recovered") == 1

    @staticmethod
    async def _readyz(running: daemon.Daemon, status: int) -> tuple[int, Any] | None:
        answer = await running.get("/readyz")
        return answer if answer[0] == status else None

    @staticmethod
    async def _wait_running(dsn: str, task_ids: list[int], running: daemon.Daemon) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await wait_for_states(conn, task_ids, {"running"}, daemons=[running])
        finally:
            await conn.close()
