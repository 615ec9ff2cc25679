"""The Cost page: the ledger by tenant, agent, model and day, budgets, and a chart.

One read gives the ledger summed in cells of tenant, agent version, model and UTC day; every
table of the page adds cells up with exact decimals, so each figure equals the sum `appliance
cost --by tenant|agent|model|day --tenant T` prints for the same group (and rounds the same
way: six decimals, the saving in whole percent). Costs per day are drawn as bars stacked by
tenant.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from decimal import Decimal

import pydantic
from aiohttp import web

from appliance.console import details
from appliance.console.pages import charts
from appliance.console.pages import visit as visits

DAYS = 30
GROUPS = ("tenant", "agent", "model", "day")


@dataclasses.dataclass
class Line:
    """The cells of one group (of one tenant) added up."""

    tenant_id: str
    agent: str | None = None
    agent_version: int | None = None
    model: str | None = None
    day: dt.date | None = None
    calls: int = 0
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    uncached_cost_usd: Decimal = Decimal(0)

    @property
    def saving_usd(self) -> Decimal:
        """The realised cache saving: what it would have cost uncached, less what it cost."""
        return self.uncached_cost_usd - self.cost_usd

    @property
    def saving_fraction(self) -> Decimal | None:
        return self.saving_usd / self.uncached_cost_usd if self.uncached_cost_usd > 0 else None

    def add(self, cell: details.CostCellView) -> None:
        self.calls += cell.calls
        self.input_tokens += cell.input_tokens
        self.cache_creation_input_tokens += cell.cache_creation_input_tokens
        self.cache_read_input_tokens += cell.cache_read_input_tokens
        self.output_tokens += cell.output_tokens
        self.cost_usd += Decimal(cell.cost_usd)
        self.uncached_cost_usd += Decimal(cell.uncached_cost_usd)


_KEYS: dict[str, Callable[[details.CostCellView], dict[str, object]]] = {
    "tenant": lambda c: {},
    "agent": lambda c: {"agent": c.agent, "agent_version": c.agent_version},
    "model": lambda c: {"model": c.model},
    "day": lambda c: {"day": c.day},
}


def rollup(cells: Sequence[details.CostCellView], by: str) -> list[Line]:
    """The cells added up per tenant and group, in tenant then group order."""
    lines: dict[tuple[Hashable, ...], Line] = {}
    for cell in cells:
        key = _KEYS[by](cell)
        found = lines.setdefault(
            (cell.tenant_id, *key.values()),
            Line(cell.tenant_id, **key),  # type: ignore[arg-type]
        )
        found.add(cell)
    return [
        lines[k]
        for k in sorted(lines, key=lambda k: tuple(("" if v is None else str(v)) for v in k))
    ]


class _Query(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    since: dt.date | None = None


async def costs_page(visit: visits.Visit) -> web.StreamResponse:
    query: _Query = visits.parsed(_Query, visits.given(visit.request.query, "since"))
    since = query.since or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=DAYS - 1))
    tenants = await visit.tenants()
    cells = await visit.details.cost_cells(tenants, since=since)
    reports = {by: rollup(cells, by) for by in GROUPS}
    return visit.render(
        "costs.html",
        section="costs",
        since=since,
        reports=reports,
        budgets=await visit.services.costs.budgets(tenants),
        chart=_chart(reports["day"], since),
        totals=_total(reports["tenant"]),
    )


def _chart(lines: Sequence[Line], since: dt.date) -> charts.Chart:
    today = dt.datetime.now(dt.UTC).date()
    days = [since + dt.timedelta(days=i) for i in range((today - since).days + 1)]
    by_day: dict[dt.date, list[tuple[str, float]]] = {day: [] for day in days}
    for line in lines:
        if line.day in by_day:
            by_day[line.day].append((line.tenant_id, float(line.cost_usd)))
    return charts.stacked(
        [charts.Column(day.strftime("%m-%d"), by_day[day]) for day in days], unit="USD", decimals=6
    )


def _total(lines: Sequence[Line]) -> Line:
    total = Line("all")
    for line in lines:
        total.calls += line.calls
        total.input_tokens += line.input_tokens
        total.cache_creation_input_tokens += line.cache_creation_input_tokens
        total.cache_read_input_tokens += line.cache_read_input_tokens
        total.output_tokens += line.output_tokens
        total.cost_usd += line.cost_usd
        total.uncached_cost_usd += line.uncached_cost_usd
    return total
