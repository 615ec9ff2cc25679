"""Query wrappers of `sql/costs.sql`: model prices, the ledger of model calls, and budgets.

The rows of those tables become the frozen models below, here and nowhere else. Pricing rules
(what a call costs) live in `appliance.agents.costs`; this module only stores and sums.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from appliance import errors
from appliance.db import pool, sql

_Q = sql.load("costs")


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """One price row: from `effective_from` on, a million tokens of `category` cost this."""

    model: str
    category: str
    effective_from: dt.date
    usd_per_mtok: Decimal
    source: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ModelCall:
    """One row of the ledger: a model call, its usage counters and what it cost."""

    call_id: int
    tenant_id: str
    task_id: int | None
    position: int | None
    agent: str | None
    agent_version: int | None
    model: str
    request_id: str | None
    started_at: dt.datetime
    latency_ms: float
    input_tokens: int
    cache_creation_input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    uncached_cost_usd: Decimal
    cache_note: str | None
    context: (
        str | None
    )  # 'retrieval' or 'collection' (agents/context_choice.py); None: no documents
    context_tokens: int | None
    context_expected_usd: Decimal | None
    context_other_usd: Decimal | None
    recorded_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CostRow:
    """The ledger summed over one group; the fields that do not name the group are None.

    saving_usd is the realised cache saving (uncached cost - cost; negative when cache writes
    were never read back); saving_fraction is that saving over the uncached cost.
    """

    tenant_id: str | None
    agent: str | None
    agent_version: int | None
    model: str | None
    day: dt.date | None
    task_id: int | None
    calls: int
    input_tokens: int
    cache_creation_input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    uncached_cost_usd: Decimal
    saving_usd: Decimal
    saving_fraction: Decimal | None


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit: a tenant's per calendar month, or per task (task_id None: each task)."""

    tenant_id: str
    scope: str
    task_id: int | None
    usd_limit: Decimal
    set_by: str
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetSpend:
    """A budget that bounds a call, and what the ledger shows already spent against it."""

    scope: str
    task_id: int | None
    usd_limit: Decimal
    spent_usd: Decimal


async def get_prices_at(
    conn: pool.Connection | pool.Pool, *, model: str, at: dt.date
) -> dict[str, Decimal]:
    """The price per million tokens of each category of `model` in effect on `at`."""
    with pool.translated():
        rows = await conn.fetch(_Q["get_prices_at"], model, at)
    return {row["category"]: row["usd_per_mtok"] for row in rows}


async def insert_price(
    conn: pool.Connection | pool.Pool,
    *,
    model: str,
    category: str,
    effective_from: dt.date,
    usd_per_mtok: Decimal,
    source: str,
) -> Price | None:
    """Add a price row; None when that model, category and date already has one."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["insert_price"], model, category, effective_from, usd_per_mtok, source
        )
    return Price(**pool.record_dict(row)) if row else None


async def list_prices(conn: pool.Connection | pool.Pool, *, model: str | None) -> list[Price]:
    """Every price row of `model` (or of every model), history included."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_prices"], model)
    return [Price(**pool.record_dict(row)) for row in rows]


async def record_model_call(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int | None,
    position: int | None,
    agent: str | None,
    agent_version: int | None,
    model: str,
    request_id: str | None,
    started_at: dt.datetime,
    latency_ms: float,
    input_tokens: int,
    cache_creation_input_tokens: int,
    cache_write_5m_tokens: int,
    cache_write_1h_tokens: int,
    cache_read_input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal,
    uncached_cost_usd: Decimal,
    cache_note: str | None,
    context: str | None = None,
    context_tokens: int | None = None,
    context_expected_usd: Decimal | None = None,
    context_other_usd: Decimal | None = None,
) -> ModelCall:
    """Add one call to the ledger, with the context chosen for it when it had documents."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["record_model_call"],
            tenant_id,
            task_id,
            position,
            agent,
            agent_version,
            model,
            request_id,
            started_at,
            latency_ms,
            input_tokens,
            cache_creation_input_tokens,
            cache_write_5m_tokens,
            cache_write_1h_tokens,
            cache_read_input_tokens,
            output_tokens,
            cost_usd,
            uncached_cost_usd,
            cache_note,
            context,
            context_tokens,
            context_expected_usd,
            context_other_usd,
        )
    if row is None:
        raise errors.InputError(f"task {task_id} is not a task of tenant {tenant_id!r}")
    return ModelCall(**pool.record_dict(row))


async def count_agent_calls(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, agent: str, since: dt.datetime
) -> int:
    """How many calls an agent (any version) of a tenant made from `since` on."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["count_agent_calls"], tenant_id, agent, since)
    return count


async def report_costs(
    conn: pool.Connection | pool.Pool,
    *,
    by: str,
    tenant_id: str | None,
    since: dt.date | None,
) -> list[CostRow]:
    """The ledger summed per group of `by`, of one tenant or all, from `since` (UTC) on."""
    with pool.translated():
        rows = await conn.fetch(_Q["report_costs"], by, tenant_id, since)
    return [CostRow(**pool.record_dict(row)) for row in rows]


async def upsert_budget(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    scope: str,
    task_id: int | None,
    usd_limit: Decimal,
    actor: str,
) -> Budget:
    """Set a budget (replacing the limit it had), audited in the tenant's chain."""
    with pool.translated():
        row = await conn.fetchrow(_Q["upsert_budget"], tenant_id, scope, task_id, usd_limit, actor)
    if row is None:
        raise errors.InputError(f"task {task_id} is not a task of tenant {tenant_id!r}")
    values = pool.record_dict(row)
    del values["audit_seq"]
    return Budget(**values)


async def list_budgets(conn: pool.Connection | pool.Pool, *, tenant_id: str) -> list[Budget]:
    """A tenant's budgets."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_budgets"], tenant_id)
    return [Budget(**pool.record_dict(row)) for row in rows]


async def get_budget_spend(
    conn: pool.Connection | pool.Pool, *, tenant_id: str, task_id: int | None
) -> list[BudgetSpend]:
    """The budgets bounding a call of this tenant (and task), with the spend against each."""
    with pool.translated():
        rows = await conn.fetch(_Q["get_budget_spend"], tenant_id, task_id)
    return [BudgetSpend(**pool.record_dict(row)) for row in rows]
