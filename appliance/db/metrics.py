"""Query wrappers of `sql/metrics.sql`: what `/metrics` reports from the database.

One statement, so one round trip and one snapshot: the counts agree with one another. Its rows
become the frozen `Snapshot` below, here and nowhere else; `appliance.metrics` names them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from appliance import errors
from appliance.db import pool, sql

_Q = sql.load("metrics")


@dataclasses.dataclass(frozen=True, slots=True)
class TaskCount:
    """Tasks of one tenant, workflow and state; for ended tasks, those whose durations fall in
    one bucket (`bucket` bounds lie below them; None: no duration, not ended or never run)."""

    tenant_id: str
    workflow: str
    state: str
    bucket: int | None
    tasks: int
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks of one tenant and workflow ready to run now, and the oldest one's wait."""

    tenant_id: str
    workflow: str
    tasks: int
    oldest_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptCounts:
    """A tenant's attempts: every claim, the lease takeovers and the crash recoveries."""

    tenant_id: str
    claims: int
    takeovers: int
    recoveries: int


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """Undelivered outbox events, those that failed at least once, the oldest one's age."""

    pending: int
    failing: int
    oldest_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class CallTotals:
    """The ledger of one tenant, agent ('' outside an agent) and model: calls, tokens by
    category, cost and realised cache saving."""

    tenant_id: str
    agent: str
    model: str
    calls: int
    input_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    output_tokens: int
    cost_usd: Decimal
    saving_usd: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class MonthBudget:
    """A tenant's monthly budget and this UTC month's spend."""

    tenant_id: str
    usd_limit: Decimal
    spent_usd: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class PendingApprovals:
    """A tenant's approval requests waiting for people, and the oldest one's wait."""

    tenant_id: str
    pending: int
    oldest_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookBacklog:
    """An outgoing webhook endpoint's deliveries not made yet, those that failed at least
    once, the oldest one's age."""

    endpoint: str
    pending: int
    failing: int
    oldest_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `/metrics` reports from the database, read in one statement."""

    tasks: tuple[TaskCount, ...]
    queue: tuple[QueueDepth, ...]
    attempts: tuple[AttemptCounts, ...]
    outbox: OutboxBacklog
    calls: tuple[CallTotals, ...]
    budgets: tuple[MonthBudget, ...]
    approvals: tuple[PendingApprovals, ...]
    webhooks: tuple[WebhookBacklog, ...]


async def read_metrics(
    executor: pool.Pool, *, duration_bounds: Sequence[float], timeout: float
) -> Snapshot:
    """The snapshot; DatabaseUnavailableError when Postgres does not answer within `timeout`
    seconds (a connection and the query together)."""
    with pool.translated():
        async with asyncio.timeout(timeout), executor.acquire() as conn:
            row = await conn.fetchrow(_Q["read_metrics"], list(duration_bounds))
    if row is None:  # a SELECT of subqueries without FROM answers one row, always
        raise errors.ApplianceError("read_metrics returned no row")
    return Snapshot(
        tasks=tuple(TaskCount(**item) for item in row["tasks"]),
        queue=tuple(QueueDepth(**item) for item in row["queue"]),
        attempts=tuple(AttemptCounts(**item) for item in row["attempts"]),
        outbox=OutboxBacklog(**row["outbox"]),
        calls=tuple(_calls(item) for item in row["calls"]),
        budgets=tuple(
            MonthBudget(item["tenant_id"], Decimal(item["usd_limit"]), Decimal(item["spent_usd"]))
            for item in row["budgets"]
        ),
        approvals=tuple(PendingApprovals(**item) for item in row["approvals"]),
        webhooks=tuple(WebhookBacklog(**item) for item in row["webhooks"]),
    )


def _calls(item: Mapping[str, Any]) -> CallTotals:
    money = {key: Decimal(item[key]) for key in ("cost_usd", "saving_usd")}
    return CallTotals(**{**item, **money})
