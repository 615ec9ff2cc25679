"""Human approvals: a step that needs a person parks its task durably until one decides.

A step asks with `request` (idempotent per task and step: asking again returns the same request,
whatever its state) and calls `raise_if_pending`, which raises `ApprovalPendingError` while the
request is pending. The error escapes the step, so that step is not checkpointed; the worker
parks the task (state `waiting`, reason `approval:<id>: ...`) and holds nothing while it waits.

    async def ask() -> str:
        approval = await approvals.request(pool, task_id=ctx.task_id, step_key="tool:2:refund", ...)
        approvals.raise_if_pending(approval)
        return approval.state

    if await ctx.step("approval:tool:2:refund", ask) == "approved":
        await ctx.step("tool:2:refund", refund)

People decide with `decide` (the CLI's `approvals approve|deny`): any deny denies; approvals
from `required_approvers` distinct approvers approve; one approver's second vote is refused. A
request still pending at its deadline expires with `expire_overdue` (the daemon's `sweep`): a
timeout denies. Whichever way a request leaves `pending`, the same transaction queues its task
again; the task replays its checkpoints and runs the step that asked once more, which now finds
the decision. A decision made before the attempt that asked has parked the task is not lost:
the park sees it at its commit and queues the task at once (migration 0009).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

from appliance import errors, policy
from appliance.db import approvals as dbapprovals
from appliance.db import pool

log = logging.getLogger(__name__)

# The rows handed out by the query layer, under this module's name for its callers.
Approval = dbapprovals.Approval
Vote = dbapprovals.Vote


def wait_reason(approval: Approval) -> str:
    """The task's wait reason: `approval:<id>: ...`. The prefix up to the second colon is what
    the decision resumes (the colon keeps approval 1 from matching approval 12)."""
    return (
        f"approval:{approval.approval_id}: {approval.tool} ({approval.action_class}) needs "
        f"{approval.required_approvers} approval(s) by {approval.deadline.isoformat()}"
    )


def raise_if_pending(approval: Approval) -> None:
    """Raise ApprovalPendingError while the request is pending, so the step's task waits."""
    if approval.state == "pending":
        raise errors.ApprovalPendingError(wait_reason(approval))


async def request(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int,
    step_key: str,
    tool: str,
    action_class: str,
    arguments: Any,
    reason: str,
    policy_version: int | None,
    approvers: int,
    timeout: dt.timedelta,
) -> Approval:
    """The request for this step of the task: the existing one in whatever state, or a new
    pending one that expires after `timeout`. `arguments` must already be redacted.

    NotFoundError: no such task of the tenant. StateError: the task has ended. NonDeterminism:
    the step asked before for another tool, class or arguments (its decision does not cover
    these)."""
    if action_class not in {c.value for c in policy.ActionClass}:
        known = ", ".join(policy.ActionClass)
        raise errors.InputError(f"unknown action class {action_class!r}; one of {known}")
    if isinstance(approvers, bool) or not isinstance(approvers, int) or approvers < 1:
        raise errors.InputError(f"approvers must be a whole number >= 1, not {approvers!r}")
    if timeout <= dt.timedelta(0):
        raise errors.InputError(f"the approval timeout must be positive, not {timeout}")
    for name, value in (("step_key", step_key), ("tool", tool), ("reason", reason)):
        if not value.strip():
            raise errors.InputError(f"an approval request needs a {name}")
    try:
        arguments_json = json.dumps(arguments, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"approval arguments are not JSON: {exc}") from exc
    outcome = await dbapprovals.request_approval(
        conn,
        tenant_id=tenant_id,
        task_id=task_id,
        step_key=step_key,
        tool=tool,
        action_class=action_class,
        arguments_json=arguments_json,
        reason=reason,
        policy_version=policy_version,
        required_approvers=approvers,
        timeout=timeout,
        actor=f"task:{task_id}",
    )
    if outcome is None:
        raise errors.NotFoundError(f"no task {task_id} of tenant {tenant_id}")
    kind, _, detail = outcome.partition(":")
    if kind == "ended":
        raise errors.StateError(f"task {task_id} is {detail}; an ended task asks for nothing")
    if kind == "conflict":
        raise errors.NonDeterminismError(
            f"task {task_id}: step {step_key!r} asked for approval {detail} of another call "
            f"before; its decision does not cover {tool} with these arguments"
        )
    return await get(conn, int(detail))


async def get(conn: pool.Connection | pool.Pool, approval_id: int) -> Approval:
    """One request with its votes; NotFoundError if there is none."""
    found = await dbapprovals.get_approval(conn, approval_id)
    if found is None:
        raise errors.NotFoundError(f"no approval {approval_id}")
    return found


async def list_requests(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str | None = None,
    task_id: int | None = None,
    pending_only: bool = True,
    limit: int = 50,
) -> list[Approval]:
    """Requests of a tenant and/or a task (None: any): the pending ones, soonest deadline
    first, or (pending_only False) all of them, newest first."""
    return await dbapprovals.list_approvals(
        conn, tenant_id=tenant_id, task_id=task_id, pending_only=pending_only, limit=limit
    )


async def decide(
    conn: pool.Connection | pool.Pool,
    *,
    approval_id: int,
    approver: str,
    approve: bool,
    reason: str | None,
    declared_as: str | None = None,
) -> Approval:
    """Record one approver's vote and return the request as it stands after it.

    `approver` is the verified principal and counts once per request, whatever `declared_as`
    says. NotFoundError: no such request. StateError (the answer is no in the request's state):
    it was decided before, its deadline passed (it expires now), or this approver voted on it."""
    if not approver.strip():
        raise errors.InputError("a vote needs the approver's identity")
    outcome = await dbapprovals.vote_approval(
        conn,
        approval_id=approval_id,
        approver=approver,
        declared_as=declared_as,
        approve=approve,
        reason=reason,
    )
    if outcome is None:
        raise errors.NotFoundError(f"no approval {approval_id}")
    if outcome.startswith("refused:"):
        raise errors.StateError(
            f"approval {approval_id} is already {outcome.removeprefix('refused:')}; "
            "only a pending request can be decided"
        )
    if outcome == "expired":
        raise errors.StateError(
            f"approval {approval_id} expired: its deadline passed before this vote, which denies it"
        )
    if outcome == "duplicate":
        raise errors.StateError(
            f"{approver} has already voted on approval {approval_id}; a vote counts once per "
            "person, so a further approval must come from someone else"
        )
    return await get(conn, approval_id)


async def expire_overdue(conn: pool.Connection | pool.Pool) -> int:
    """Expire the pending requests past their deadline (a timeout denies) and queue their
    tasks again; returns how many."""
    return await dbapprovals.expire_approvals(conn)


async def sweep(conn: pool.Connection | pool.Pool, *, every: float) -> None:
    """The daemon's loop: expire overdue requests every `every` seconds until cancelled.
    A failure (Postgres away) is logged and the next round tries again."""
    while True:
        try:
            expired = await expire_overdue(conn)
        except errors.ApplianceError as exc:
            log.warning("approval sweep failed: %s", exc, extra={"event": "approvals.sweep_failed"})
        else:
            if expired:
                log.info(
                    "%d approval request(s) expired",
                    expired,
                    extra={"event": "approvals.expired", "count": expired},
                )
        await asyncio.sleep(every)
