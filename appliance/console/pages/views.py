"""The read pages: a task's timeline, approvals, cost, audit, workforce and the box.

Each reads through the services for the tenants the person sees; a task or approval of
another tenant is 404, as if it did not exist. Voting needs the approver role in the
request's tenant; the vote names the person's login and node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import urllib.parse
from decimal import Decimal
from typing import Any

from aiohttp import web

from appliance import errors, health
from appliance.console import identity, services
from appliance.console.pages import charts, timeline
from appliance.console.pages import visit as visits

LOAD_HOURS = 12
AUDIT_FILTERS = ("tenant", "task_id", "actor", "action", "since", "until")
EXPORT_LIMIT = 1000


def _number(request: web.Request, name: str, what: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise errors.NotFoundError(f"no {what} {raw}")
    return int(raw)


# ---- a task's timeline ---------------------------------------------------------------------------


async def task_page(visit: visits.Visit) -> web.StreamResponse:
    task_id = _number(visit.request, "task_id", "task")
    task = await visit.services.tasks.get(task_id)
    if task is None:
        raise errors.NotFoundError(f"no task {task_id}")
    visit.need(task.tenant_id, identity.Role.VIEWER, f"task {task_id}")
    found_entries, approvals, trace = await asyncio.gather(
        visit.services.audit.search(
            [task.tenant_id], services.AuditQuery(task_id=task_id, limit=1000)
        ),
        visit.services.approvals.list([task.tenant_id], pending_only=False, task_id=task_id),
        visit.details.trace(task_id, task.tenant_id),
    )
    entries = sorted(found_entries, key=lambda e: (e.created_at, e.chain, e.seq))
    now = dt.datetime.now(dt.UTC)
    found = timeline.spans(task, entries, approvals, trace, now=now)
    cost = sum((Decimal(c.cost_usd) for c in trace.model_calls), Decimal(0))
    return visit.render(
        "task.html",
        section="tasks",
        task=task,
        spans=found,
        drawing=timeline.draw(found),
        trace=trace,
        cost=cost,
        approvals=approvals,
        entries=entries,
        may_operate=visit.person.may(task.tenant_id, identity.Role.OPERATOR),
        ended=task.state in ("succeeded", "failed", "cancelled"),
    )


# ---- approvals -----------------------------------------------------------------------------------


async def approvals_page(visit: visits.Visit) -> web.StreamResponse:
    every = visit.request.query.get("all") == "1"
    found = await visit.services.approvals.list(
        await visit.tenants(), pending_only=not every, task_id=None
    )
    return visit.render(
        "approvals.html",
        section="approvals",
        approvals=found,
        every=every,
        may_vote={
            a.approval_id: visit.person.may(a.tenant_id, identity.Role.APPROVER) for a in found
        },
        voted={
            a.approval_id: any(v.approver == visit.person.principal for v in a.votes) for a in found
        },
        now=dt.datetime.now(dt.UTC),
    )


async def vote(visit: visits.Visit) -> web.StreamResponse:
    """Approve or deny with a reason, as the person (login and node); back to the inbox."""
    approval_id = _number(visit.request, "approval_id", "approval")
    form = await visit.form()
    found = await visit.services.approvals.get(approval_id)
    if found is None:
        raise errors.NotFoundError(f"no approval {approval_id}")
    visit.need(found.tenant_id, identity.Role.APPROVER, f"approval {approval_id}")
    decision = form.get("decision", "")
    if decision not in ("approve", "deny"):
        raise errors.InputError("decision: approve or deny")
    ballot: services.Vote = visits.parsed(
        services.Vote,
        {"approve": decision == "approve", "reason": form.get("reason", "").strip() or None},
    )
    person = visit.person
    await visit.services.approvals.vote(
        approval_id,
        ballot,
        principal=person.principal,
        declared_as=f"{person.name} on {person.node}",
    )
    back = form.get("next", "")
    return visits.redirect(back if back.startswith("/tasks/") else "/approvals")


# ---- audit ---------------------------------------------------------------------------------------


def _audit_query(visit: visits.Visit, *, limit: int) -> services.AuditQuery:
    fields: dict[str, Any] = visits.given(visit.request.query, *AUDIT_FILTERS)
    for name in ("since", "until"):
        if name in fields:
            fields[name] = visits.instant(fields[name], name)
    fields["limit"] = limit
    query: services.AuditQuery = visits.parsed(services.AuditQuery, fields)
    return query


async def audit_page(visit: visits.Visit) -> web.StreamResponse:
    query = _audit_query(visit, limit=200)
    tenants = await visit.tenants()
    return visit.render(
        "audit.html",
        section="audit",
        entries=await visit.services.audit.search(tenants, query),
        chain=await visit.services.audit.verify(tenants),
        filters=visits.given(visit.request.query, *AUDIT_FILTERS),
        filter_query=urllib.parse.urlencode(visits.given(visit.request.query, *AUDIT_FILTERS)),
        tenants=tenants,
    )


async def audit_export(visit: visits.Visit) -> web.StreamResponse:
    """The search's entries as JSON lines, newest first (at most EXPORT_LIMIT)."""
    query = _audit_query(visit, limit=EXPORT_LIMIT)
    entries = await visit.services.audit.search(await visit.tenants(), query)
    body = "".join(json.dumps(e.model_dump(mode="json"), sort_keys=True) + "\n" for e in entries)
    return web.Response(
        text=body,
        content_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
    )


# ---- workforce -----------------------------------------------------------------------------------


async def workforce_page(visit: visits.Visit) -> web.StreamResponse:
    tenants = await visit.tenants()
    hours = await visit.details.hourly_load(tenants, hours=LOAD_HOURS)
    return visit.render(
        "workforce.html",
        section="workforce",
        agents=await visit.services.workforce.agents(tenants),
        nodes=await visit.services.workforce.nodes(),
        load={n.node: n for n in await visit.details.node_load()},
        process=visit.details.this_process(),
        queue=await visit.services.workforce.queue(tenants),
        chart=charts.stacked(
            [
                charts.Column(h.hour.strftime("%H:00"), [("busy workers", h.busy_seconds / 3600)])
                for h in hours
            ],
            unit="workers",
        ),
        hours=hours,
        now=dt.datetime.now(dt.UTC),
    )


async def agent_page(visit: visits.Visit) -> web.StreamResponse:
    """An agent's version against another: the persona as a diff, model and tools side by side."""
    tenant = visit.request.match_info["tenant"]
    name = visit.request.match_info["name"]
    visit.need(tenant, identity.Role.VIEWER, f"agent {name}")
    agents = [a for a in await visit.services.workforce.agents([tenant]) if a.name == name]
    if not agents:
        raise errors.NotFoundError(f"no agent {name}")
    newest = agents[0].version
    to = _version(visit.request.query.get("to"), newest)
    since = _version(visit.request.query.get("from"), max(to - 1, 1))
    new = await visit.details.agent_version(tenant, name, to)
    old = await visit.details.agent_version(tenant, name, since)
    if new is None or old is None:
        raise errors.NotFoundError(f"no such version of agent {name}")
    diff = list(
        difflib.unified_diff(
            old.persona.splitlines(),
            new.persona.splitlines(),
            f"v{old.version}",
            f"v{new.version}",
            lineterm="",
        )
    )
    return visit.render(
        "agent.html",
        section="workforce",
        old=old,
        new=new,
        diff=diff,
        versions=list(range(1, newest + 1)),
    )


def _version(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise errors.InputError("version: a whole number")
    return int(raw)


# ---- the box -------------------------------------------------------------------------------------


async def box_page(visit: visits.Visit) -> web.StreamResponse:
    readiness = visit.request.app[health.READINESS]
    return visit.render(
        "box.html",
        section="box",
        ready=readiness.ready,
        reasons=readiness.reasons(),
        box=await visit.details.box(),
    )
