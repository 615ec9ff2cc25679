"""Query wrappers of `sql/console.sql`: what the console's pages show beyond the API's reads.

A task's model calls, secret leases, webhook delivery and chain verification (its timeline),
the load of nodes and hours (the workforce page), and the ledger's cells (the cost page).
All reads; the rows become the frozen models below, here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from appliance.db import pool, sql

_Q = sql.load("console")


@dataclasses.dataclass(frozen=True, slots=True)
class TaskModelCall:
    """One model call of a task: when, how long, its usage counters and cost."""

    call_id: int
    position: int | None
    agent: str | None
    agent_version: int | None
    model: str
    started_at: dt.datetime
    latency_ms: float
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    uncached_cost_usd: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class TaskLease:
    """A secret lease granted to a step of a task (the value is never stored)."""

    step_key: str
    integration: str
    name: str
    granted_at: dt.datetime
    expires_at: dt.datetime
    redeemed_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class TaskDelivery:
    """The webhook delivery that started a task."""

    source: str
    delivery_id: str
    received_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TaskChain:
    """A task's audit chain: its length and its first entry that does not verify, if any."""

    entries: int
    broken_seq: int | None
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class CostCell:
    """The ledger summed for one tenant, agent version, model and UTC day."""

    tenant_id: str
    agent: str | None
    agent_version: int | None
    model: str
    day: dt.date
    calls: int
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    uncached_cost_usd: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class NodeLoad:
    node: str
    tasks_held: int
    takeovers: int


@dataclasses.dataclass(frozen=True, slots=True)
class HourLoad:
    hour: dt.datetime
    attempts: int
    busy_seconds: float
    ended: int


async def list_task_model_calls(
    conn: pool.Connection | pool.Pool, task_id: int
) -> list[TaskModelCall]:
    with pool.translated():
        rows = await conn.fetch(_Q["list_task_model_calls"], task_id)
    return [TaskModelCall(**pool.record_dict(row)) for row in rows]


async def list_task_leases(conn: pool.Connection | pool.Pool, task_id: int) -> list[TaskLease]:
    with pool.translated():
        rows = await conn.fetch(_Q["list_task_leases"], task_id)
    return [TaskLease(**pool.record_dict(row)) for row in rows]


async def get_task_delivery(conn: pool.Connection | pool.Pool, task_id: int) -> TaskDelivery | None:
    with pool.translated():
        row = await conn.fetchrow(_Q["get_task_delivery"], task_id)
    return None if row is None else TaskDelivery(**pool.record_dict(row))


async def find_task_chain_breaks(conn: pool.Connection | pool.Pool, task_id: int) -> TaskChain:
    """The task's chain verified: how many entries, and the first broken one."""
    with pool.translated():
        row = await conn.fetchrow(_Q["find_task_chain_breaks"], task_id)
    if row is None:
        return TaskChain(entries=0, broken_seq=None, reason=None)
    broken = row["reason"] is not None
    return TaskChain(
        entries=row["entries"],
        broken_seq=row["seq"] if broken else None,
        reason=row["reason"],
    )


async def count_node_load(
    conn: pool.Connection | pool.Pool, *, since: dt.datetime
) -> list[NodeLoad]:
    with pool.translated():
        rows = await conn.fetch(_Q["count_node_load"], since)
    return [NodeLoad(**pool.record_dict(row)) for row in rows]


async def list_hourly_load(
    conn: pool.Connection | pool.Pool, tenants: Sequence[str], *, since: dt.datetime
) -> list[HourLoad]:
    with pool.translated():
        rows = await conn.fetch(_Q["list_hourly_load"], list(tenants), since)
    return [HourLoad(**pool.record_dict(row)) for row in rows]


async def report_cost_cells(
    conn: pool.Connection | pool.Pool, tenants: Sequence[str], *, since: dt.date
) -> list[CostCell]:
    with pool.translated():
        rows = await conn.fetch(_Q["report_cost_cells"], list(tenants), since)
    return [CostCell(**pool.record_dict(row)) for row in rows]
