"""What the console's pages read beyond the API's services (`services`), as one more service.

A task's trace for its timeline (model calls with tokens and cost, secret leases, the webhook
delivery that started it and the scheme that verified it, its audit chain verified), one
version of an agent with its persona (the persona diff), the load of nodes and of the last
hours (the workforce page), the cost ledger in cells of tenant, agent, model and day (one
read for the whole cost page), and the box's state (the box page). The daemon builds the
implementation (`appliance.details`) on its pool; like `services`, the web layer never imports
`db`. Tenant scoping is the caller's: a trace is asked for a task whose tenant the page has
already checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal, Protocol

import pydantic


class _View(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class ModelCallView(_View):
    """One model call: when, how long, tokens by category, cost (exact decimal digits)."""

    position: int | None
    model: str
    started_at: dt.datetime
    latency_ms: float
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: str
    uncached_cost_usd: str


class LeaseView(_View):
    """A secret lease granted to a step: which secret, when granted and redeemed."""

    step_key: str
    integration: str
    name: str
    granted_at: dt.datetime
    expires_at: dt.datetime
    redeemed_at: dt.datetime | None


class DeliveryView(_View):
    """The webhook delivery that started a task, and the signature scheme that verified it."""

    source: str
    scheme: str | None  # None when the source is no longer configured
    delivery_id: str
    received_at: dt.datetime


class ChainView(_View):
    """A task's audit chain: how long it is, and whether every entry verifies."""

    entries: int
    verified: bool
    broken_seq: int | None
    reason: str | None


class TaskTrace(_View):
    model_calls: list[ModelCallView]
    leases: list[LeaseView]
    delivery: DeliveryView | None
    chain: ChainView


class AgentVersionView(_View):
    tenant_id: str
    name: str
    version: int
    model: str
    persona: str
    tools: list[str]
    max_tokens: int
    max_turns: int
    created_by: str
    created_at: dt.datetime


class NodeLoadView(_View):
    """What a node holds now, and the attempts it lost to takeovers in the last day."""

    node: str
    tasks_held: int
    takeovers: int


class ProcessView(_View):
    """The daemon serving this console: its node, mode, process and slots."""

    node: str
    mode: str
    pid: int
    started_at: dt.datetime
    memory_bytes: int
    slots: int


class HourLoadView(_View):
    """One hour: attempts started, worker-seconds busy, tasks ended."""

    hour: dt.datetime
    attempts: int
    busy_seconds: float
    ended: int


class CostCellView(_View):
    """The ledger summed for one tenant, agent version, model and UTC day (exact decimals)."""

    tenant_id: str
    agent: str | None
    agent_version: int | None
    model: str
    day: dt.date
    calls: int
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: str
    uncached_cost_usd: str


class CheckView(_View):
    """One line of the box's state: what, whether it is fine, and the fix when it is not."""

    name: str
    ok: bool
    detail: str
    fix: str
    severity: Literal["fail", "warn"]


class BoxStatus(_View):
    version: str
    mode: str
    node: str
    checks: list[CheckView]


class Details(Protocol):
    async def trace(self, task_id: int, tenant_id: str) -> TaskTrace: ...

    async def agent_version(
        self, tenant_id: str, name: str, version: int
    ) -> AgentVersionView | None: ...

    async def node_load(self) -> list[NodeLoadView]: ...

    def this_process(self) -> ProcessView: ...

    async def hourly_load(self, tenants: Sequence[str], *, hours: int) -> list[HourLoadView]: ...

    async def cost_cells(self, tenants: Sequence[str], *, since: dt.date) -> list[CostCellView]: ...

    async def box(self) -> BoxStatus: ...
