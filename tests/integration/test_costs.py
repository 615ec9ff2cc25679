"""Prices by effective date, the ledger of model calls, cost reports and budgets, on Postgres.

The seeded prices are shared reference data that the `db` fixture does not empty, so tests
that add prices do so for a model of their own (`priced_model`) and never touch the seeds.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from appliance import errors
from appliance.agents import costs
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.engine import context, registry
from tests.support import engine

pytestmark = pytest.mark.asyncio(loop_scope="session")

workflows = registry.Registry()


@workflows.workflow("noop")
async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
    """A workflow whose tasks only need to exist: calls are recorded against them."""
    return task_input


DAY_1 = dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)
DAY_2 = dt.datetime(2025, 3, 2, 10, 0, tzinfo=dt.UTC)

# At Sonnet 4.5 prices: $0.018 (uncached $0.0165), $0.0111 ($0.0165), $0.003 ($0.003).
CACHE_WRITE = costs.Usage(
    input_tokens=1_000,
    cache_creation_input_tokens=2_000,
    cache_write_5m_tokens=2_000,
    output_tokens=500,
)
CACHE_READ = costs.Usage(input_tokens=1_000, cache_read_input_tokens=2_000, output_tokens=500)
SMALL = costs.Usage(input_tokens=1_000)
# At Haiku 4.5 prices: $0.015, uncached the same.
NO_CACHE = costs.Usage(input_tokens=10_000, output_tokens=1_000)


async def new_task(db: dbpool.Pool, tenant_id: str = "acme") -> int:
    """A task of `tenant_id`, submitted through the real submission path."""
    return await engine.submit(
        db, workflows, engine.engine_settings(), workflow="noop", tenant_id=tenant_id
    )


async def priced_model(
    db: dbpool.Pool, effective_from: dt.date = dt.date(2025, 1, 1), **prices: str
) -> str:
    """A model of this test's own, priced in every category (1 USD/MTok unless told)."""
    model = f"test-model-{uuid.uuid4().hex[:12]}"
    for category in costs.CATEGORIES:
        await costs.set_price(
            db,
            model=model,
            category=category,
            usd_per_mtok=Decimal(prices.get(category, "1")),
            effective_from=effective_from,
        )
    return model


async def record(
    db: dbpool.Pool,
    usage: costs.Usage,
    *,
    tenant_id: str = "acme",
    task_id: int | None = None,
    model: str = "claude-sonnet-4-5",
    agent: str | None = "writer",
    agent_version: int | None = 1,
    started_at: dt.datetime | None = None,
) -> costs.ModelCall:
    """Record one call through record_call, with plausible defaults for what is not asked."""
    return await costs.record_call(
        db,
        tenant_id=tenant_id,
        task_id=task_id,
        position=0 if task_id is not None else None,
        agent=agent,
        agent_version=agent_version,
        model=model,
        request_id=f"req_{uuid.uuid4().hex}",
        latency_ms=120.5,
        usage=usage,
        cache_note=None,
        started_at=started_at,
    )


class TestPrices:
    @pytest.mark.parametrize(
        ("model", "published"),
        [
            ("claude-opus-4-5", ("5", "6.25", "10", "0.50", "25")),
            ("claude-opus-4-6", ("5", "6.25", "10", "0.50", "25")),
            ("claude-sonnet-4-5", ("3", "3.75", "6", "0.30", "15")),
            ("claude-sonnet-4-6", ("3", "3.75", "6", "0.30", "15")),
            ("claude-haiku-4-5", ("1", "1.25", "2", "0.10", "5")),
            ("claude-3-5-haiku", ("0.80", "1", "1.6", "0.08", "4")),
            ("claude-3-haiku", ("0.25", "0.30", "0.50", "0.03", "1.25")),
        ],
    )
    async def test_seeded_prices_are_the_published_ones(
        self, db: dbpool.Pool, model: str, published: tuple[str, ...]
    ) -> None:
        """The migration seeds each model's five published prices per MTok."""
        prices = await costs.price_of(db, model, dt.date(2025, 6, 1))

        assert (
            prices.input,
            prices.cache_write_5m,
            prices.cache_write_1h,
            prices.cache_read,
            prices.output,
        ) == tuple(Decimal(p) for p in published)

    async def test_dated_model_id_is_priced_as_its_alias(self, db: dbpool.Pool) -> None:
        """A snapshot id such as claude-3-haiku-20240307 takes the prices of claude-3-haiku."""
        dated = await costs.price_of(db, "claude-3-haiku-20240307", dt.date(2025, 6, 1))
        alias = await costs.price_of(db, "claude-3-haiku", dt.date(2025, 6, 1))

        assert dataclass_prices(dated) == dataclass_prices(alias)

    async def test_unknown_model_names_the_command_that_prices_it(self, db: dbpool.Pool) -> None:
        """A model without prices is refused with the command to add them."""
        with pytest.raises(errors.NotFoundError, match=r"appliance prices set claude-nope "):
            await costs.price_of(db, "claude-nope")

    async def test_no_price_before_the_first_effective_date(self, db: dbpool.Pool) -> None:
        """A date before any price took effect has no price."""
        model = await priced_model(db, effective_from=dt.date(2025, 5, 1))

        with pytest.raises(errors.NotFoundError, match="2025-04-30"):
            await costs.price_of(db, model, dt.date(2025, 4, 30))

    async def test_a_missing_category_is_named(self, db: dbpool.Pool) -> None:
        """A model priced in only some categories is refused, naming the missing ones."""
        model = f"test-model-{uuid.uuid4().hex[:12]}"
        await costs.set_price(
            db,
            model=model,
            category="input",
            usd_per_mtok=Decimal(1),
            effective_from=dt.date(2025, 1, 1),
        )

        with pytest.raises(errors.NotFoundError, match="cache_write_5m, cache_write_1h"):
            await costs.price_of(db, model)

    async def test_a_later_price_applies_from_its_date(self, db: dbpool.Pool) -> None:
        """The price in effect is the one with the latest effective date on or before the day."""
        model = await priced_model(db, input="2")
        await costs.set_price(
            db,
            model=model,
            category="input",
            usd_per_mtok=Decimal("2.50"),
            effective_from=dt.date(2025, 6, 1),
        )

        assert (await costs.price_of(db, model, dt.date(2025, 5, 31))).input == Decimal(2)
        assert (await costs.price_of(db, model, dt.date(2025, 6, 1))).input == Decimal("2.50")

    async def test_set_price_keeps_the_history(self, db: dbpool.Pool) -> None:
        """A new price adds a row; the earlier one stays listed."""
        model = await priced_model(db)
        await costs.set_price(
            db,
            model=model,
            category="output",
            usd_per_mtok=Decimal(9),
            effective_from=dt.date(2025, 6, 1),
        )

        rows = [r for r in await costs.list_prices(db, model=model) if r.category == "output"]

        assert [(r.effective_from, r.usd_per_mtok) for r in rows] == [
            (dt.date(2025, 1, 1), Decimal(1)),
            (dt.date(2025, 6, 1), Decimal(9)),
        ]

    async def test_same_date_twice_is_refused(self, db: dbpool.Pool) -> None:
        """A second price for the same model, category and date is refused, not overwritten."""
        model = await priced_model(db)

        with pytest.raises(errors.StateError, match="later effective date"):
            await costs.set_price(
                db,
                model=model,
                category="input",
                usd_per_mtok=Decimal(2),
                effective_from=dt.date(2025, 1, 1),
            )

    async def test_unknown_category_is_refused(self, db: dbpool.Pool) -> None:
        """Only the five token categories can be priced."""
        with pytest.raises(errors.InputError, match="unknown price category"):
            await costs.set_price(
                db,
                model="claude-sonnet-4-5",
                category="thinking",  # type: ignore[arg-type]
                usd_per_mtok=Decimal(1),
                effective_from=dt.date(2025, 1, 1),
            )


def dataclass_prices(prices: costs.Prices) -> tuple[Decimal, ...]:
    """The five prices of a Prices, without its model and date."""
    return (
        prices.input,
        prices.cache_write_5m,
        prices.cache_write_1h,
        prices.cache_read,
        prices.output,
    )


class TestRecordCall:
    async def test_stores_every_counter_and_the_costs(self, db: dbpool.Pool) -> None:
        """A recorded call keeps each usage counter as reported, its cost and uncached cost."""
        task_id = await new_task(db)
        usage = costs.Usage(
            input_tokens=1_000,
            cache_creation_input_tokens=3_000,
            cache_write_5m_tokens=2_000,
            cache_write_1h_tokens=1_000,
            cache_read_input_tokens=10_000,
            output_tokens=500,
        )

        call = await record(db, usage, task_id=task_id, started_at=DAY_1)

        assert (call.tenant_id, call.task_id, call.position, call.agent, call.agent_version) == (
            "acme",
            task_id,
            0,
            "writer",
            1,
        )
        assert (
            call.input_tokens,
            call.cache_creation_input_tokens,
            call.cache_write_5m_tokens,
            call.cache_write_1h_tokens,
            call.cache_read_input_tokens,
            call.output_tokens,
        ) == (1_000, 3_000, 2_000, 1_000, 10_000, 500)
        assert (call.cost_usd, call.uncached_cost_usd) == (Decimal("0.027"), Decimal("0.0495"))

    async def test_keeps_the_cache_note(self, db: dbpool.Pool) -> None:
        """The caller's word on why the prefix was not cached is stored with the call."""
        call = await costs.record_call(
            db,
            tenant_id="acme",
            task_id=None,
            position=None,
            agent=None,
            agent_version=None,
            model="claude-haiku-4-5",
            request_id=None,
            latency_ms=3.0,
            usage=SMALL,
            cache_note="stable prefix 2,100 tokens < minimum 4,096: not cacheable",
        )

        assert call.cache_note == "stable prefix 2,100 tokens < minimum 4,096: not cacheable"

    async def test_a_price_change_applies_only_to_later_calls(self, db: dbpool.Pool) -> None:
        """Calls before a new price's effective date keep the old price; later ones take it."""
        model = await priced_model(db, input="1")
        await costs.set_price(
            db,
            model=model,
            category="input",
            usd_per_mtok=Decimal(2),
            effective_from=dt.date(2025, 6, 1),
        )
        million = costs.Usage(input_tokens=1_000_000)

        before = await record(db, million, model=model, started_at=DAY_1)
        after = await record(
            db, million, model=model, started_at=dt.datetime(2025, 6, 1, 0, 0, tzinfo=dt.UTC)
        )

        assert (before.cost_usd, after.cost_usd) == (Decimal(1), Decimal(2))

    async def test_the_call_date_is_taken_in_utc(self, db: dbpool.Pool) -> None:
        """A call late on May 31 in New York started on June 1 UTC: it takes June's price."""
        model = await priced_model(db, input="1")
        await costs.set_price(
            db,
            model=model,
            category="input",
            usd_per_mtok=Decimal(2),
            effective_from=dt.date(2025, 6, 1),
        )
        new_york = dt.timezone(dt.timedelta(hours=-4))

        call = await record(
            db,
            costs.Usage(input_tokens=1_000_000),
            model=model,
            started_at=dt.datetime(2025, 5, 31, 21, 0, tzinfo=new_york),
        )

        assert call.cost_usd == Decimal(2)

    async def test_unknown_model_records_nothing(self, db: dbpool.Pool) -> None:
        """A call to an unpriced model is refused and leaves the ledger empty."""
        with pytest.raises(errors.NotFoundError, match="claude-nope"):
            await record(db, SMALL, model="claude-nope")

        assert await costs.cost_report(db, by="all") == []

    async def test_task_of_another_tenant_is_refused(self, db: dbpool.Pool) -> None:
        """A call cannot be booked to another tenant's task."""
        task_id = await new_task(db, "acme")

        with pytest.raises(errors.InputError, match=f"task {task_id} is not a task of tenant"):
            await record(db, SMALL, tenant_id="globex", task_id=task_id)

    async def test_unknown_tenant_is_refused(self, db: dbpool.Pool) -> None:
        """A call of a tenant that does not exist is refused."""
        with pytest.raises(errors.UnknownTenantError, match="nobody"):
            await record(db, SMALL, tenant_id="nobody")


@pytest_asyncio.fixture(loop_scope="session")
async def ledger(db: dbpool.Pool) -> tuple[int, int]:
    """Four calls: acme's writer (Sonnet, task A, days 1 and 2), acme's reviewer v2 (Haiku,
    task B, day 2), globex's writer (Sonnet, no task, day 1). Returns (task A, task B)."""
    task_a, task_b = await new_task(db), await new_task(db)
    await record(db, CACHE_WRITE, task_id=task_a, started_at=DAY_1)
    await record(db, CACHE_READ, task_id=task_a, started_at=DAY_2)
    await record(
        db,
        NO_CACHE,
        task_id=task_b,
        model="claude-haiku-4-5",
        agent="reviewer",
        agent_version=2,
        started_at=DAY_2,
    )
    await record(db, SMALL, tenant_id="globex", started_at=DAY_1)
    return task_a, task_b


def totals(rows: list[costs.CostRow]) -> list[tuple[int, Decimal, Decimal]]:
    """(calls, cost, uncached cost) of each row."""
    return [(r.calls, r.cost_usd, r.uncached_cost_usd) for r in rows]


class TestCostReport:
    async def test_by_task(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Per task: each task's calls and costs; calls outside a task form their own row."""
        task_a, task_b = ledger

        rows = await costs.cost_report(db, by="task")

        assert [(r.tenant_id, r.task_id) for r in rows] == [
            ("acme", task_a),
            ("acme", task_b),
            ("globex", None),
        ]
        assert totals(rows) == [
            (2, Decimal("0.0291"), Decimal("0.033")),
            (1, Decimal("0.015"), Decimal("0.015")),
            (1, Decimal("0.003"), Decimal("0.003")),
        ]

    async def test_realised_saving_and_its_fraction(
        self, db: dbpool.Pool, ledger: tuple[int, int]
    ) -> None:
        """The saving is uncached cost minus cost, and its fraction of the uncached cost."""
        task_a, _ = ledger

        row = next(r for r in await costs.cost_report(db, by="task") if r.task_id == task_a)

        assert row.saving_usd == Decimal("0.0039")
        assert row.saving_fraction is not None
        assert row.saving_fraction.quantize(Decimal("0.000001")) == Decimal("0.118182")

    async def test_a_cache_write_never_read_saves_less_than_nothing(self, db: dbpool.Pool) -> None:
        """A write that is never read back costs more than no caching: the saving is negative."""
        await record(db, CACHE_WRITE, started_at=DAY_1)

        [row] = await costs.cost_report(db, by="all")

        assert row.saving_usd == Decimal("-0.0015")

    async def test_by_agent(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Per agent: by tenant, name and version."""
        rows = await costs.cost_report(db, by="agent")

        assert [(r.tenant_id, r.agent, r.agent_version) for r in rows] == [
            ("acme", "reviewer", 2),
            ("acme", "writer", 1),
            ("globex", "writer", 1),
        ]
        assert totals(rows) == [
            (1, Decimal("0.015"), Decimal("0.015")),
            (2, Decimal("0.0291"), Decimal("0.033")),
            (1, Decimal("0.003"), Decimal("0.003")),
        ]

    async def test_by_tenant(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Per tenant: the sum of its calls, each token counter summed on its own."""
        rows = await costs.cost_report(db, by="tenant")

        assert [r.tenant_id for r in rows] == ["acme", "globex"]
        assert totals(rows) == [
            (3, Decimal("0.0441"), Decimal("0.048")),
            (1, Decimal("0.003"), Decimal("0.003")),
        ]
        acme = rows[0]
        assert (
            acme.input_tokens,
            acme.cache_creation_input_tokens,
            acme.cache_write_5m_tokens,
            acme.cache_write_1h_tokens,
            acme.cache_read_input_tokens,
            acme.output_tokens,
        ) == (12_000, 2_000, 2_000, 0, 2_000, 2_000)

    async def test_by_model(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Per model."""
        rows = await costs.cost_report(db, by="model")

        assert [r.model for r in rows] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
        assert totals(rows) == [
            (1, Decimal("0.015"), Decimal("0.015")),
            (3, Decimal("0.0321"), Decimal("0.036")),
        ]

    async def test_by_day(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Per UTC day."""
        rows = await costs.cost_report(db, by="day")

        assert [r.day for r in rows] == [DAY_1.date(), DAY_2.date()]
        assert totals(rows) == [
            (2, Decimal("0.021"), Decimal("0.0195")),
            (2, Decimal("0.0261"), Decimal("0.0315")),
        ]

    async def test_overall(self, db: dbpool.Pool, ledger: tuple[int, int]) -> None:
        """Over all calls: one row, with no group named."""
        [row] = await costs.cost_report(db, by="all")

        assert (row.tenant_id, row.agent, row.model, row.day, row.task_id) == (None,) * 5
        assert totals([row]) == [(4, Decimal("0.0471"), Decimal("0.051"))]

    async def test_since_leaves_out_earlier_days(
        self, db: dbpool.Pool, ledger: tuple[int, int]
    ) -> None:
        """Only calls started on or after the `since` date (UTC) are counted."""
        rows = await costs.cost_report(db, by="tenant", since=DAY_2.date())

        assert [(r.tenant_id, r.calls, r.cost_usd) for r in rows] == [
            ("acme", 2, Decimal("0.0261"))
        ]

    async def test_a_tenants_report_holds_only_its_calls(
        self, db: dbpool.Pool, ledger: tuple[int, int]
    ) -> None:
        """A report for one tenant shows nothing of another's spend."""
        rows = await costs.cost_report(db, by="task", tenant_id="globex")

        assert [(r.tenant_id, r.task_id, r.cost_usd) for r in rows] == [
            ("globex", None, Decimal("0.003"))
        ]

    async def test_unknown_grouping_is_refused(self, db: dbpool.Pool) -> None:
        """Grouping by anything but the known dimensions is bad input."""
        with pytest.raises(errors.InputError, match="cannot group costs by 'week'"):
            await costs.cost_report(db, by="week")  # type: ignore[arg-type]


class TestBudgets:
    async def test_no_budget_allows_any_call(self, db: dbpool.Pool) -> None:
        """Without budgets every call may go ahead."""
        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal(1_000)
        )

        assert (verdict.ok, verdict.scope) == (True, None)

    async def test_month_budget_refuses_a_call_that_could_exceed_it(self, db: dbpool.Pool) -> None:
        """Spend so far plus the worst case past the month budget is refused, with the figures."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE)  # $0.018 this month

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.scope, verdict.limit_usd, verdict.spent_usd) == (
            False,
            "month",
            Decimal("0.02"),
            Decimal("0.018"),
        )
        assert verdict.reason.startswith("budget:month: this month's budget of $0.02")

    async def test_raising_the_month_budget_allows_the_call(self, db: dbpool.Pool) -> None:
        """After the month budget is raised the same call is allowed."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE)
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.03"), actor="test"
        )

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.limit_usd, verdict.remaining_usd) == (
            True,
            Decimal("0.03"),
            Decimal("0.012"),
        )

    async def test_a_call_that_exactly_meets_the_budget_is_allowed(self, db: dbpool.Pool) -> None:
        """Spending up to the limit, not past it, is allowed."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal("0.002")
        )

        assert verdict.ok

    async def test_last_months_spend_does_not_count(self, db: dbpool.Pool) -> None:
        """The month budget counts only calls of the current calendar month (UTC)."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE, started_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40))

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal("0.015")
        )

        assert (verdict.ok, verdict.spent_usd) == (True, Decimal(0))

    async def test_other_tenants_spend_does_not_count(self, db: dbpool.Pool) -> None:
        """A tenant's month budget is charged only with its own calls."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE, tenant_id="globex")

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=None, worst_case_usd=Decimal("0.015")
        )

        assert (verdict.ok, verdict.spent_usd) == (True, Decimal(0))

    async def test_task_budget_refuses_a_call_that_could_exceed_it(self, db: dbpool.Pool) -> None:
        """A task's spend plus the worst case past its budget is refused, naming the task."""
        task_id = await new_task(db)
        await costs.set_budget(
            db,
            tenant_id="acme",
            scope="task",
            task_id=task_id,
            usd_limit=Decimal("0.02"),
            actor="test",
        )
        await record(db, CACHE_WRITE, task_id=task_id)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.scope, verdict.task_id, verdict.spent_usd) == (
            False,
            "task",
            task_id,
            Decimal("0.018"),
        )

    async def test_raising_the_task_budget_allows_the_call(self, db: dbpool.Pool) -> None:
        """After the task's budget is raised the same call is allowed."""
        task_id = await new_task(db)
        for limit in ("0.02", "0.05"):
            await costs.set_budget(
                db,
                tenant_id="acme",
                scope="task",
                task_id=task_id,
                usd_limit=Decimal(limit),
                actor="test",
            )
        await record(db, CACHE_WRITE, task_id=task_id)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.limit_usd) == (True, Decimal("0.05"))

    async def test_task_budget_counts_only_that_tasks_calls(self, db: dbpool.Pool) -> None:
        """Another task's spend is not charged to this task's budget."""
        task_id, other = await new_task(db), await new_task(db)
        await costs.set_budget(
            db,
            tenant_id="acme",
            scope="task",
            task_id=task_id,
            usd_limit=Decimal("0.02"),
            actor="test",
        )
        await record(db, CACHE_WRITE, task_id=other)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.015")
        )

        assert (verdict.ok, verdict.spent_usd) == (True, Decimal(0))

    async def test_tenant_default_task_budget_bounds_each_task(self, db: dbpool.Pool) -> None:
        """A task budget without a task applies to every task of the tenant."""
        task_id = await new_task(db)
        await costs.set_budget(
            db, tenant_id="acme", scope="task", usd_limit=Decimal("0.02"), actor="test"
        )
        await record(db, CACHE_WRITE, task_id=task_id)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.scope, verdict.task_id) == (False, "task", task_id)

    async def test_a_tasks_own_budget_overrides_the_default(self, db: dbpool.Pool) -> None:
        """A task with a budget of its own is bounded by it, not by the tenant's default."""
        task_id = await new_task(db)
        await costs.set_budget(
            db, tenant_id="acme", scope="task", usd_limit=Decimal("0.02"), actor="test"
        )
        await costs.set_budget(
            db,
            tenant_id="acme",
            scope="task",
            task_id=task_id,
            usd_limit=Decimal("0.10"),
            actor="test",
        )
        await record(db, CACHE_WRITE, task_id=task_id)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.limit_usd) == (True, Decimal("0.10"))

    async def test_the_tighter_budget_decides(self, db: dbpool.Pool) -> None:
        """With a month and a task budget, the one with less room left is reported."""
        task_id = await new_task(db)
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("0.02"), actor="test"
        )
        await costs.set_budget(
            db,
            tenant_id="acme",
            scope="task",
            task_id=task_id,
            usd_limit=Decimal(1),
            actor="test",
        )
        await record(db, CACHE_WRITE, task_id=task_id)

        verdict = await costs.check_budget(
            db, tenant_id="acme", task_id=task_id, worst_case_usd=Decimal("0.005")
        )

        assert (verdict.ok, verdict.scope) == (False, "month")

    async def test_setting_a_budget_is_audited(self, db: dbpool.Pool) -> None:
        """Each budget change is an audit entry in the tenant's chain, with who set it."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal("12.50"), actor="alice"
        )

        entries = await dbaudit.list_chain(db, "tenant:acme")

        assert [(e.actor, e.action, e.detail) for e in entries if e.action == "budget.set"] == [
            ("alice", "budget.set", {"scope": "month", "task_id": None, "usd_limit": 12.50})
        ]

    async def test_budgets_are_listed_per_tenant(self, db: dbpool.Pool) -> None:
        """A tenant's budgets are listed with their current limits; other tenants' are not."""
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal(5), actor="test"
        )
        await costs.set_budget(
            db, tenant_id="acme", scope="month", usd_limit=Decimal(7), actor="test"
        )
        await costs.set_budget(
            db, tenant_id="globex", scope="month", usd_limit=Decimal(1), actor="test"
        )

        budgets = await costs.list_budgets(db, tenant_id="acme")

        assert [(b.scope, b.task_id, b.usd_limit) for b in budgets] == [("month", None, Decimal(7))]

    async def test_month_budget_takes_no_task(self, db: dbpool.Pool) -> None:
        """A month budget naming a task is bad input."""
        task_id = await new_task(db)

        with pytest.raises(errors.InputError, match="month budget"):
            await costs.set_budget(
                db,
                tenant_id="acme",
                scope="month",
                task_id=task_id,
                usd_limit=Decimal(1),
                actor="test",
            )

    async def test_budget_for_another_tenants_task_is_refused(self, db: dbpool.Pool) -> None:
        """A tenant cannot set a budget on another tenant's task."""
        task_id = await new_task(db, "acme")

        with pytest.raises(errors.InputError, match="is not a task of tenant 'globex'"):
            await costs.set_budget(
                db,
                tenant_id="globex",
                scope="task",
                task_id=task_id,
                usd_limit=Decimal(1),
                actor="test",
            )

    async def test_negative_budget_is_refused(self, db: dbpool.Pool) -> None:
        """A budget below zero is bad input."""
        with pytest.raises(errors.InputError, match="non-negative"):
            await costs.set_budget(
                db, tenant_id="acme", scope="month", usd_limit=Decimal(-1), actor="test"
            )
