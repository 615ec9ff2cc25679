"""This engine as an adapter of the peers harness (`../shared/bench/peers/durable_bench.py`).

    P=/somewhere/.venv-peers/bin/python; H=../shared/bench/peers
    $P $H/durable_bench.py run --start-postgres --port 5433 --repeats 3 \\
       --systems floor-step-c8,floor-wf1-c8,ref-naive,dbos,pgqueuer,procrastinate \\
       --adapter bench/peers.py:Engine

The harness loads this file and makes itself importable as `durable_bench` first (its README
says how to set up the virtualenv). Workload W's workflow is a registered workflow of three
`ctx.step`s whose bodies are the harness's no-op `step_body`; tasks are submitted one at a
time through `submission.submit` and run by one `worker.Worker` with the harness's
concurrency, as the daemon runs them: each step's checkpoint, audit entry and outbox event
commit together before the next step starts, and the third step's commit is the one that
ends the task. The outbox relay does not run (the events stay pending, as with a relay that
is behind), so the figures are the engine's alone.

The third step is durable when the task's final commit is: the worker's `on_finished` tells
the harness then. Terminal state is read from `appliance.tasks` over a connection of the
harness's own, as it reads every peer's tables. In the crash scenario the second process
starts a worker under the same node name, which takes back the killed node's tasks at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import durable_bench

from appliance import settings
from appliance.db import migrations, tenants
from appliance.db import pool as dbpool
from appliance.engine import context, registry, submission, worker

WORKFLOW = "bench.w3"
TENANT = "default"
NODE = "bench-peers"

# The harness's probes of terminal state (its view of this engine's tables, not the engine's).
_DONE_BY_IDS = """SELECT count(*) FROM appliance.tasks
                   WHERE task_id = ANY ($1::bigint[]) AND state = 'succeeded'"""
_DONE_BY_KEYS = """SELECT count(*) FROM appliance.tasks
                    WHERE tenant_id = $2 AND input ->> 'key' = ANY ($1::text[])
                      AND state = 'succeeded'"""
_STEPS_OF = "SELECT count(*) FROM appliance.steps WHERE task_id = ANY ($1::bigint[])"


async def _step(number: int, key: str) -> Any:
    output = durable_bench.step_body(number, key)
    await durable_bench.block_async(number)
    return output


class Engine(durable_bench.Adapter):  # type: ignore[misc]  # the harness is untyped
    """Workload W on this engine: submit, claim, three checkpointed steps, finish."""

    name = "appliance"
    step_model = (
        "submit 1 commit (+audit entry, event, NOTIFY); claim 1 commit (+attempt, audit "
        "entry, event); steps 1-2: 1 commit each (checkpoint + audit entry + event); "
        "step 3 + end + next claim: 1 commit"
    )
    notes = "appliance worker (one process, no outbox relay), tenant share = concurrency"

    async def setup(self) -> None:
        """Migrate a fresh database (not when resuming), start a worker of `concurrency`."""
        self.keys: dict[int, str] = {}  # task id -> the harness's key, filled by the workflow
        self.workflows = registry.Registry()

        @self.workflows.workflow(WORKFLOW)
        async def three_steps(ctx: context.TaskContext, task_input: Any) -> Any:
            key = task_input["key"]
            self.keys[ctx.task_id] = key
            total = 0
            for number in (1, 2, 3):
                output = await ctx.step(f"s{number}", _step, number, key)
                total += output["s"]
            return total

        self.config = settings.EngineSettings(
            node_name=NODE,
            concurrency=self.concurrency,
            tenant_concurrency=self.concurrency,
        )
        self.pool = await dbpool.create_pool(
            self.dsn, min_size=2, max_size=self.concurrency + self.producers + 4
        )
        if not self.resume:
            async with self.pool.acquire() as conn:
                await migrations.migrate(conn)
            await tenants.create_tenant(self.pool, tenant_id=TENANT, name=TENANT, actor="bench")
        self.mon = await dbpool.connect(self.dsn)
        self.worker = worker.Worker(
            self.pool, self.dsn, self.config, self.workflows, on_finished=self._finished
        )
        self.running = asyncio.create_task(self.worker.run())
        await self.worker.started.wait()

    def _finished(self, task_id: int, outcome: str) -> None:
        """After a task's final commit: its third step is durable."""
        key = self.keys.pop(task_id, None)
        if key is not None and outcome == "succeeded":
            durable_bench.TRACKER.mark(key)

    async def enqueue(self, key: str) -> int:
        """Submit one task, as any caller of the engine does; its id is the handle."""
        submitted = await submission.submit(
            self.pool,
            self.workflows,
            self.config,
            tenant_id=TENANT,
            workflow=WORKFLOW,
            task_input={"key": key},
            actor="bench",
        )
        return submitted.task_id

    async def all_terminal(self, handles: Sequence[int]) -> bool:
        done: int = await self.mon.fetchval(_DONE_BY_IDS, list(handles))
        return done == len(handles)

    async def terminal_by_keys(self, keys: Sequence[str]) -> bool:
        done: int = await self.mon.fetchval(_DONE_BY_KEYS, list(keys), TENANT)
        return done == len(keys)

    async def verify(self, handles: Sequence[int]) -> dict[str, int]:
        rows: int = await self.mon.fetchval(_STEPS_OF, list(handles))
        return {"step_rows": rows}

    async def teardown(self) -> None:
        await self.worker.stop(grace=5.0)
        await self.running
        await self.mon.close()
        await self.pool.close()
