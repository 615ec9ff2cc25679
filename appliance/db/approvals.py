"""Query wrappers of `sql/approvals.sql`: approval requests and the votes on them.

The requests, votes and decisions are written by the server-side functions of migration 0009,
each in one transaction with its audit entry, its outbox event and the resumption of the task.
The rows become the frozen models below, here and nowhere else; `appliance.approvals` is the
only caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from appliance.db import pool, sql

_Q = sql.load("approvals")

ApprovalState = Literal["pending", "approved", "denied", "expired"]


@dataclasses.dataclass(frozen=True, slots=True)
class Vote:
    """One person's vote: `approver` is the verified principal, `declared_as` a name given."""

    approver: str
    declared_as: str | None
    decision: Literal["approve", "deny"]
    reason: str | None
    voted_at: dt.datetime

    @property
    def who(self) -> str:
        """`alice (os:root)` with a declared name, else the principal."""
        return f"{self.declared_as} ({self.approver})" if self.declared_as else self.approver


@dataclasses.dataclass(frozen=True, slots=True)
class Approval:
    """A request for approval of one step of a task, with the votes cast on it."""

    approval_id: int
    tenant_id: str
    task_id: int
    step_key: str
    tool: str
    action_class: str
    arguments: Any
    reason: str
    policy_version: int | None
    required_approvers: int
    state: ApprovalState
    deadline: dt.datetime
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decision_reason: str | None
    votes: tuple[Vote, ...]


async def request_approval(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    task_id: int,
    step_key: str,
    tool: str,
    action_class: str,
    arguments_json: str,
    reason: str,
    policy_version: int | None,
    required_approvers: int,
    timeout: dt.timedelta,
    actor: str,
) -> str | None:
    """'created:<id>', 'exists:<id>', 'conflict:<id>', 'ended:<state>', or None (no such task)."""
    with pool.translated():
        outcome: str | None = await conn.fetchval(
            _Q["request_approval"],
            tenant_id,
            task_id,
            step_key,
            tool,
            action_class,
            arguments_json,
            reason,
            policy_version,
            required_approvers,
            timeout,
            actor,
        )
    return outcome


async def vote_approval(
    conn: pool.Connection | pool.Pool,
    *,
    approval_id: int,
    approver: str,
    declared_as: str | None,
    approve: bool,
    reason: str | None,
) -> str | None:
    """'pending', 'approved', 'denied', 'duplicate', 'expired', 'refused:<state>', or None."""
    with pool.translated():
        outcome: str | None = await conn.fetchval(
            _Q["vote_approval"], approval_id, approver, declared_as, approve, reason
        )
    return outcome


async def expire_approvals(conn: pool.Connection | pool.Pool) -> int:
    """Expire the overdue pending requests, resuming their tasks; returns how many."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["expire_approvals"])
    return count


async def _with_votes(
    conn: pool.Connection | pool.Pool, rows: Sequence[pool.Record]
) -> list[Approval]:
    ids = [row["approval_id"] for row in rows]
    votes: dict[int, list[Vote]] = {i: [] for i in ids}
    if ids:
        with pool.translated():
            found = await conn.fetch(_Q["list_approval_votes"], ids)
        for vote in found:
            fields = pool.record_dict(vote)
            votes[fields.pop("approval_id")].append(Vote(**fields))
    return [
        Approval(**pool.record_dict(row), votes=tuple(votes[row["approval_id"]])) for row in rows
    ]


async def get_approval(conn: pool.Connection | pool.Pool, approval_id: int) -> Approval | None:
    """One request with its votes, or None."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_approval"], approval_id)
    if row is None:
        return None
    [approval] = await _with_votes(conn, [row])
    return approval


async def list_approvals(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str | None,
    task_id: int | None,
    pending_only: bool,
    limit: int,
) -> list[Approval]:
    """Requests with their votes: pending ones soonest deadline first, else newest first."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_approvals"], tenant_id, task_id, pending_only, limit)
    return await _with_votes(conn, rows)
