"""A node name has one live holder: against the real Postgres, with holders in this process and
in processes of their own that the tests kill and freeze."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance import models
from appliance.db import nodes as dbnodes
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, nodes, registry, worker
from tests.support import engine as support
from tests.support.daemon import ROOT

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

LEASE_SECONDS = 1.5  # a holder beats every 0.5 s; a silent one's session ends after 1.5 s


@contextlib.asynccontextmanager
async def holder_process(dsn: str, node: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding `node`, once it says so; killed afterwards if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.node_holder",
        dsn,
        node,
        str(LEASE_SECONDS),
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(support.WAIT_SECONDS):
            line = await process.stdout.readline()
        assert line.startswith(b"held "), line
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
        await process.wait()


async def holder_of(db: dbpool.Pool, node: str) -> models.Node:
    found = await dbnodes.get_node(db, node)
    assert found is not None
    return found


def gated(reg: registry.Registry, calls: collections.Counter[str], gate: asyncio.Event) -> None:
    """Register `gated`: one counted step that waits for the gate."""

    async def hold() -> str:
        calls["hold"] += 1
        await gate.wait()
        return "done"

    @reg.workflow("gated")
    async def run(ctx: context.TaskContext, task_input: Any) -> Any:
        return await ctx.step("hold", hold)


class TestHeldName:
    async def test_a_live_holders_name_is_refused_naming_the_holder(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A second hold of a name a live process holds fails, naming its pid, host and age."""
        async with nodes.held(database_dsn, "n-held", lease_seconds=LEASE_SECONDS):
            with pytest.raises(nodes.NodeNameHeldError) as refused:
                async with nodes.held(database_dsn, "n-held", lease_seconds=LEASE_SECONDS):
                    pass

        message = str(refused.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "last heartbeat" in message
        assert "engine.node_name" in message
        assert refused.value.exit_code == 78

    async def test_a_second_worker_under_a_live_name_takes_nothing_back(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A worker started under the name of a running one refuses; the task runs on, once."""
        calls: collections.Counter[str] = collections.Counter()
        gate = asyncio.Event()
        reg = registry.Registry()
        gated(reg, calls, gate)
        cfg = support.engine_settings(node_name="n1", lease_seconds=LEASE_SECONDS)
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, task_id, {"running"}, workers=[w])
            second = worker.Worker(db, database_dsn, cfg, reg)
            with pytest.raises(nodes.NodeNameHeldError, match="'n1' is held by pid"):
                await second.run()
            assert await support.outcomes(db, task_id) == ["running"]
            gate.set()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts) == ("succeeded", 1)
        assert calls == {"hold": 1}

    async def test_a_killed_holders_name_is_taken_at_once(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Once its holder is killed (-9), the name is taken without waiting out the holder."""
        async with holder_process(database_dsn, "n-killed") as process:
            process.kill()
            await process.wait()
            loop = asyncio.get_running_loop()
            asked = loop.time()
            async with nodes.held(database_dsn, "n-killed", lease_seconds=LEASE_SECONDS):
                took = loop.time() - asked
                assert (await holder_of(db, "n-killed")).pid == os.getpid()

        assert took < LEASE_SECONDS  # the killed process's session ended with it

    async def test_a_frozen_holders_name_is_free_after_its_lease(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A holder that stops answering (SIGSTOP) loses the name when its session times out."""
        async with holder_process(database_dsn, "n-frozen") as process:
            process.send_signal(signal.SIGSTOP)
            async with nodes.held(database_dsn, "n-frozen", lease_seconds=LEASE_SECONDS):
                assert (await holder_of(db, "n-frozen")).pid == os.getpid()
                process.send_signal(signal.SIGCONT)
                assert process.stderr is not None
                async with asyncio.timeout(support.WAIT_SECONDS):
                    code = await process.wait()
                    said = (await process.stderr.read()).decode()

        assert code == 78  # thawed, it finds its name taken and stops
        assert f"pid {os.getpid()}" in said


NODE_CLASS = dbnodes._NODE_LOCK_CLASS
TAKE_OVER = """
DO $$
BEGIN
    PERFORM pg_terminate_backend({backend});
    FOR i IN 1..20000 LOOP
        EXIT WHEN pg_try_advisory_lock({node_class}, hashtext('n1'));
        PERFORM pg_sleep(0.0005);
    END LOOP;
END $$
"""


class TestHolderConnection:
    async def test_a_holder_whose_session_ends_takes_its_name_back(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """When the holder's session is terminated, it holds the name again in a new one."""
        async with nodes.held(database_dsn, "n-blip", lease_seconds=LEASE_SECONDS) as hold:
            before = await holder_of(db, "n-blip")
            await db.execute("SELECT pg_terminate_backend($1)", before.backend_pid)

            async def held_again() -> models.Node | None:
                now = await holder_of(db, "n-blip")
                return now if now.backend_pid != before.backend_pid and hold.held else None

            after = await support.wait_until(held_again, what="the name to be held again")

        assert after.pid == before.pid
        assert not hold.lost.is_set()

    async def test_a_worker_whose_name_was_taken_meanwhile_stops_at_once(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A worker that lost its session and then its name cancels its tasks and says why."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()
        gated(reg, calls, asyncio.Event())
        cfg = support.engine_settings(node_name="n1", lease_seconds=LEASE_SECONDS)
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        first = worker.Worker(db, database_dsn, cfg, reg)
        run = asyncio.create_task(first.run())
        try:
            await support.wait_for_state(db, task_id, {"running"})
            session = (await holder_of(db, "n1")).backend_pid
            # Another process takes the name the moment the session ends, spinning on the lock
            # server-side: before the first one, which must connect anew, can.
            taker = await dbpool.connect(database_dsn)
            try:
                await taker.execute(TAKE_OVER.format(backend=int(session), node_class=NODE_CLASS))
                new_pid = os.getpid() + 1
                assert (
                    await dbnodes.hold_node(taker, node="n1", pid=new_pid, host="new") is not None
                )
                # what a new process under the name does first: take its node's tasks back
                requeued = await dbtasks.requeue_abandoned(db, node="n1", actor="n1:new")
                with pytest.raises(nodes.NodeNameHeldError, match="lost its node name"):
                    async with asyncio.timeout(support.WAIT_SECONDS):
                        await run
                assert first.active == 0
            finally:
                await taker.close()
        finally:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run

        # The task went back to the queue once: taken back by the new holder, or released by
        # the old one as it stopped (whichever came first).
        expected = ["node_restarted"] if requeued else ["released"]
        assert await support.outcomes(db, task_id) == expected
        assert calls == {"hold": 1}
