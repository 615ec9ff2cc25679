"""The Grafana dashboard that ships in packaging/grafana: every series its PromQL queries is
exported by a real scrape of `/metrics` over the real Postgres with a workload in it, so the
dashboard cannot drift from the names (as dashboards do: temporalio/dashboards#35)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import pytest_asyncio
import yaml

from appliance import metrics, settings
from appliance.db import pool as dbpool
from tests.support import scrape, workload

pytestmark = pytest.mark.timeout(60)

GRAFANA = Path(__file__).resolve().parents[2] / "packaging" / "grafana"
DASHBOARD = GRAFANA / "appliance.json"
PROVISIONING = GRAFANA / "dashboards.yaml"
# What Grafana puts in place of its variables before the query reaches Prometheus.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "6h",
    "$job": ".*",
    "$tenant": ".*",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target, rows' panels included, and of every variable."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = LABEL_VALUES.match(variable["query"]["query"])
            assert found, f"variable {variable['name']}: not label_values(selector, label)"
            yield f"variable {variable['name']}", found["selector"]


def series(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, once Grafana's variables are filled in."""
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


@pytest_asyncio.fixture(loop_scope="session")
async def page(db: dbpool.Pool, database_dsn: str) -> AsyncIterator[scrape.Page]:
    """A scrape of an exporter over the database with the workload in it."""
    await workload.make(db, database_dsn)
    exporter = metrics.Exporter(settings.MetricsSettings(), mesh=None, pool=db)
    async with scrape.serving(exporter) as url:
        yield await scrape.scrape(url)


class TestDashboard:
    @pytest.mark.asyncio(loop_scope="session")
    async def test_every_series_it_queries_is_exported(
        self, dashboard: dict[str, Any], page: scrape.Page
    ) -> None:
        """Each name in each query is a series of the page (a family's declared names count:
        a labelled counter nobody has touched yet still declares its `_total`)."""
        exported = page.series_names()
        missing = {
            where: sorted(series(expr) - exported)
            for where, expr in queries(dashboard)
            if series(expr) - exported
        }
        assert missing == {}

    def test_it_queries_every_family_of_the_appliance(self, dashboard: dict[str, Any]) -> None:
        """Not a vacuous check: the queries name the families of every area."""
        named = set().union(*(series(expr) for _, expr in queries(dashboard)))
        expected = {
            "appliance_postgres_up",
            "appliance_tasks",
            "appliance_task_duration_seconds_bucket",
            "appliance_step_duration_seconds_bucket",
            "appliance_queue_depth",
            "appliance_queue_oldest_age_seconds",
            "appliance_task_claims_total",
            "appliance_lease_takeovers_total",
            "appliance_crash_recoveries_total",
            "appliance_outbox_backlog_events",
            "appliance_outbox_oldest_age_seconds",
            "appliance_webhook_requests_total",
            "appliance_llm_tokens_total",
            "appliance_llm_cost_usd_total",
            "appliance_budget_remaining_usd",
            "appliance_approvals_pending",
            "appliance_exposure_violations_total",
        }
        assert expected <= named

    def test_a_misspelt_series_would_be_caught(self) -> None:
        """The parser finds the names inside functions, aggregations and ranges."""
        expr = (
            "histogram_quantile(0.9, sum by (le) "
            '(rate(appliance_tasks_typo_bucket{job=~"$job"}[$__rate_interval])))'
        )
        assert series(expr) == {"appliance_tasks_typo_bucket"}

    def test_panels_take_the_data_source_from_the_variable(self, dashboard: dict[str, Any]) -> None:
        """Provisioned anywhere: no data source uid of one Grafana is baked in."""
        sources = {
            json.dumps(target["datasource"], sort_keys=True)
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])
        }
        assert sources == {
            json.dumps({"type": "prometheus", "uid": "${datasource}"}, sort_keys=True)
        }
        assert dashboard["uid"] == "appliance"


class TestProvisioning:
    def test_the_provider_loads_dashboards_from_a_folder(self) -> None:
        """A file provider Grafana accepts: apiVersion 1, one provider of type file with a path."""
        document = yaml.safe_load(PROVISIONING.read_text(encoding="utf-8"))
        assert document["apiVersion"] == 1
        (provider,) = document["providers"]
        assert provider["type"] == "file"
        assert Path(provider["options"]["path"]).is_absolute()
