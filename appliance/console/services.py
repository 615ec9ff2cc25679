"""What the console can read and do, as typed services handed to its app when it is built.

The web layer (pages, API, SSE) calls these and nothing below them: it never imports `db`.
The daemon builds the implementation (`appliance.operations`) on its pool. Every read is
scoped to the tenants the caller passes (the person's visible tenants); every write names its
actor (`identity.Person.actor`: login and node), which its audit entry records.

The values are pydantic models: the JSON API serialises them, and its OpenAPI document is
generated from them. Amounts of money are strings of their exact decimal digits, as in the
CLI's `--json`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Annotated, Literal, Protocol

import pydantic

from appliance.console import details

TaskState = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
CostGrouping = Literal["tenant", "agent", "model", "day", "task", "all"]
_TENANT = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_PAGE = 200
MAX_BULK = 500  # tasks one bulk replay may start


def _utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("holds a NUL character")
    return value


Moment = Annotated[pydantic.AwareDatetime, pydantic.AfterValidator(_utc)]
Text = Annotated[str, pydantic.AfterValidator(_no_nul)]
ID_MAX = 2**63 - 1


class _View(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


# ---- tasks ---------------------------------------------------------------------------------------


class TaskSummary(_View):
    """A task as a list shows it."""

    task_id: int
    tenant_id: str
    workflow: str
    state: TaskState
    wait_reason: str | None
    priority: int
    run_after: dt.datetime
    attempts: int
    max_attempts: int
    crashes: int
    lease_node: str | None
    cancel_requested_by: str | None
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    replay_of: int | None = pydantic.Field(description="the task this one replays")
    replay_from: str | None = pydantic.Field(
        description="the step it ran again from (null: every step)"
    )


class StepView(_View):
    """A step's checkpoint (attempt 0: reused from the task this one replays)."""

    position: int
    name: str
    attempt: int
    started_at: dt.datetime
    duration_ms: float
    output: pydantic.JsonValue
    error: pydantic.JsonValue = pydantic.Field(
        description="the failure a handled step raised ({types, message}), or null"
    )


class AttemptView(_View):
    """One run of the task by a worker."""

    attempt: int
    node: str
    worker: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    outcome: str
    error: str | None


class TaskDetail(TaskSummary):
    """A task with its input, output, checkpoints and attempts."""

    input: pydantic.JsonValue
    output: pydantic.JsonValue
    steps: list[StepView]
    attempt_history: list[AttemptView]


class TaskNarrowing(_View):
    """The fields that narrow a set of tasks (each one that is given)."""

    tenant: str | None = pydantic.Field(default=None, pattern=_TENANT)
    state: TaskState | None = None
    workflow: Text | None = pydantic.Field(default=None, max_length=200)
    agent: Text | None = pydantic.Field(default=None, max_length=200)
    text: Text | None = pydantic.Field(
        default=None, max_length=200, description="found in the input or the error"
    )
    since: Moment | None = pydantic.Field(default=None, description="created at or after")
    until: Moment | None = pydantic.Field(default=None, description="created before")


class TaskFilter(TaskNarrowing):
    """Which tasks a list shows: every field narrows it; `before` pages (keyset, newest first)."""

    before: int | None = pydantic.Field(
        default=None, ge=1, le=ID_MAX, description="only tasks with a smaller id (the next page)"
    )
    limit: int = pydantic.Field(default=50, ge=1, le=MAX_PAGE)


class TaskPage(_View):
    """One page of tasks, newest first; `next_before` asks for the next page."""

    tasks: list[TaskSummary]
    next_before: int | None


class Submission(_View):
    """A task to enqueue; the input is checked against the workflow's declared input first."""

    tenant: str = pydantic.Field(pattern=_TENANT)
    workflow: Text = pydantic.Field(min_length=1, max_length=200)
    input: pydantic.JsonValue = None
    priority: int = pydantic.Field(default=0, ge=-1000, le=1000)
    run_after: Moment | None = None
    idempotency_key: Text | None = pydantic.Field(default=None, min_length=1, max_length=200)

    @pydantic.field_validator("input")
    @classmethod
    def _storable(cls, value: pydantic.JsonValue) -> pydantic.JsonValue:
        if "\\u0000" in json.dumps(value):
            raise ValueError("holds a NUL character, which Postgres cannot store")
        return value


class Submitted(_View):
    task_id: int
    created: bool


class CommandResult(_View):
    """What a cancel or retry did: `cancelled`, `cancelling` (at the next step) or `queued`."""

    task_id: int
    result: Literal["cancelled", "cancelling", "queued"]


class ReplayRequest(_View):
    """Where a replay starts: the first step of this name, reusing the checkpoints before it
    (null: every step runs again)."""

    from_step: Text | None = pydantic.Field(default=None, min_length=1, max_length=200)


class ReplayResult(_View):
    """The task a replay started."""

    task_id: int
    replay_of: int
    from_step: str | None
    reused_steps: int


class BulkReplay(TaskNarrowing):
    """Replay every task the filter matches, oldest first. `expected` is the count the person
    saw (GET /tasks/count with the same filter): when the filter matches another number now,
    nothing is replayed (409). At most 500 tasks at once (MAX_BULK); the person must be an operator
    in every tenant the filter covers."""

    expected: int = pydantic.Field(ge=0, le=ID_MAX)
    from_step: Text | None = pydantic.Field(default=None, min_length=1, max_length=200)


class ReplayRefusal(_View):
    """A task of a bulk replay that was not replayed, and why."""

    task_id: int
    reason: str


class BulkReplayResult(_View):
    replayed: list[ReplayResult]
    refused: list[ReplayRefusal]


class Tasks(Protocol):
    async def page(self, tenants: Sequence[str], query: TaskFilter) -> TaskPage: ...

    async def count(self, tenants: Sequence[str], query: TaskFilter) -> int: ...

    async def get(self, task_id: int) -> TaskDetail | None: ...

    async def submit(self, submission: Submission, *, actor: str) -> Submitted: ...

    async def cancel(self, task_id: int, *, actor: str) -> CommandResult: ...

    async def retry(self, task_id: int, *, actor: str) -> CommandResult: ...

    async def replay(self, task_id: int, request: ReplayRequest, *, actor: str) -> ReplayResult: ...

    async def replay_many(
        self, tenants: Sequence[str], request: BulkReplay, *, actor: str
    ) -> BulkReplayResult: ...


# ---- approvals -----------------------------------------------------------------------------------


class VoteView(_View):
    approver: str
    declared_as: str | None
    decision: Literal["approve", "deny"]
    reason: str | None
    voted_at: dt.datetime


class ApprovalView(_View):
    """A request for a person's decision on one step of a task, with the votes so far."""

    approval_id: int
    tenant_id: str
    task_id: int
    step_key: str
    tool: str
    action_class: str
    arguments: pydantic.JsonValue
    reason: str
    policy_version: int | None
    required_approvers: int
    state: Literal["pending", "approved", "denied", "expired"]
    deadline: dt.datetime
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decision_reason: str | None
    votes: list[VoteView]


class Vote(_View):
    """A vote: approve or deny, with a reason."""

    approve: bool
    reason: Text | None = pydantic.Field(default=None, max_length=2000)


class Approvals(Protocol):
    async def list(
        self, tenants: Sequence[str], *, pending_only: bool, task_id: int | None
    ) -> list[ApprovalView]: ...

    async def get(self, approval_id: int) -> ApprovalView | None: ...

    async def vote(
        self, approval_id: int, vote: Vote, *, principal: str, declared_as: str
    ) -> ApprovalView: ...


# ---- costs ---------------------------------------------------------------------------------------


class CostRow(_View):
    """The ledger summed over one group (the fields that do not name it are null)."""

    tenant_id: str | None
    agent: str | None
    agent_version: int | None
    model: str | None
    day: dt.date | None
    task_id: int | None
    calls: int
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: str
    uncached_cost_usd: str
    saving_usd: str
    saving_fraction: str | None


class BudgetView(_View):
    tenant_id: str
    scope: str
    task_id: int | None
    usd_limit: str
    spent_usd: str | None  # this calendar month's spend, for a monthly budget
    left_usd: str | None


class Costs(Protocol):
    async def report(
        self, tenants: Sequence[str], *, by: CostGrouping, since: dt.date | None
    ) -> list[CostRow]: ...

    async def budgets(self, tenants: Sequence[str]) -> list[BudgetView]: ...


# ---- audit ---------------------------------------------------------------------------------------


class AuditEntryView(_View):
    chain: str
    seq: int
    tenant_id: str
    task_id: int | None
    actor: str
    action: str
    detail: pydantic.JsonValue
    created_at: dt.datetime
    hash: str


class AuditQuery(_View):
    """Which audit entries a search returns, newest first."""

    tenant: str | None = pydantic.Field(default=None, pattern=_TENANT)
    task_id: int | None = pydantic.Field(default=None, ge=1, le=ID_MAX)
    actor: Text | None = pydantic.Field(default=None, max_length=200)
    action: Text | None = pydantic.Field(default=None, max_length=200)
    since: Moment | None = None
    until: Moment | None = None
    limit: int = pydantic.Field(default=100, ge=1, le=1000)


class ChainBreakView(_View):
    chain: str
    seq: int
    reason: str


class ChainStatus(_View):
    """Whether the hash chains of the tenants verify; the first broken entries if not."""

    verified: bool
    breaks: list[ChainBreakView]


class Audit(Protocol):
    async def search(self, tenants: Sequence[str], query: AuditQuery) -> list[AuditEntryView]: ...

    async def verify(self, tenants: Sequence[str]) -> ChainStatus: ...


# ---- workforce -----------------------------------------------------------------------------------


class AgentView(_View):
    tenant_id: str
    name: str
    version: int
    model: str
    tools: list[str]
    max_tokens: int
    max_turns: int
    content_hash: str
    created_by: str
    created_at: dt.datetime


class NodeView(_View):
    """A node name and the process that holds (or last held) it."""

    node: str
    pid: int
    host: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None


class QueueRow(_View):
    """Tasks not yet ended, per tenant, workflow and state, with the oldest one's age."""

    tenant_id: str
    workflow: str
    state: Literal["queued", "running", "waiting"]
    tasks: int
    oldest_seconds: float


class Workforce(Protocol):
    async def tenants(self) -> list[str]: ...

    async def agents(self, tenants: Sequence[str]) -> list[AgentView]: ...

    async def nodes(self) -> list[NodeView]: ...

    async def queue(self, tenants: Sequence[str]) -> list[QueueRow]: ...


# ---- the live stream -----------------------------------------------------------------------------


class Event(_View):
    """A change, as the live stream sends it: what changed, never the payload itself."""

    seq: int
    type: str
    tenant_id: str
    task_id: int | None
    created_at: dt.datetime


class Events(Protocol):
    async def latest(self) -> int: ...

    async def after(self, seq: int, *, limit: int) -> list[Event]: ...


# ---- roles granted in the database ---------------------------------------------------------------


class Grants(Protocol):
    async def roles_of(self, login: str) -> list[tuple[str, str]]:
        """(tenant, role) of each role granted to `login` in the database (provisioning)."""
        ...


@dataclasses.dataclass(frozen=True)
class Services:
    """Everything the console's web layer may call."""

    tasks: Tasks
    approvals: Approvals
    costs: Costs
    audit: Audit
    workforce: Workforce
    events: Events
    details: details.Details  # what the pages show beyond the API (`details`)
    grants: Grants
