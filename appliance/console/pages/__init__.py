"""The console's pages: server-rendered HTML (Jinja2 templates), live without a build step.

Tasks (dispatch), a task's timeline, Workforce, Cost, Approvals, Audit and Box, each a plain
page of links and forms that works with JavaScript off: forms post (with the person's CSRF
token) and answer with a redirect. One static script, `static/console.js` (no inline script:
the CSP allows scripts of this origin only), listens to `/api/v1/events` and, within a second
of a change the person may see, fetches the page again and swaps its live parts
(`data-live`), leaving forms being typed into alone.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.console.pages import costs, tasks, views
from appliance.console.pages import visit as visits

STATIC = Path(__file__).parent.parent / "static"
STATIC_PREFIX = "/static/"  # open to anyone: the 403 page uses the stylesheet too

Wiring = visits.Wiring


def add_routes(app: web.Application, wiring: visits.Wiring) -> None:
    """Every page, the static files, and the template filters they use."""
    app[visits.WIRING] = wiring
    wiring.templates.filters.update(FILTERS)
    page = visits.handler
    routes = app.router
    routes.add_get("/", _home)
    routes.add_get("/tasks", page(tasks.list_page))
    routes.add_post("/tasks", page(tasks.submit))
    routes.add_get("/tasks/bulk", page(tasks.bulk_confirm))
    routes.add_post("/tasks/bulk", page(tasks.bulk))
    routes.add_get("/tasks/{task_id}", page(views.task_page))
    routes.add_post("/tasks/{task_id}/{action:cancel|retry}", page(tasks.command))
    routes.add_get("/approvals", page(views.approvals_page))
    routes.add_post("/approvals/{approval_id}", page(views.vote))
    routes.add_get("/costs", page(costs.costs_page))
    routes.add_get("/audit", page(views.audit_page))
    routes.add_get("/audit/export", page(views.audit_export))
    routes.add_get("/workforce", page(views.workforce_page))
    routes.add_get("/workforce/agents/{tenant}/{name}", page(views.agent_page))
    routes.add_get("/box", page(views.box_page))
    routes.add_static(STATIC_PREFIX, STATIC)


async def _home(_: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/tasks")


def _usd(value: Decimal | str | None) -> str:
    """As `appliance cost` prints it: six decimals."""
    if value is None:
        return "-"
    return f"${Decimal(value):.6f}"


def _percent(value: Decimal | str | None) -> str:
    if value is None:
        return "-"
    return f"{Decimal(value):.0%}"


def _when(value: dt.datetime | None) -> str:
    """UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    return _seconds(seconds) + (" ago" if seconds >= 0 else " from now")


def _seconds(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _mebibytes(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _number(value: int) -> str:
    return f"{value:,}"


def _local(value: dt.datetime | None) -> str:
    """For a `datetime-local` field (UTC, no zone)."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")


FILTERS: dict[str, Any] = {
    "usd": _usd,
    "percent": _percent,
    "when": _when,
    "ms": _ms,
    "ago": _ago,
    "seconds": _seconds,
    "mib": _mebibytes,
    "pretty": _pretty,
    "number": _number,
    "local": _local,
}
