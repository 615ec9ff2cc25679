"""What model calls cost: usage counters, prices by effective date, the ledger, budgets.

The cost of a call (reference 1.4), with every price per million tokens read from the prices
table in effect on the call's UTC date:

    cost = input * p_input + write_5m * p_cache_write_5m + write_1h * p_cache_write_1h
           + cache_read * p_cache_read + output * p_output

The usage counters are disjoint: cache tokens are never added into input_tokens. Cache-write
tokens not reported as 1h writes (the API's `cache_creation` split is absent) are billed at the
5m write rate. The uncached cost is what the same call would have cost with no caching: every
prompt token at the input price, plus the output. Money is `Decimal`, never float.

Before a call, a caller looks up `price_of` (which refuses an unpriced model before anything is
spent) and asks `check_budget` with the call's `worst_case_usd`; after it, `record_call`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal, get_args

from appliance import errors
from appliance.db import costs as dbcosts
from appliance.db import pool

Category = Literal["input", "cache_write_5m", "cache_write_1h", "cache_read", "output"]
CATEGORIES: tuple[Category, ...] = get_args(Category)
GroupBy = Literal["tenant", "agent", "model", "day", "task", "all"]
Scope = Literal["month", "task"]

# The rows handed out by the query layer, under this module's name for its callers.
Price = dbcosts.Price
ModelCall = dbcosts.ModelCall
CostRow = dbcosts.CostRow
Budget = dbcosts.Budget

_PER_MTOK = Decimal(1_000_000)
_OPERATOR = "operator"


def _count(value: object, field: str) -> int:
    """A token counter as the API reports it: None reads as 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InputError(f"usage.{field} must be a non-negative integer, not {value!r}")
    return value


def _money(value: object, what: str) -> None:
    """Refuse an amount of USD that is not a finite, non-negative Decimal."""
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise errors.InputError(f"{what} must be a non-negative Decimal, not {value!r}")


def _field(source: object, name: str) -> object:
    """A field of the SDK's pydantic object or of its dict form (absent reads as None)."""
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """A call's usage counters, disjoint as the API reports them."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _count(getattr(self, field.name), field.name)

    @classmethod
    def from_api(cls, usage: object) -> Usage:
        """Read the anthropic SDK's `Usage` (or its dict form); a missing or None count is 0."""
        split = _field(usage, "cache_creation")
        return cls(
            input_tokens=_count(_field(usage, "input_tokens"), "input_tokens"),
            cache_creation_input_tokens=_count(
                _field(usage, "cache_creation_input_tokens"), "cache_creation_input_tokens"
            ),
            cache_write_5m_tokens=_count(
                _field(split, "ephemeral_5m_input_tokens"), "ephemeral_5m_input_tokens"
            ),
            cache_write_1h_tokens=_count(
                _field(split, "ephemeral_1h_input_tokens"), "ephemeral_1h_input_tokens"
            ),
            cache_read_input_tokens=_count(
                _field(usage, "cache_read_input_tokens"), "cache_read_input_tokens"
            ),
            output_tokens=_count(_field(usage, "output_tokens"), "output_tokens"),
        )

    @property
    def billed_write_5m_tokens(self) -> int:
        """Cache writes billed at the 5m rate: all of them not reported as 1h writes."""
        return max(
            self.cache_creation_input_tokens - self.cache_write_1h_tokens,
            self.cache_write_5m_tokens,
        )

    @property
    def prompt_tokens(self) -> int:
        """Every prompt token: uncached input, cache writes and cache reads."""
        return (
            self.input_tokens
            + self.billed_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_input_tokens
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Prices:
    """The five prices (USD per million tokens) of one model in effect on one date."""

    model: str
    at: dt.date
    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class ContextCost:
    """How a call got its documents, for the ledger: 'retrieval' or 'collection', the tokens
    they took, and the expected cost per call of this way and of the other."""

    mode: str
    tokens: int
    expected_usd: Decimal
    other_usd: Decimal


def price_call(prices: Prices, usage: Usage) -> tuple[Decimal, Decimal]:
    """(cost, uncached cost) of one call in USD."""
    cost = (
        usage.input_tokens * prices.input
        + usage.billed_write_5m_tokens * prices.cache_write_5m
        + usage.cache_write_1h_tokens * prices.cache_write_1h
        + usage.cache_read_input_tokens * prices.cache_read
        + usage.output_tokens * prices.output
    ) / _PER_MTOK
    uncached = (
        usage.prompt_tokens * prices.input + usage.output_tokens * prices.output
    ) / _PER_MTOK
    return cost, uncached


def worst_case_usd(prices: Prices, input_tokens_estimate: int, max_tokens: int) -> Decimal:
    """The most a call may cost for budget checks: the prompt estimate at the input price plus
    `max_tokens` at the output price (cache writes, priced higher, are not foreseen)."""
    _count(input_tokens_estimate, "input_tokens_estimate")
    _count(max_tokens, "max_tokens")
    return (input_tokens_estimate * prices.input + max_tokens * prices.output) / _PER_MTOK


def _utc_date(at: dt.date) -> dt.date:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise errors.InputError(f"{at.isoformat()} has no time zone")
        return at.astimezone(dt.UTC).date()
    return at


async def price_of(
    conn: pool.Connection | pool.Pool, model: str, at: dt.date | None = None
) -> Prices:
    """The prices of `model` in effect on `at` (a date, or an aware datetime; default today,
    UTC). Raises NotFoundError, naming what to add, when a category has no price."""
    day = _utc_date(at) if at is not None else dt.datetime.now(dt.UTC).date()
    found = await dbcosts.get_prices_at(conn, model=model, at=day)
    missing = [category for category in CATEGORIES if category not in found]
    if missing:
        raise errors.NotFoundError(
            f"model {model!r} has no {', '.join(missing)} price in effect on {day.isoformat()}; "
            f"add one with `appliance prices set {model} CATEGORY USD_PER_MTOK` "
            f"(categories: {', '.join(CATEGORIES)})"
        )
    return Prices(
        model=model,
        at=day,
        input=found["input"],
        cache_write_5m=found["cache_write_5m"],
        cache_write_1h=found["cache_write_1h"],
        cache_read=found["cache_read"],
        output=found["output"],
    )


async def set_price(
    conn: pool.Connection | pool.Pool,
    *,
    model: str,
    category: Category,
    usd_per_mtok: Decimal,
    effective_from: dt.date,
    source: str = _OPERATOR,
) -> dbcosts.Price:
    """Add a price from `effective_from` on; earlier rows stay, for the calls made under them.

    Raises StateError when that model and category already has a price from that date:
    prices are history, so a change takes a new effective date.
    """
    if category not in CATEGORIES:
        raise errors.InputError(
            f"unknown price category {category!r}; one of {', '.join(CATEGORIES)}"
        )
    _money(usd_per_mtok, "a price")
    if not model or any(char.isspace() for char in model):
        raise errors.InputError(f"model id {model!r} must be non-empty, without spaces")
    effective = _utc_date(effective_from)
    row = await dbcosts.insert_price(
        conn,
        model=model,
        category=category,
        effective_from=effective,
        usd_per_mtok=usd_per_mtok,
        source=source,
    )
    if row is None:
        raise errors.StateError(
            f"{model} already has a {category} price from {effective.isoformat()}; "
            "prices keep their history, so give the change a later effective date"
        )
    return row


async def list_prices(
    conn: pool.Connection | pool.Pool, *, model: str | None = None
) -> list[dbcosts.Price]:
    """Every price row of `model` (default: of every model), history included."""
    return await dbcosts.list_prices(conn, model=model)


async def record_call(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int | None,
    position: int | None,
    agent: str | None,
    agent_version: int | None,
    model: str,
    request_id: str | None,
    latency_ms: float,
    usage: Usage,
    cache_note: str | None,
    started_at: dt.datetime | None = None,
    context: ContextCost | None = None,
) -> dbcosts.ModelCall:
    """Price a finished call at the prices of its start date and add it to the ledger, with
    the context chosen for it (`agents.context_choice`) when it had documents."""
    started = started_at if started_at is not None else dt.datetime.now(dt.UTC)
    prices = await price_of(conn, model, started)
    cost, uncached = price_call(prices, usage)
    return await dbcosts.record_model_call(
        conn,
        tenant_id=tenant_id,
        task_id=task_id,
        position=position,
        agent=agent,
        agent_version=agent_version,
        model=model,
        request_id=request_id,
        started_at=started,
        latency_ms=latency_ms,
        input_tokens=usage.input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=cost,
        uncached_cost_usd=uncached,
        cache_note=cache_note,
        context=context.mode if context else None,
        context_tokens=context.tokens if context else None,
        context_expected_usd=context.expected_usd if context else None,
        context_other_usd=context.other_usd if context else None,
    )


async def cost_report(
    conn: pool.Connection | pool.Pool,
    *,
    by: GroupBy,
    since: dt.date | None = None,
    tenant_id: str | None = None,
) -> list[dbcosts.CostRow]:
    """The ledger summed per tenant, agent (name and version), model, UTC day, task, or over
    all calls; of one tenant or of all, from `since` (a UTC date) on."""
    if by not in get_args(GroupBy):
        raise errors.InputError(
            f"cannot group costs by {by!r}; one of {', '.join(get_args(GroupBy))}"
        )
    return await dbcosts.report_costs(conn, by=by, tenant_id=tenant_id, since=since)


async def set_budget(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    scope: Scope,
    usd_limit: Decimal,
    actor: str,
    task_id: int | None = None,
) -> dbcosts.Budget:
    """Set a tenant's budget for each calendar month (UTC), for one task, or (task scope
    without a task) for each task that has none of its own; replaces the earlier limit."""
    if scope not in get_args(Scope):
        raise errors.InputError(f"unknown budget scope {scope!r}; one of month, task")
    if scope == "month" and task_id is not None:
        raise errors.InputError("a month budget is the tenant's; it takes no task")
    _money(usd_limit, "a budget")
    return await dbcosts.upsert_budget(
        conn, tenant_id=tenant_id, scope=scope, task_id=task_id, usd_limit=usd_limit, actor=actor
    )


async def list_budgets(
    conn: pool.Connection | pool.Pool, *, tenant_id: str
) -> list[dbcosts.Budget]:
    """A tenant's budgets."""
    return await dbcosts.list_budgets(conn, tenant_id=tenant_id)


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """Whether a call may go ahead, and the budget that decided it.

    The binding budget is the one with the least room left after the call's worst case: the
    one it would exceed (ok False), or the tightest one (ok True); scope None when no budget
    bounds the call.
    """

    ok: bool
    worst_case_usd: Decimal
    scope: Scope | None = None
    task_id: int | None = None
    limit_usd: Decimal | None = None
    spent_usd: Decimal | None = None

    @property
    def remaining_usd(self) -> Decimal | None:
        """What the binding budget still allows before this call."""
        if self.limit_usd is None or self.spent_usd is None:
            return None
        return self.limit_usd - self.spent_usd

    @property
    def reason(self) -> str:
        """One line for a person, starting `budget:` (the wait reason of a refused task)."""
        if self.scope is None:
            return "budget: no budget bounds this call"
        which = "this month's" if self.scope == "month" else f"task {self.task_id}'s"
        verdict = "allows" if self.ok else "would be exceeded by"
        return (
            f"budget:{self.scope}: {which} budget of ${self.limit_usd} (${self.spent_usd} spent) "
            f"{verdict} a call costing up to ${self.worst_case_usd}"
        )


async def check_budget(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int | None,
    worst_case_usd: Decimal,
) -> BudgetVerdict:
    """May a call costing up to `worst_case_usd` go ahead without exceeding the tenant's
    month budget or the task's budget? Spend is what the ledger holds so far: calls under way
    and not yet recorded are not counted, so concurrent calls of one tenant may together
    overshoot the month budget by their worst cases."""
    _money(worst_case_usd, "a worst case")
    budgets = await dbcosts.get_budget_spend(conn, tenant_id=tenant_id, task_id=task_id)
    if not budgets:
        return BudgetVerdict(ok=True, worst_case_usd=worst_case_usd)
    binding = min(budgets, key=lambda b: b.usd_limit - b.spent_usd)
    scope: Scope = "month" if binding.scope == "month" else "task"
    return BudgetVerdict(
        ok=binding.spent_usd + worst_case_usd <= binding.usd_limit,
        worst_case_usd=worst_case_usd,
        scope=scope,
        task_id=binding.task_id,
        limit_usd=binding.usd_limit,
        spent_usd=binding.spent_usd,
    )
