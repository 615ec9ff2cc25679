"""Scraping `/metrics` the way Prometheus does: over a real socket, the page parsed by the
client library's own parser.

`serving(exporter)` serves an exporter's routes on a free loopback port for a block; `scrape`
GETs a page and returns it parsed, `Page.value(...)` sums the samples that match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import parser
from prometheus_client.metrics_core import Metric

from appliance import metrics

TIMEOUT_SECONDS = 10.0
# The sample names each type of family exports besides (or instead of) its own name.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
}


@dataclasses.dataclass(frozen=True)
class Page:
    """One answer of /metrics: status, headers, text, and the families parsed from it."""

    status: int
    content_type: str
    text: str
    families: dict[str, Metric]

    def value(self, sample: str, **labels: str) -> float:
        """The sum of the samples named `sample` whose labels include `labels` (0 if none)."""
        return sum(
            item.value
            for family in self.families.values()
            for item in family.samples
            if item.name == sample and labels.items() <= item.labels.items()
        )

    def labelled(self, sample: str, label: str, **labels: str) -> dict[str, float]:
        """The samples named `sample` whose labels include `labels`, summed by one label."""
        found: dict[str, float] = {}
        for family in self.families.values():
            for item in family.samples:
                if item.name == sample and labels.items() <= item.labels.items():
                    key = item.labels.get(label, "")
                    found[key] = found.get(key, 0.0) + item.value
        return found

    def series_names(self) -> set[str]:
        """Every series name the page exports: its samples', and those its families' types
        declare (a labelled family with no samples yet still declares them)."""
        names = {item.name for family in self.families.values() for item in family.samples}
        for family in self.families.values():
            names.add(family.name)
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        return names


@contextlib.asynccontextmanager
async def serving(exporter: metrics.Exporter) -> AsyncIterator[str]:
    """The exporter's routes on 127.0.0.1 for the block; yields the page's URL."""
    app = web.Application()
    app.add_routes(metrics.routes(exporter))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    finally:
        await runner.cleanup()


async def scrape(url: str, **headers: str) -> Page:
    """GET the page and parse it (an error page is returned with no families)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        text = await response.text()
        families: dict[str, Metric] = {}
        if response.status == 200:
            families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        return Page(response.status, response.headers.get("Content-Type", ""), text, families)


def close(left: float, right: Any, *, tolerance: float = 1e-9) -> bool:
    """Two amounts equal as floats carry them."""
    return math.isclose(left, float(right), rel_tol=tolerance, abs_tol=tolerance)
