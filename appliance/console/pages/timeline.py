"""A task's lifecycle as spans on one time scale, and the geometry of its SVG drawing.

Pure: it takes what the services read (the task with its steps and attempts, its audit
entries, its approvals, its trace of model calls and leases) and gives the rows the timeline
page draws. Every span has its start as an offset in ms from the task's creation and its
duration in ms (0 for an instant, such as a policy decision or an audit entry). Lost attempts
(the worker died, its lease expired, Postgres went away) and resume points (an attempt that
started from the checkpoints of earlier ones) are marked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from appliance.console import details, services
from appliance.console.pages import charts

Kind = Literal[
    "ingress", "policy", "attempt", "step", "model", "tool", "secret", "approval", "audit"
]
Mark = Literal["", "lost", "failed", "running", "waiting"]

LOST_OUTCOMES = frozenset({"node_restarted", "lease_expired", "worker_lost_database"})
FAILED_OUTCOMES = frozenset({"failed", "retry"})
# Audit actions drawn as spans or rows of their own elsewhere (steps, approvals, leases).
_COVERED = frozenset({"step.completed", "approval.requested", "lease.granted"})
_POLICY = frozenset({"tool.decided"})
_TOOL = frozenset({"tool.intent", "tool.result", "tool.retried"})

LABEL_WIDTH = 260
PLOT_WIDTH = 640
ROW_HEIGHT = 18
AXIS_HEIGHT = 24
MIN_BAR = 2.0


@dataclasses.dataclass(frozen=True)
class Span:
    kind: Kind
    label: str
    start_ms: float
    duration_ms: float
    detail: str = ""
    mark: Mark = ""
    attempt: int | None = None
    resumed_from: int = 0  # an attempt that started from this many checkpoints of earlier ones


@dataclasses.dataclass(frozen=True)
class Bar:
    """A span placed on the drawing: its row's y, and x and width of its bar."""

    span: Span
    y: float
    x: float
    width: float


@dataclasses.dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclasses.dataclass(frozen=True)
class Drawing:
    width: int
    height: int
    label_width: int
    plot_width: int
    axis_y: float
    bars: list[Bar]
    ticks: list[Tick]
    resumes: list[Tick]  # vertical markers where a resumed attempt began


def _offset(at: dt.datetime, origin: dt.datetime) -> float:
    return (at - origin).total_seconds() * 1000.0


def _between(start: dt.datetime, end: dt.datetime | None, now: dt.datetime) -> float:
    return max(0.0, ((end or now) - start).total_seconds() * 1000.0)


def spans(
    task: services.TaskDetail,
    entries: Sequence[services.AuditEntryView],
    approvals: Sequence[services.ApprovalView],
    trace: details.TaskTrace,
    *,
    now: dt.datetime,
) -> list[Span]:
    """Every span of the task's lifecycle, in the order they started."""
    origin = task.created_at
    found: list[Span] = [_ingress(task, entries, trace, origin)]
    found.extend(_attempts(task, origin, now))
    found.extend(_steps(task, origin))
    found.extend(_model_call(call, origin) for call in trace.model_calls)
    found.extend(_lease(lease, origin, now) for lease in trace.leases)
    found.extend(_approval(approval, origin, now) for approval in approvals)
    for entry in entries:
        span = _entry(entry, origin)
        if span is not None:
            found.append(span)
    found.sort(key=lambda s: (s.start_ms, _ORDER[s.kind]))
    return found


_ORDER: dict[Kind, int] = {
    "ingress": 0,
    "attempt": 1,
    "step": 2,
    "policy": 3,
    "approval": 4,
    "secret": 5,
    "tool": 6,
    "model": 7,
    "audit": 8,
}


def _ingress(
    task: services.TaskDetail,
    entries: Sequence[services.AuditEntryView],
    trace: details.TaskTrace,
    origin: dt.datetime,
) -> Span:
    submitted = next((e for e in entries if e.action == "task.submitted"), None)
    actor = submitted.actor if submitted else "unknown"
    if trace.delivery is not None:
        scheme = trace.delivery.scheme or "a scheme no longer configured"
        label = f"ingress: webhook {trace.delivery.source}"
        detail = f"delivery {trace.delivery.delivery_id}, signature verified by {scheme}"
        start = _offset(trace.delivery.received_at, origin)
    else:
        label = f"ingress: submitted by {actor}"
        detail = f"workflow {task.workflow}, priority {task.priority}"
        start = 0.0
    return Span("ingress", label, start, 0.0, detail)


def _attempts(task: services.TaskDetail, origin: dt.datetime, now: dt.datetime) -> list[Span]:
    found = []
    for attempt in task.attempt_history:
        before = sum(1 for s in task.steps if s.attempt < attempt.attempt)
        mark: Mark = ""
        if attempt.outcome in LOST_OUTCOMES:
            mark = "lost"
        elif attempt.outcome in FAILED_OUTCOMES:
            mark = "failed"
        elif attempt.outcome == "running":
            mark = "running"
        elif attempt.outcome == "waiting":
            mark = "waiting"
        detail = f"worker {attempt.worker}, outcome {attempt.outcome}"
        if before:
            detail += f"; resumed from {before} checkpoint(s)"
        if attempt.error:
            detail += f"; {attempt.error}"
        if attempt.outcome in LOST_OUTCOMES:
            detail += " (lost with its worker: not charged)"
        found.append(
            Span(
                "attempt",
                f"dispatch + lease: attempt {attempt.attempt}/{task.max_attempts} on "
                f"{attempt.node}",
                _offset(attempt.started_at, origin),
                _between(attempt.started_at, attempt.ended_at, now),
                detail,
                mark,
                attempt.attempt,
                before,
            )
        )
    return found


def _steps(task: services.TaskDetail, origin: dt.datetime) -> list[Span]:
    found = []
    for step in task.steps:
        kind: Kind = "tool" if step.name.startswith("tool:") else "step"
        found.append(
            Span(
                kind,
                f"checkpoint {step.position}: {step.name}",
                _offset(step.started_at, origin),
                step.duration_ms,
                f"attempt {step.attempt}",
                attempt=step.attempt,
            )
        )
    return found


def _model_call(call: details.ModelCallView, origin: dt.datetime) -> Span:
    tokens = (
        f"input {call.input_tokens}, cache write {call.cache_creation_input_tokens}, "
        f"cache read {call.cache_read_input_tokens}, output {call.output_tokens}"
    )
    return Span(
        "model",
        f"model call {call.model}: ${Decimal(call.cost_usd):.6f}",
        _offset(call.started_at, origin),
        call.latency_ms,
        f"{tokens}; cost ${Decimal(call.cost_usd):.6f} "
        f"(uncached ${Decimal(call.uncached_cost_usd):.6f})",
    )


def _lease(lease: details.LeaseView, origin: dt.datetime, now: dt.datetime) -> Span:
    used = "redeemed" if lease.redeemed_at else "not redeemed (expired unused)"
    return Span(
        "secret",
        f"secrets.lease {lease.integration}/{lease.name}",
        _offset(lease.granted_at, origin),
        _between(lease.granted_at, lease.redeemed_at or lease.expires_at, now),
        f"for {lease.step_key}; {used}",
    )


def _approval(approval: services.ApprovalView, origin: dt.datetime, now: dt.datetime) -> Span:
    votes = sum(1 for v in approval.votes if v.decision == "approve")
    mark: Mark = "waiting" if approval.state == "pending" else ""
    return Span(
        "approval",
        f"approval {approval.approval_id}: {approval.tool} {approval.state} "
        f"({votes}/{approval.required_approvers})",
        _offset(approval.created_at, origin),
        _between(approval.created_at, approval.decided_at, now),
        approval.reason,
        mark,
    )


def _entry(entry: services.AuditEntryView, origin: dt.datetime) -> Span | None:
    if entry.action in _COVERED or entry.action == "task.submitted":
        return None
    detail = entry.detail if isinstance(entry.detail, dict) else {}
    at = _offset(entry.created_at, origin)
    if entry.action in _POLICY:
        version = detail.get("policy_version")
        return Span(
            "policy",
            f"policy.eval {detail.get('tool', '')}: {detail.get('effect', '')}",
            at,
            0.0,
            f"rule {detail.get('rule', '')}, policy version {version or 'none'}: "
            f"{detail.get('reason', '')}",
        )
    kind: Kind = "tool" if entry.action in _TOOL else "audit"
    return Span(kind, f"audit: {entry.action}", at, 0.0, f"#{entry.seq} by {entry.actor}")


def draw(found: Sequence[Span]) -> Drawing:
    """The bars of `found` on one scale from 0 to the end of the last span."""
    total = max((s.start_ms + s.duration_ms for s in found), default=0.0)
    total = max(total, 1.0)
    step = _tick_step(total)
    scale = PLOT_WIDTH / (math.ceil(total / step) * step)
    bars = [
        Bar(
            span,
            AXIS_HEIGHT + index * ROW_HEIGHT,
            LABEL_WIDTH + max(span.start_ms, 0.0) * scale,
            max(span.duration_ms * scale, MIN_BAR),
        )
        for index, span in enumerate(found)
    ]
    ticks = [
        Tick(LABEL_WIDTH + i * step * scale, _tick_label(i * step))
        for i in range(math.ceil(total / step) + 1)
    ]
    resumes = [
        Tick(
            LABEL_WIDTH + max(span.start_ms, 0.0) * scale,
            f"attempt {span.attempt} resumed at checkpoint {span.resumed_from}",
        )
        for span in found
        if span.resumed_from
    ]
    return Drawing(
        width=LABEL_WIDTH + PLOT_WIDTH + 40,
        height=AXIS_HEIGHT + len(found) * ROW_HEIGHT + 8,
        label_width=LABEL_WIDTH,
        plot_width=PLOT_WIDTH,
        axis_y=AXIS_HEIGHT - 6,
        bars=bars,
        ticks=ticks,
        resumes=resumes,
    )


def _tick_step(total_ms: float) -> float:
    """A round step giving at most about 8 ticks."""
    return charts.nice_step(total_ms / 8)


def _tick_label(ms: float) -> str:
    if ms >= 10_000:
        return f"{ms / 1000:g} s"
    return f"{ms:g} ms"
