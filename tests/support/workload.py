"""A small workload in the database, made through the real code paths, for what `/metrics`
reports: tasks in every state (run by a real worker, so steps and durations exist), a lease
takeover and a crash recovery, model calls with every token category, a monthly budget, an
approval waiting, undelivered outbox events and an outgoing webhook's waiting deliveries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from appliance import approvals
from appliance.agents import costs
from appliance.db import outbox as dboutbox
from appliance.db import outgoing_webhooks as dbwebhooks
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine

STEPS = "metrics.steps"  # two steps, then done
FAILS = "metrics.fails"  # fails at once
PARKED = "metrics.parked"  # no worker here runs it: its tasks stay queued

workflows = registry.Registry()


@workflows.workflow(STEPS)
async def two_steps(ctx: context.TaskContext, task_input: Any) -> Any:
    first = await ctx.step("first", _value, 1)
    return await ctx.step("second", _value, first + 1)


async def _value(value: int) -> int:
    return value


@workflows.workflow(FAILS)
async def fails(ctx: context.TaskContext, task_input: Any) -> Any:
    raise ValueError("this workflow always fails")


@workflows.workflow(PARKED)
async def parked(ctx: context.TaskContext, task_input: Any) -> Any:
    return None


@dataclasses.dataclass(frozen=True)
class Workload:
    """What was made: the tasks run to their end (`ran`: those of STEPS), and a few others."""

    ended: tuple[int, ...]
    ran: tuple[int, ...]
    delayed: int
    cancelled: int
    awaiting_approval: int


async def make(pool: dbpool.Pool, dsn: str) -> Workload:
    """The workload, on the tenants acme and globex (the `db` fixture's)."""
    config = engine.engine_settings()
    ended = [
        await engine.submit(pool, workflows, config, workflow=STEPS, tenant_id="acme"),
        await engine.submit(pool, workflows, config, workflow=STEPS, tenant_id="acme"),
        await engine.submit(pool, workflows, config, workflow=STEPS, tenant_id="globex"),
        await engine.submit(pool, workflows, config, workflow=FAILS, max_attempts=1),
    ]
    runnable = workflows.without([PARKED])
    async with engine.running_worker(pool, dsn, config, runnable) as running:
        await engine.wait_for_all(pool, ended, workers=[running])
    await _lost_attempts(pool, config)
    delayed = await engine.submit(
        pool,
        workflows,
        config,
        workflow=PARKED,
        tenant_id="globex",
        run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    cancelled = await engine.submit(pool, workflows, config, workflow=PARKED, tenant_id="acme")
    await dbtasks.cancel_task(pool, task_id=cancelled, actor="test")
    waiting = await engine.submit(pool, workflows, config, workflow=PARKED, tenant_id="acme")
    await approvals.request(
        pool,
        tenant_id="acme",
        task_id=waiting,
        step_key="tool:1:refund",
        tool="refund",
        action_class="financial",
        arguments={"amount": 10},
        reason="refunds need a person",
        policy_version=1,
        approvers=1,
        timeout=dt.timedelta(hours=1),
    )
    await _calls(pool, ended[0])
    await costs.set_budget(
        pool, tenant_id="acme", scope="month", usd_limit=Decimal("5"), actor="test"
    )
    events = await dboutbox.list_events_after(pool, seq=0, limit=2)
    await dbwebhooks.enqueue_deliveries(
        pool, endpoints=["ops"] * len(events), event_seqs=[e.seq for e in events]
    )
    return Workload(tuple(ended), tuple(ended[:3]), delayed, cancelled, waiting)


async def _lost_attempts(pool: dbpool.Pool, config: Any) -> None:
    """A task claimed by a worker that dies (its lease expires: taken over), then claimed under
    a node that restarts (taken back); it is ready again afterwards."""
    await engine.submit(pool, workflows, config, workflow=PARKED, tenant_id="acme")
    await engine.fake_claim(
        pool, workflows, worker_id=f"dead:{uuid.uuid4().hex[:6]}", node="gone", lease_seconds=0.001
    )

    async def expired() -> bool:
        return await dbtasks.requeue_abandoned(pool, actor="test") > 0

    await engine.wait_until(expired, what="the dead worker's lease to expire")
    await engine.fake_claim(
        pool, workflows, worker_id="crashed:1", node="restarted", lease_seconds=60
    )
    await dbtasks.requeue_abandoned(pool, node="restarted", actor="restarted:2")


async def _calls(pool: dbpool.Pool, task_id: int) -> None:
    """Model calls of acme (cache written, then read, by an agent) and globex (no agent)."""
    for usage in (
        costs.Usage(
            input_tokens=1_000,
            cache_creation_input_tokens=2_000,
            cache_write_5m_tokens=2_000,
            output_tokens=500,
        ),
        costs.Usage(input_tokens=1_000, cache_read_input_tokens=2_000, output_tokens=500),
    ):
        await _call(pool, usage, tenant_id="acme", task_id=task_id, agent="writer")
    await _call(
        pool,
        costs.Usage(input_tokens=10_000, output_tokens=1_000),
        tenant_id="globex",
        task_id=None,
        agent=None,
        model="claude-haiku-4-5",
    )


async def _call(
    pool: dbpool.Pool,
    usage: costs.Usage,
    *,
    tenant_id: str,
    task_id: int | None,
    agent: str | None,
    model: str = "claude-sonnet-4-5",
) -> None:
    await costs.record_call(
        pool,
        tenant_id=tenant_id,
        task_id=task_id,
        position=0 if task_id is not None else None,
        agent=agent,
        agent_version=1 if agent is not None else None,
        model=model,
        request_id=f"req_{uuid.uuid4().hex}",
        latency_ms=120.0,
        usage=usage,
        cache_note=None,
    )
