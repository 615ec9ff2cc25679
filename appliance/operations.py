"""The console's services (`console.services`) on the database: what a person can see and do.

Built by the daemon on its pool and handed to the console's app; each method goes through the
same domain code the CLI uses (submission with the workflow's declared input, cancel and retry
with their audit entries, approval votes counted per person, the cost ledger's report), so the
console and the CLI always agree. Rows become the console's view models here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from appliance import approvals, details, errors, models, redaction, settings
from appliance.agents import loop
from appliance.console import services
from appliance.db import agents as dbagents
from appliance.db import audit as dbaudit
from appliance.db import costs as dbcosts
from appliance.db import grants as dbgrants
from appliance.db import nodes as dbnodes
from appliance.db import outbox as dboutbox
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.engine import registry, replay, submission


def build(pool: dbpool.Pool, config: settings.Settings) -> services.Services:
    """The services on `pool`, with the engine settings that submissions and retries use."""
    return services.Services(
        tasks=Tasks(pool, config.engine),
        approvals=Approvals(pool),
        costs=Costs(pool),
        audit=Audit(pool),
        workforce=Workforce(pool),
        events=Events(pool),
        details=details.build(pool, config),
        grants=Grants(pool),
    )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _summary_fields(task: models.Task) -> dict[str, Any]:
    return {
        field.name: getattr(task, field.name)
        for field in dataclasses.fields(task)
        if field.name in services.TaskSummary.model_fields
    }


class Tasks:
    def __init__(self, pool: dbpool.Pool, engine: settings.EngineSettings) -> None:
        self._pool = pool
        self._engine = engine

    @staticmethod
    def _query(tenants: Sequence[str], query: services.TaskNarrowing) -> dbtasks.TaskQuery:
        chosen = [t for t in tenants if query.tenant is None or t == query.tenant]
        return dbtasks.TaskQuery(
            tenants=chosen,
            state=query.state,
            workflow=query.workflow,
            agent=query.agent,
            text=query.text,
            since=query.since,
            until=query.until,
        )

    async def page(self, tenants: Sequence[str], query: services.TaskFilter) -> services.TaskPage:
        rows = await dbtasks.list_tasks_page(
            self._pool, self._query(tenants, query), before=query.before, limit=query.limit + 1
        )
        shown = rows[: query.limit]
        return services.TaskPage(
            tasks=[services.TaskSummary(**_summary_fields(t)) for t in shown],
            next_before=shown[-1].task_id if len(rows) > query.limit else None,
        )

    async def count(self, tenants: Sequence[str], query: services.TaskFilter) -> int:
        return await dbtasks.count_tasks_matching(self._pool, self._query(tenants, query))

    async def get(self, task_id: int) -> services.TaskDetail | None:
        task = await dbtasks.get_task(self._pool, task_id)
        if task is None:
            return None
        steps = await dbtasks.list_steps(self._pool, task_id)
        history = await dbtasks.list_attempts(self._pool, task_id)
        return services.TaskDetail(
            **_summary_fields(task),
            input=task.input,
            output=task.output,
            steps=[
                services.StepView(
                    position=s.position,
                    name=s.name,
                    attempt=s.attempt,
                    started_at=s.started_at,
                    duration_ms=s.duration_ms,
                    output=s.output,
                    error=s.error,
                )
                for s in steps
            ],
            attempt_history=[
                services.AttemptView(
                    attempt=a.attempt,
                    node=a.node,
                    worker=a.worker,
                    started_at=a.started_at,
                    ended_at=a.ended_at,
                    outcome=a.outcome,
                    error=a.error,
                )
                for a in history
            ],
        )

    async def submit(self, submission_: services.Submission, *, actor: str) -> services.Submitted:
        """The input checked against the workflow's declared input (and, for `agent.run`, the
        agent must exist) before anything is stored."""
        workflow = registry.registry.get(submission_.workflow)
        workflow.check_input(submission_.input)
        if await dbtenants.get_tenant(self._pool, submission_.tenant) is None:
            raise errors.UnknownTenantError(f"unknown tenant {submission_.tenant!r}")
        if submission_.workflow == loop.WORKFLOW and isinstance(submission_.input, dict):
            try:
                await dbagents.get_agent(
                    self._pool,
                    tenant_id=submission_.tenant,
                    name=str(submission_.input["agent"]),
                    version=_version(submission_.input.get("version")),
                )
            except errors.NotFoundError as exc:
                raise errors.InputError(f"the input names an unknown agent: {exc}") from exc
        submitted = await submission.submit(
            self._pool,
            registry.registry,
            self._engine,
            tenant_id=submission_.tenant,
            workflow=submission_.workflow,
            task_input=submission_.input,
            priority=submission_.priority,
            run_after=submission_.run_after,
            idempotency_key=submission_.idempotency_key,
            actor=actor,
        )
        return services.Submitted(task_id=submitted.task_id, created=submitted.created)

    async def cancel(self, task_id: int, *, actor: str) -> services.CommandResult:
        result = await dbtasks.cancel_task(self._pool, task_id=task_id, actor=actor)
        if result is None:
            raise errors.NotFoundError(f"no task {task_id}")
        if result.startswith("ended:"):
            raise errors.StateError(f"task {task_id} already ended: {result[len('ended:') :]}")
        return services.CommandResult(
            task_id=task_id, result="cancelling" if result == "cancelling" else "cancelled"
        )

    async def retry(self, task_id: int, *, actor: str) -> services.CommandResult:
        result = await dbtasks.retry_task(
            self._pool, task_id=task_id, actor=actor, attempts=self._engine.max_attempts
        )
        if result is None:
            raise errors.NotFoundError(f"no task {task_id}")
        if result != "queued":
            raise errors.StateError(
                f"task {task_id} is {result.removeprefix('refused:')}; "
                "only failed or cancelled tasks can be retried"
            )
        return services.CommandResult(task_id=task_id, result="queued")

    async def replay(
        self, task_id: int, request: services.ReplayRequest, *, actor: str
    ) -> services.ReplayResult:
        replayed = await replay.replay(
            self._pool,
            registry.registry,
            self._engine,
            task_id=task_id,
            from_step=request.from_step,
            actor=actor,
        )
        return services.ReplayResult(**dataclasses.asdict(replayed))

    async def replay_many(
        self, tenants: Sequence[str], request: services.BulkReplay, *, actor: str
    ) -> services.BulkReplayResult:
        """Every task the filter matches, oldest first, if it matches `expected` of them; a
        task that cannot be replayed (its code changed, no such step) is listed as refused."""
        query = self._query(tenants, request)
        count = await dbtasks.count_tasks_matching(self._pool, query)
        if count != request.expected:
            raise errors.StateError(
                f"the filter matches {count} task(s) now, not {request.expected}; "
                "count again before replaying"
            )
        if count > services.MAX_BULK:
            raise errors.InputError(
                f"the filter matches {count} tasks; at most {services.MAX_BULK} are replayed at "
                "once: narrow it"
            )
        found = await dbtasks.list_tasks_page(self._pool, query, before=None, limit=count + 1)
        if len(found) != count:
            raise errors.StateError(
                f"the filter matches {len(found)} task(s) now, not {request.expected}; "
                "count again before replaying"
            )
        replayed: list[services.ReplayResult] = []
        refused: list[services.ReplayRefusal] = []
        for task in sorted(found, key=lambda t: t.task_id):
            try:
                one = await self.replay(
                    task.task_id, services.ReplayRequest(from_step=request.from_step), actor=actor
                )
            except (errors.InputError, errors.StateError, errors.NotFoundError) as exc:
                refused.append(services.ReplayRefusal(task_id=task.task_id, reason=str(exc)))
                continue
            replayed.append(one)
        return services.BulkReplayResult(replayed=replayed, refused=refused)


def _version(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _approval(found: approvals.Approval) -> services.ApprovalView:
    return services.ApprovalView(
        approval_id=found.approval_id,
        tenant_id=found.tenant_id,
        task_id=found.task_id,
        step_key=found.step_key,
        tool=found.tool,
        action_class=found.action_class,
        arguments=redaction.registry.scrub(found.arguments),
        reason=found.reason,
        policy_version=found.policy_version,
        required_approvers=found.required_approvers,
        state=found.state,
        deadline=found.deadline,
        created_at=found.created_at,
        decided_at=found.decided_at,
        decision_reason=found.decision_reason,
        votes=[
            services.VoteView(
                approver=v.approver,
                declared_as=v.declared_as,
                decision=v.decision,
                reason=v.reason,
                voted_at=v.voted_at,
            )
            for v in found.votes
        ],
    )


class Approvals:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def list(
        self, tenants: Sequence[str], *, pending_only: bool, task_id: int | None
    ) -> list[services.ApprovalView]:
        found: list[approvals.Approval] = []
        for tenant in tenants:
            found.extend(
                await approvals.list_requests(
                    self._pool,
                    tenant_id=tenant,
                    task_id=task_id,
                    pending_only=pending_only,
                    limit=services.MAX_PAGE,
                )
            )
        if pending_only:
            found.sort(key=lambda a: (a.deadline, a.approval_id))
        else:
            found.sort(key=lambda a: a.approval_id, reverse=True)
        return [_approval(a) for a in found[: services.MAX_PAGE]]

    async def get(self, approval_id: int) -> services.ApprovalView | None:
        try:
            return _approval(await approvals.get(self._pool, approval_id))
        except errors.NotFoundError:
            return None

    async def vote(
        self, approval_id: int, vote: services.Vote, *, principal: str, declared_as: str
    ) -> services.ApprovalView:
        decided = await approvals.decide(
            self._pool,
            approval_id=approval_id,
            approver=principal,
            approve=vote.approve,
            reason=vote.reason,
            declared_as=declared_as,
        )
        return _approval(decided)


class Costs:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def report(
        self, tenants: Sequence[str], *, by: services.CostGrouping, since: dt.date | None
    ) -> list[services.CostRow]:
        """The ledger summed as `appliance cost --by` sums it, one tenant at a time."""
        rows: list[services.CostRow] = []
        for tenant in tenants:
            found = await dbcosts.report_costs(self._pool, by=by, tenant_id=tenant, since=since)
            rows.extend(_cost_row(row, tenant) for row in found)
        return rows

    async def budgets(self, tenants: Sequence[str]) -> list[services.BudgetView]:
        found: list[services.BudgetView] = []
        for tenant in tenants:
            spends = {
                s.scope: s
                for s in await dbcosts.get_budget_spend(self._pool, tenant_id=tenant, task_id=None)
            }
            for budget in await dbcosts.list_budgets(self._pool, tenant_id=tenant):
                spend = spends.get("month") if budget.scope == "month" else None
                found.append(
                    services.BudgetView(
                        tenant_id=budget.tenant_id,
                        scope=budget.scope,
                        task_id=budget.task_id,
                        usd_limit=str(budget.usd_limit),
                        spent_usd=_money(spend.spent_usd) if spend else None,
                        left_usd=_money(budget.usd_limit - spend.spent_usd) if spend else None,
                    )
                )
        return found


def _cost_row(row: dbcosts.CostRow, tenant: str) -> services.CostRow:
    return services.CostRow(
        tenant_id=row.tenant_id or tenant,
        agent=row.agent,
        agent_version=row.agent_version,
        model=row.model,
        day=row.day,
        task_id=row.task_id,
        calls=row.calls,
        input_tokens=row.input_tokens,
        cache_creation_input_tokens=row.cache_creation_input_tokens,
        cache_read_input_tokens=row.cache_read_input_tokens,
        output_tokens=row.output_tokens,
        cost_usd=str(row.cost_usd),
        uncached_cost_usd=str(row.uncached_cost_usd),
        saving_usd=str(row.saving_usd),
        saving_fraction=_money(row.saving_fraction),
    )


class Audit:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def search(
        self, tenants: Sequence[str], query: services.AuditQuery
    ) -> list[services.AuditEntryView]:
        chosen = [t for t in tenants if query.tenant is None or t == query.tenant]
        entries = await dbaudit.search_audit_entries(
            self._pool,
            tenants=chosen,
            task_id=query.task_id,
            actor=query.actor,
            action=query.action,
            since=query.since,
            until=query.until,
            limit=query.limit,
        )
        return [
            services.AuditEntryView(
                chain=e.chain,
                seq=e.seq,
                tenant_id=e.tenant_id,
                task_id=e.task_id,
                actor=e.actor,
                action=e.action,
                detail=e.detail,
                created_at=e.created_at,
                hash=e.hash,
            )
            for e in entries
        ]

    async def verify(self, tenants: Sequence[str]) -> services.ChainStatus:
        breaks = await dbaudit.find_tenant_chain_breaks(self._pool, tenants=list(tenants))
        return services.ChainStatus(
            verified=not breaks,
            breaks=[
                services.ChainBreakView(chain=b.chain, seq=b.seq, reason=b.reason) for b in breaks
            ],
        )


class Workforce:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def tenants(self) -> list[str]:
        return [t.tenant_id for t in await dbtenants.list_tenants(self._pool)]

    async def agents(self, tenants: Sequence[str]) -> list[services.AgentView]:
        found: list[services.AgentView] = []
        for tenant in tenants:
            agents = await dbagents.list_agents(self._pool, tenant_id=tenant)
            found.extend(_agent(agent) for agent in agents)
        return found

    async def nodes(self) -> list[services.NodeView]:
        return [
            services.NodeView(
                node=n.node,
                pid=n.pid,
                host=n.host,
                started_at=n.started_at,
                heartbeat_at=n.heartbeat_at,
                stopped_at=n.stopped_at,
            )
            for n in await dbnodes.list_nodes(self._pool)
        ]

    async def queue(self, tenants: Sequence[str]) -> list[services.QueueRow]:
        return [
            services.QueueRow.model_validate(dataclasses.asdict(row))
            for row in await dbtasks.count_queue(self._pool, tenants)
        ]


def _agent(agent: models.AgentVersion) -> services.AgentView:
    return services.AgentView(
        tenant_id=agent.tenant_id,
        name=agent.name,
        version=agent.version,
        model=agent.model,
        tools=list(agent.tools),
        max_tokens=agent.max_tokens,
        max_turns=agent.max_turns,
        content_hash=agent.content_hash,
        created_by=agent.created_by,
        created_at=agent.created_at,
    )


class Events:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def latest(self) -> int:
        return await dboutbox.latest_event_seq(self._pool)

    async def after(self, seq: int, *, limit: int) -> list[services.Event]:
        return [
            services.Event(
                seq=c.seq,
                type=c.type,
                tenant_id=c.tenant_id,
                task_id=c.task_id,
                created_at=c.created_at,
            )
            for c in await dboutbox.list_events_after(self._pool, seq=seq, limit=limit)
        ]


class Grants:
    def __init__(self, pool: dbpool.Pool) -> None:
        self._pool = pool

    async def roles_of(self, login: str) -> list[tuple[str, str]]:
        return [
            (g.tenant_id, g.role) for g in await dbgrants.list_console_grants(self._pool, login)
        ]
