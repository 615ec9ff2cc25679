"""The Tasks page (dispatch): submit a task, the filtered list, bulk cancel and retry.

The list's filters live in the URL (a GET form), so a filtered view can be linked and
reloaded; pages go by task id (keyset: `before`), newest first. A submission is checked by the
services (the workflow's declared input, the agent exists) before it is queued; a mistake
shows the form again with what was typed and one line saying why. Bulk cancel or retry acts
on the filtered set within the tenants where the person is an operator: a first page counts
it, and the action runs only if that count still holds when confirmed.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web

from appliance import errors
from appliance.console import identity, services
from appliance.console.pages import visit as visits

AGENT_WORKFLOW = "agent.run"
FILTERS = ("state", "tenant", "workflow", "agent", "text", "since", "until")
STATES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
BULK_LIMIT = 10_000
BULK_STATES: dict[str, tuple[str, ...]] = {
    "cancel": ("queued", "running", "waiting"),
    "retry": ("failed", "cancelled"),
}

Action = Literal["cancel", "retry"]


def task_filter(query: Mapping[str, str], *, limit: int | None = None) -> services.TaskFilter:
    """The list's filter from the query string (blank fields are no filter)."""
    fields: dict[str, Any] = visits.given(query, *FILTERS, "before", "limit")
    for name in ("since", "until"):
        if name in fields:
            fields[name] = visits.instant(fields[name], name)
    if limit is not None:
        fields["limit"] = limit
    parsed: services.TaskFilter = visits.parsed(services.TaskFilter, fields)
    return parsed


def filter_query(query: Mapping[str, str]) -> str:
    """The filters (and page size) of `query` as a query string, for links that keep them."""
    return urllib.parse.urlencode(visits.given(query, *FILTERS, "limit"))


async def list_page(visit: visits.Visit) -> web.StreamResponse:
    return await _list(visit, form={}, problem=None, status=200)


async def _list(
    visit: visits.Visit, *, form: Mapping[str, str], problem: str | None, status: int
) -> web.Response:
    query = visit.request.query
    chosen = task_filter(query)
    tenants = await visit.tenants()
    found = await visit.services.tasks.page(tenants, chosen)
    agents = await visit.services.workforce.agents(tenants)
    keep = filter_query(query)
    return visit.render(
        "tasks.html",
        section="tasks",
        status=status,
        tasks=found.tasks,
        next_page=(
            f"?{keep}&before={found.next_before}" if keep else f"?before={found.next_before}"
        )
        if found.next_before
        else None,
        filters=visits.given(query, *FILTERS),
        filter_query=keep,
        states=STATES,
        tenants=tenants,
        submit_tenants=await visit.tenants_where(identity.Role.OPERATOR),
        agents=sorted({a.name for a in agents}),
        form=form,
        problem=problem,
    )


async def submit(visit: visits.Visit) -> web.StreamResponse:
    form = await visit.form()
    try:
        submission = _submission(form)
        visit.need(submission.tenant, identity.Role.OPERATOR, f"tenant {submission.tenant}")
        submitted = await visit.services.tasks.submit(submission, actor=visit.person.actor)
    except errors.ApplianceError as exc:
        if exc.http_status not in (400, 409):
            raise
        return await _list(
            visit, form=form, problem=exc.message.splitlines()[0], status=exc.http_status
        )
    return visits.redirect(f"/tasks/{submitted.task_id}")


def _submission(form: Mapping[str, str]) -> services.Submission:
    fields: dict[str, Any] = visits.given(form, "tenant", "priority", "idempotency_key")
    if form.get("kind", "agent") == "agent":
        agent = form.get("agent", "").strip()
        if not agent:
            raise errors.InputError("agent: name the agent to run")
        fields["workflow"] = AGENT_WORKFLOW
        fields["input"] = {"agent": agent, "prompt": form.get("prompt", "")}
    else:
        fields["workflow"] = form.get("workflow", "").strip()
        text = form.get("input", "").strip()
        fields["input"] = visits.json_value(text, "input") if text else None
    if form.get("run_after", "").strip():
        fields["run_after"] = visits.instant(form["run_after"].strip(), "run_after")
    submission: services.Submission = visits.parsed(services.Submission, fields)
    return submission


async def command(visit: visits.Visit) -> web.StreamResponse:
    """Cancel or retry one task, then back to its timeline."""
    task_id = _task_id(visit.request)
    action = visit.request.match_info["action"]
    task = await visit.services.tasks.get(task_id)
    if task is None:
        raise errors.NotFoundError(f"no task {task_id}")
    visit.need(task.tenant_id, identity.Role.OPERATOR, f"task {task_id}")
    if action == "cancel":
        await visit.services.tasks.cancel(task_id, actor=visit.person.actor)
    else:
        await visit.services.tasks.retry(task_id, actor=visit.person.actor)
    return visits.redirect(f"/tasks/{task_id}")


def _task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise errors.NotFoundError(f"no task {raw}")
    return int(raw)


def _action(value: str) -> Action:
    if value == "cancel":
        return "cancel"
    if value == "retry":
        return "retry"
    raise errors.InputError("action: cancel or retry")


async def _bulk_set(
    visit: visits.Visit, query: Mapping[str, str], action: Action
) -> tuple[list[str], services.TaskFilter, int]:
    """The tenants acted in, the filter, and how many tasks it matches there now."""
    tenants = await visit.tenants_where(identity.Role.OPERATOR)
    chosen = task_filter(query, limit=services.MAX_PAGE)
    if chosen.state is not None and chosen.state not in BULK_STATES[action]:
        return tenants, chosen, 0
    count = 0
    for state in (chosen.state,) if chosen.state else BULK_STATES[action]:
        narrowed = chosen.model_copy(update={"state": state})
        count += await visit.services.tasks.count(tenants, narrowed)
    return tenants, chosen, count


async def bulk_confirm(visit: visits.Visit) -> web.StreamResponse:
    """How many tasks the action would touch, and the form that does it."""
    query = visit.request.query
    action = _action(query.get("action", ""))
    _, _, count = await _bulk_set(visit, query, action)
    return visit.render(
        "bulk.html",
        section="tasks",
        action=action,
        count=count,
        limit=BULK_LIMIT,
        filters=visits.given(query, *FILTERS),
        filter_query=filter_query(query),
        result=None,
    )


async def bulk(visit: visits.Visit) -> web.StreamResponse:
    """Cancel or retry the filtered set, if it still has the count that was confirmed."""
    form = await visit.form()
    action = _action(form.get("action", ""))
    tenants, chosen, count = await _bulk_set(visit, form, action)
    expected = form.get("expected", "")
    if str(count) != expected or count > BULK_LIMIT:
        return visit.render(
            "bulk.html",
            section="tasks",
            status=409,
            action=action,
            count=count,
            limit=BULK_LIMIT,
            filters=visits.given(form, *FILTERS),
            filter_query=filter_query(form),
            result=None,
            changed=expected,
        )
    done, refused = await _apply(visit, tenants, chosen, action)
    return visit.render(
        "bulk.html",
        section="tasks",
        action=action,
        count=count,
        limit=BULK_LIMIT,
        filters=visits.given(form, *FILTERS),
        filter_query=filter_query(form),
        result={"done": done, "refused": refused},
    )


async def _apply(
    visit: visits.Visit, tenants: list[str], chosen: services.TaskFilter, action: Action
) -> tuple[int, list[str]]:
    """Each task of the set, one command each (each its own audit entry)."""
    done = 0
    refused: list[str] = []
    for state in (chosen.state,) if chosen.state else BULK_STATES[action]:
        narrowed = chosen.model_copy(update={"state": state, "before": None})
        while True:
            found = await visit.services.tasks.page(tenants, narrowed)
            for task in found.tasks:
                try:
                    if action == "cancel":
                        await visit.services.tasks.cancel(task.task_id, actor=visit.person.actor)
                    else:
                        await visit.services.tasks.retry(task.task_id, actor=visit.person.actor)
                    done += 1
                except errors.ApplianceError as exc:
                    refused.append(f"task {task.task_id}: {exc.message.splitlines()[0]}")
            if found.next_before is None:
                break
            narrowed = narrowed.model_copy(update={"before": found.next_before})
    return done, refused
