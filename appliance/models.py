"""Frozen rows: what the query wrappers of `appliance.db` hand to the rest of the package."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Literal

TaskState = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submit: the task, and whether this call created it."""

    task_id: int
    created: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PendingStep:
    """A finished step whose checkpoint is not written yet (error_json: it raised)."""

    position: int
    name: str
    output_json: str
    started_at: dt.datetime
    duration_ms: float
    error_json: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task this worker now holds the lease of, with the checkpoints of earlier attempts."""

    task_id: int
    tenant_id: str
    workflow: str
    input: Any
    attempt: int
    max_attempts: int
    checkpoints: tuple[tuple[str, Any, Any], ...]  # (name, output, error or None)


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    task_id: int
    tenant_id: str
    workflow: str
    input: Any
    state: TaskState
    wait_reason: str | None
    priority: int
    run_after: dt.datetime
    attempts: int
    max_attempts: int
    crashes: int  # attempts lost with their worker (not charged against max_attempts)
    max_crashes: int  # the crash that fails the task (a task that ends its worker every time)
    idempotency_key: str | None
    concurrency_key: str
    lease_node: str | None
    cancel_requested_by: str | None
    output: Any
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    replay_of: int | None  # the task this one replays (`appliance task replay`)
    replay_from: str | None  # the step it ran again from (None: every step)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    task_id: int
    position: int
    name: str
    output: Any
    error: Any  # the recorded failure a handled step raised ({"types", "message"}), or None
    attempt: int  # 0: reused from the task this one replays
    started_at: dt.datetime
    duration_ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    task_id: int
    attempt: int
    node: str
    worker: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    outcome: str
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    chain: str
    seq: int
    tenant_id: str
    task_id: int | None
    actor: str
    action: str
    detail: Any
    created_at: dt.datetime
    prev_hash: str
    hash: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first audit entry that does not verify, and why."""

    chain: str
    seq: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_seq: int
    event_id: str
    tenant_id: str
    task_id: int | None
    type: str
    payload: Any
    created_at: dt.datetime
    attempts: int

    def as_message(self) -> dict[str, Any]:
        """The shape every sink ships: a stable id a sink can drop duplicates by."""
        return {
            "id": self.event_id,
            "seq": self.event_seq,
            "type": self.type,
            "tenant_id": self.tenant_id,
            "task_id": self.task_id,
            "created_at": self.created_at.isoformat(),
            "payload": self.payload,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class AgentVersion:
    """One version of an agent definition."""

    tenant_id: str
    name: str
    version: int
    persona: str
    model: str
    tools: tuple[str, ...]
    max_tokens: int
    max_turns: int
    retrieval: dict[str, Any]
    content_hash: str
    created_by: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """Who holds (or last held) a node name: the process, and when it was last heard from."""

    node: str
    pid: int
    host: str
    backend_pid: int  # the Postgres session that holds the name's lock
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None
    silent_seconds: float


Catchup = Literal["skip", "latest", "all"]
Overlap = Literal["skip", "allow", "cancel-previous"]
SlotOutcome = Literal["fired", "skipped", "failed", "run-now"]


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule and its shared firing state (see migrations/0017_schedules.sql)."""

    schedule_id: int
    tenant_id: str
    name: str
    cron: str
    timezone: str
    workflow: str
    input: Any
    catchup: Catchup
    catchup_limit: int
    overlap: Overlap
    origin: Literal["config", "command"]
    paused: bool
    next_fire_at: dt.datetime
    last_slot_at: dt.datetime | None
    last_task_id: int | None
    last_task_state: TaskState | None
    open_tasks: tuple[int, ...]
    missed_slots: int
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
