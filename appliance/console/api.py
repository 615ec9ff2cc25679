"""The JSON API under /api/v1: the console's actions for its pages and for scripts.

Each operation is declared once (`OPERATIONS`): method, path, the pydantic models of its query,
body and answer, and the least role it needs. The routes and the OpenAPI 3.1 document
(`/api/v1/openapi.json`, `openapi.document`) are both made from that table, so they cannot
drift. Identity and roles are the console's (`identity`): a person sees the tenants granted to
them only; a task, approval or entry of another tenant is 404, as if it did not exist; a role
too low in a tenant they do see is 403. Every write records the person's login and node.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import pydantic
from aiohttp import web

from appliance import errors
from appliance.console import identity, openapi, services

PREFIX = "/api/v1"
ID_MAX = services.ID_MAX

ServicesOf = Callable[[web.Request], services.Services]
PersonOf = Callable[[web.Request], identity.Person]
TokenOf = Callable[[identity.Person], str]


class Problem(pydantic.BaseModel):
    """Every error answer: one line saying what is wrong."""

    error: str
    login: str | None = None


class Me(pydantic.BaseModel):
    """Who the console takes you for, your role in each tenant you see, and your token for
    requests that change state (send it as X-CSRF-Token)."""

    login: str
    name: str
    node: str
    via: identity.Via
    roles: dict[str, Literal["viewer", "operator", "approver", "admin"]]
    csrf_token: str


class Count(pydantic.BaseModel):
    count: int


class TaskPath(pydantic.BaseModel):
    task_id: int = pydantic.Field(ge=1, le=ID_MAX)


class ApprovalPath(pydantic.BaseModel):
    approval_id: int = pydantic.Field(ge=1, le=ID_MAX)


class ApprovalQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    pending_only: bool = True
    task_id: int | None = pydantic.Field(default=None, ge=1, le=ID_MAX)


class CostQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    by: services.CostGrouping = "tenant"
    since: dt.date | None = None


@dataclasses.dataclass(frozen=True)
class Call:
    """One request's person and services, for an operation."""

    person: identity.Person
    services: services.Services
    token: str

    async def tenants(self) -> list[str]:
        """The tenants the person sees, in order."""
        return self.person.visible(await self.services.workforce.tenants())

    def need(self, tenant: str, role: identity.Role, what: str) -> None:
        """404 when the tenant is not the person's, 403 when their role there is too low."""
        mine = self.person.role_in(tenant)
        if mine is None:
            raise errors.NotFoundError(f"no {what}")
        if mine < role:
            raise errors.NotAllowedError(
                f"{self.person.login} is {mine.label} in tenant {tenant}: {role.label} or more "
                "is needed"
            )


@dataclasses.dataclass(frozen=True)
class Operation:
    """One route of the API, declared once for routing and for the OpenAPI document."""

    method: Literal["GET", "POST"]
    path: str  # under PREFIX
    name: str
    summary: str
    response: Any  # the answer's type
    run: Callable[..., Awaitable[Any]]
    path_model: type[pydantic.BaseModel] | None = None
    query: type[pydantic.BaseModel] | None = None
    body: type[pydantic.BaseModel] | None = None
    status: int = 200
    refusals: tuple[int, ...] = (400, 403, 404)


def error(status: int, message: str, *, login: str | None = None) -> web.Response:
    """An error answer: `{"error": "..."}` with `status`."""
    return web.json_response(
        Problem(error=message, login=login).model_dump(exclude_none=True), status=status
    )


def _one_line(exc: pydantic.ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _parsed(model: type[pydantic.BaseModel], data: Mapping[str, Any]) -> pydantic.BaseModel:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise errors.InputError(_one_line(exc)) from None


async def _body(model: type[pydantic.BaseModel], request: web.Request) -> pydantic.BaseModel:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"null")
    except pydantic.ValidationError as exc:
        raise errors.InputError(_one_line(exc)) from None


def _handler(
    operation: Operation, services_of: ServicesOf, person_of: PersonOf, token_of: TokenOf
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(operation.response)

    async def handle(request: web.Request) -> web.StreamResponse:
        person = person_of(request)
        call = Call(person, services_of(request), token_of(person))
        arguments: dict[str, Any] = {}
        if operation.path_model is not None:
            arguments["path"] = _parsed(operation.path_model, request.match_info)
        if operation.query is not None:
            arguments["query"] = _parsed(operation.query, _query(request))
        if operation.body is not None:
            arguments["body"] = await _body(operation.body, request)
        answer = await operation.run(call, **arguments)
        return web.Response(
            body=adapter.dump_json(answer),
            status=operation.status,
            content_type="application/json",
        )

    return handle


def _query(request: web.Request) -> dict[str, str]:
    """The query string, one value per name (a name given twice is a mistake)."""
    found: dict[str, str] = {}
    for name, value in request.query.items():
        if name in found:
            raise errors.InputError(f"{name}: given more than once")
        found[name] = value
    return found


def add_routes(
    app: web.Application, services_of: ServicesOf, person_of: PersonOf, token_of: TokenOf
) -> None:
    """Every operation of OPERATIONS, and the OpenAPI document."""
    for operation in OPERATIONS:
        handler = _handler(operation, services_of, person_of, token_of)
        app.router.add_route(operation.method, PREFIX + openapi.route_path(operation.path), handler)
    streams = ["/events"]  # served by `events`
    document = json.dumps(openapi.document(OPERATIONS, PREFIX, Problem, streams=streams)).encode()

    async def serve_document(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get(PREFIX + "/openapi.json", serve_document)


# ---- the operations ------------------------------------------------------------------------------


async def _me(call: Call) -> Me:
    tenants = await call.tenants()
    roles: dict[str, Any] = {}
    for tenant in tenants:
        role = call.person.role_in(tenant)
        if role is not None:
            roles[tenant] = role.label
    return Me(
        login=call.person.login,
        name=call.person.name,
        node=call.person.node,
        via=call.person.via,
        roles=roles,
        csrf_token=call.token,
    )


async def _tasks(call: Call, query: services.TaskFilter) -> services.TaskPage:
    return await call.services.tasks.page(await call.tenants(), query)


async def _count(call: Call, query: services.TaskFilter) -> Count:
    return Count(count=await call.services.tasks.count(await call.tenants(), query))


async def _task(call: Call, path: TaskPath) -> services.TaskDetail:
    found = await call.services.tasks.get(path.task_id)
    if found is None:
        raise errors.NotFoundError(f"no task {path.task_id}")
    call.need(found.tenant_id, identity.Role.VIEWER, f"task {path.task_id}")
    return found


async def _submit(call: Call, body: services.Submission) -> services.Submitted:
    call.need(body.tenant, identity.Role.OPERATOR, f"tenant {body.tenant}")
    return await call.services.tasks.submit(body, actor=call.person.actor)


async def _cancel(call: Call, path: TaskPath) -> services.CommandResult:
    task = await _task(call, path)
    call.need(task.tenant_id, identity.Role.OPERATOR, f"task {path.task_id}")
    return await call.services.tasks.cancel(path.task_id, actor=call.person.actor)


async def _retry(call: Call, path: TaskPath) -> services.CommandResult:
    task = await _task(call, path)
    call.need(task.tenant_id, identity.Role.OPERATOR, f"task {path.task_id}")
    return await call.services.tasks.retry(path.task_id, actor=call.person.actor)


async def _replay(
    call: Call, path: TaskPath, body: services.ReplayRequest
) -> services.ReplayResult:
    task = await _task(call, path)
    call.need(task.tenant_id, identity.Role.OPERATOR, f"task {path.task_id}")
    return await call.services.tasks.replay(path.task_id, body, actor=call.person.actor)


async def _replay_many(call: Call, body: services.BulkReplay) -> services.BulkReplayResult:
    tenants = [t for t in await call.tenants() if body.tenant is None or t == body.tenant]
    if body.tenant is not None and not tenants:
        raise errors.NotFoundError(f"no tenant {body.tenant}")
    for tenant in tenants:
        call.need(tenant, identity.Role.OPERATOR, f"tenant {tenant}")
    return await call.services.tasks.replay_many(tenants, body, actor=call.person.actor)


async def _approvals(call: Call, query: ApprovalQuery) -> list[services.ApprovalView]:
    return await call.services.approvals.list(
        await call.tenants(), pending_only=query.pending_only, task_id=query.task_id
    )


async def _approval(call: Call, path: ApprovalPath) -> services.ApprovalView:
    found = await call.services.approvals.get(path.approval_id)
    if found is None:
        raise errors.NotFoundError(f"no approval {path.approval_id}")
    call.need(found.tenant_id, identity.Role.VIEWER, f"approval {path.approval_id}")
    return found


async def _vote(call: Call, path: ApprovalPath, body: services.Vote) -> services.ApprovalView:
    found = await _approval(call, path)
    call.need(found.tenant_id, identity.Role.APPROVER, f"approval {path.approval_id}")
    person = call.person
    return await call.services.approvals.vote(
        path.approval_id,
        body,
        principal=person.principal,
        declared_as=f"{person.name} on {person.node}",
    )


async def _costs(call: Call, query: CostQuery) -> list[services.CostRow]:
    return await call.services.costs.report(await call.tenants(), by=query.by, since=query.since)


async def _budgets(call: Call) -> list[services.BudgetView]:
    return await call.services.costs.budgets(await call.tenants())


async def _audit(call: Call, query: services.AuditQuery) -> list[services.AuditEntryView]:
    return await call.services.audit.search(await call.tenants(), query)


async def _verify(call: Call) -> services.ChainStatus:
    return await call.services.audit.verify(await call.tenants())


async def _agents(call: Call) -> list[services.AgentView]:
    return await call.services.workforce.agents(await call.tenants())


async def _nodes(call: Call) -> list[services.NodeView]:
    return await call.services.workforce.nodes()


async def _queue(call: Call) -> list[services.QueueRow]:
    return await call.services.workforce.queue(await call.tenants())


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/me", "getMe", "Who you are here, your roles and token", Me, _me),
    Operation(
        "GET",
        "/tasks",
        "listTasks",
        "Tasks, newest first, filtered and paged",
        services.TaskPage,
        _tasks,
        query=services.TaskFilter,
    ),
    Operation(
        "GET",
        "/tasks/count",
        "countTasks",
        "How many tasks a filter matches",
        Count,
        _count,
        query=services.TaskFilter,
    ),
    Operation(
        "POST",
        "/tasks",
        "submitTask",
        "Enqueue a task (operator)",
        services.Submitted,
        _submit,
        body=services.Submission,
        status=201,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "POST",
        "/tasks/replay",
        "replayTasks",
        "Replay every task a filter matches, once its count is confirmed (operator)",
        services.BulkReplayResult,
        _replay_many,
        body=services.BulkReplay,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "GET",
        "/tasks/{task_id}",
        "getTask",
        "A task with its steps and attempts",
        services.TaskDetail,
        _task,
        path_model=TaskPath,
    ),
    Operation(
        "POST",
        "/tasks/{task_id}/cancel",
        "cancelTask",
        "Cancel a task (operator)",
        services.CommandResult,
        _cancel,
        path_model=TaskPath,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "POST",
        "/tasks/{task_id}/retry",
        "retryTask",
        "Queue a failed task again (operator)",
        services.CommandResult,
        _retry,
        path_model=TaskPath,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "POST",
        "/tasks/{task_id}/replay",
        "replayTask",
        "A new task replaying this one, from one of its steps or whole (operator)",
        services.ReplayResult,
        _replay,
        path_model=TaskPath,
        body=services.ReplayRequest,
        status=201,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "GET",
        "/approvals",
        "listApprovals",
        "Approval requests (pending: soonest deadline first)",
        list[services.ApprovalView],
        _approvals,
        query=ApprovalQuery,
    ),
    Operation(
        "GET",
        "/approvals/{approval_id}",
        "getApproval",
        "An approval request with its votes",
        services.ApprovalView,
        _approval,
        path_model=ApprovalPath,
    ),
    Operation(
        "POST",
        "/approvals/{approval_id}/votes",
        "voteOnApproval",
        "Approve or deny (approver)",
        services.ApprovalView,
        _vote,
        path_model=ApprovalPath,
        body=services.Vote,
        refusals=(400, 403, 404, 409),
    ),
    Operation(
        "GET",
        "/costs",
        "reportCosts",
        "The cost ledger summed per group",
        list[services.CostRow],
        _costs,
        query=CostQuery,
    ),
    Operation(
        "GET",
        "/budgets",
        "listBudgets",
        "Budgets and what is left",
        list[services.BudgetView],
        _budgets,
    ),
    Operation(
        "GET",
        "/audit",
        "searchAudit",
        "Audit entries, newest first",
        list[services.AuditEntryView],
        _audit,
        query=services.AuditQuery,
    ),
    Operation(
        "GET",
        "/audit/verify",
        "verifyAudit",
        "Whether the hash chains verify",
        services.ChainStatus,
        _verify,
    ),
    Operation(
        "GET",
        "/workforce/agents",
        "listAgents",
        "Agents, newest version of each",
        list[services.AgentView],
        _agents,
    ),
    Operation(
        "GET",
        "/workforce/nodes",
        "listNodes",
        "Node names and their holders",
        list[services.NodeView],
        _nodes,
    ),
    Operation(
        "GET",
        "/workforce/queue",
        "getQueue",
        "Tasks not yet ended, per workflow",
        list[services.QueueRow],
        _queue,
    ),
)
