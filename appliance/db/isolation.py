"""Query wrappers of `sql/isolation.sql`: leases, and the audit entries around a tool's write.

The rows become the frozen models below, here and nowhere else. A lease row never holds the
secret: `appliance.leases` reads the value from the vault when a lease is redeemed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

from appliance import errors
from appliance.db import pool, sql

_Q = sql.load("isolation")


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A lease just granted: its id and when it expires."""

    lease_id: uuid.UUID
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRow:
    """A lease as stored, to explain why it cannot be redeemed."""

    lease_id: uuid.UUID
    tenant_id: str
    task_id: int
    step_key: str
    workflow: str
    integration: str
    name: str
    granted_at: dt.datetime
    expires_at: dt.datetime
    redeemed_at: dt.datetime | None
    now: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ToolEntry:
    """An audit entry of a tool call (`tool.intent`, `tool.result`, ...)."""

    seq: int
    action: str
    detail: dict[str, Any]
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSummary:
    """What a tool process may learn of a task of its own tenant."""

    task_id: int
    tenant_id: str
    workflow: str
    state: str
    created_at: dt.datetime


async def append_task_audit(
    conn: pool.Connection | pool.Pool,
    *,
    task_id: int,
    worker: str,
    attempt: int,
    action: str,
    detail: dict[str, Any],
) -> int:
    """Commit an entry in the task's chain as its lease holder; LeaseLostError when not held."""
    with pool.translated():
        seq = await conn.fetchval(
            _Q["append_task_audit"], task_id, worker, attempt, action, json.dumps(detail)
        )
    if seq is None:
        raise errors.LeaseLostError(
            f"task {task_id}: worker {worker} (attempt {attempt}) no longer holds the task; "
            f"the {action} entry was not written"
        )
    return int(seq)


async def find_tool_entries(
    conn: pool.Connection | pool.Pool, *, task_id: int, idempotency_key: str
) -> list[ToolEntry]:
    """The tool entries of one call of a task, oldest first."""
    with pool.translated():
        rows = await conn.fetch(_Q["find_tool_entries"], task_id, idempotency_key)
    return [
        ToolEntry(r["seq"], r["action"], json.loads(r["detail"]), r["created_at"]) for r in rows
    ]


async def grant_lease(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int,
    step_key: str,
    workflow: str,
    integration: str,
    name: str,
    worker: str,
    attempt: int,
    ttl_seconds: float,
) -> Grant:
    """Record an audited lease; LeaseLostError when the worker no longer holds the task."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["grant_lease"],
            tenant_id,
            task_id,
            step_key,
            workflow,
            integration,
            name,
            worker,
            attempt,
            ttl_seconds,
        )
    if row is None:
        raise errors.LeaseLostError(
            f"task {task_id} is not held by worker {worker} (attempt {attempt}): no lease granted"
        )
    return Grant(row["lease_id"], row["expires_at"])


async def redeem_lease(
    conn: pool.Connection | pool.Pool,
    *,
    lease_id: uuid.UUID,
    tenant_id: str,
    task_id: int,
    step_key: str,
    workflow: str,
) -> tuple[str, str] | None:
    """(integration, name) of the lease, now spent; None when it cannot be redeemed here."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["redeem_lease"], lease_id, tenant_id, task_id, step_key, workflow
        )
    return None if row is None else (row["integration"], row["name"])


async def get_lease(conn: pool.Connection | pool.Pool, lease_id: uuid.UUID) -> LeaseRow | None:
    """One lease, or None."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_lease"], lease_id)
    return None if row is None else LeaseRow(**pool.record_dict(row))


async def get_task_summary(conn: pool.Connection, *, task_id: int) -> TaskSummary | None:
    """A task, or None; in a `tenancy.tenant_transaction`, another tenant's task is None too."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_task_summary"], task_id)
    return None if row is None else TaskSummary(**pool.record_dict(row))


async def get_task_spend(
    conn: pool.Connection | pool.Pool, *, task_id: int, tenant_id: str
) -> decimal.Decimal:
    """The task's model spend so far, in USD."""
    with pool.translated():
        spent = await conn.fetchval(_Q["get_task_spend"], task_id, tenant_id)
    return decimal.Decimal(spent or 0)
