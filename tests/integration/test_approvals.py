"""Human approvals against the real Postgres: requests, votes, decisions, expiry, and tasks that
park for a decision and resume at the step that asked, run by the real Worker."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance import approvals, errors, models
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]

HOUR = dt.timedelta(hours=1)
MOMENT = dt.timedelta(microseconds=1)  # a deadline that has passed by the next transaction
IDLE = "approvals.idle"  # a workflow whose tasks only carry requests; no worker runs them
GATED = "approvals.gated"
ARGUMENTS = {"order": "A-17", "amount": 700, "card": "[redacted]"}
WHY = 'rules[0] "large-refunds" (policy version 3)'

Hook = Callable[[approvals.Approval], Awaitable[None]]


def idle_registry() -> registry.Registry:
    """A registry that knows IDLE, to submit tasks that only carry approval requests."""
    reg = registry.Registry()

    @reg.workflow(IDLE)
    async def idle(ctx: context.TaskContext, task_input: Any) -> Any:
        return None

    return reg


async def idle_task(db: dbpool.Pool, tenant_id: str = "default") -> int:
    """A queued task of IDLE, through the real submission path."""
    return await support.submit(
        db, idle_registry(), support.engine_settings(), workflow=IDLE, tenant_id=tenant_id
    )


async def ask(db: dbpool.Pool, task_id: int, **overrides: Any) -> approvals.Approval:
    """`approvals.request` for a refund of the task; keyword overrides replace any argument."""
    values: dict[str, Any] = {
        "tenant_id": "default",
        "task_id": task_id,
        "step_key": "tool:1:refund",
        "tool": "refund",
        "action_class": "financial",
        "arguments": ARGUMENTS,
        "reason": WHY,
        "policy_version": 3,
        "approvers": 1,
        "timeout": HOUR,
    }
    values.update(overrides)
    return await approvals.request(db, **values)


def gated(
    db: dbpool.Pool,
    runs: collections.Counter[str],
    *,
    approvers: int = 1,
    timeout: dt.timedelta = HOUR,
    hook: Hook | None = None,
) -> registry.Registry:
    """A registry with GATED: step `before`, step `ask` (a refund's approval; `hook` runs after
    the request, before the pending check), then step `refund` only when approved. Each step
    counts its runs in `runs`; the output says what the workflow saw."""
    reg = registry.Registry()

    @reg.workflow(GATED)
    async def workflow(ctx: context.TaskContext, task_input: Any) -> Any:
        async def before() -> int:
            runs["before"] += 1
            return 1

        async def gate() -> str:
            runs["ask"] += 1
            approval = await ask(
                db, ctx.task_id, tenant_id=ctx.tenant_id, approvers=approvers, timeout=timeout
            )
            if hook is not None:
                await hook(approval)
            approvals.raise_if_pending(approval)
            return approval.state

        async def refund() -> dict[str, Any]:
            runs["refund"] += 1
            return {"refunded": 700}

        await ctx.step("before", before)
        state = await ctx.step("ask", gate)
        if state != "approved":
            return {"refunded": None, "state": state}
        return await ctx.step("refund", refund)

    return reg


async def parked(
    db: dbpool.Pool, running: support.RunningWorker, task_id: int
) -> approvals.Approval:
    """The task's request, once the task waits for it."""
    task = await support.wait_for_state(db, task_id, {"waiting"}, workers=[running])
    [approval] = await approvals.list_requests(db, task_id=task_id)
    assert task.wait_reason is not None
    assert task.wait_reason.startswith(f"approval:{approval.approval_id}: ")
    return approval


async def actions(db: dbpool.Pool, chain: str) -> list[str]:
    """The actions of a chain's entries, in order."""
    return [e.action for e in await dbaudit.list_chain(db, chain)]


async def approval_entries(db: dbpool.Pool, chain: str) -> list[models.AuditEntry]:
    """A chain's entries about approvals, in order."""
    return [e for e in await dbaudit.list_chain(db, chain) if e.action.startswith("approval.")]


class TestRequest:
    async def test_asking_twice_returns_the_same_request(self, db: dbpool.Pool) -> None:
        """The same task and step get the same request back, requested (and audited) once."""
        task_id = await idle_task(db)
        first = await ask(db, task_id)
        second = await ask(db, task_id)

        assert second == first
        assert first.state == "pending"
        assert (await actions(db, f"task:{task_id}")).count("approval.requested") == 1

    async def test_a_request_carries_what_why_arguments_and_risk_class(
        self, db: dbpool.Pool
    ) -> None:
        """The stored request keeps the tool, reason, redacted arguments, class and deadline."""
        task_id = await idle_task(db)
        before = dt.datetime.now(dt.UTC)
        approval = await ask(db, task_id, approvers=2)

        assert (approval.tool, approval.action_class) == ("refund", "financial")
        assert (approval.reason, approval.policy_version) == (WHY, 3)
        assert approval.arguments == ARGUMENTS
        assert approval.required_approvers == 2
        assert before + HOUR - dt.timedelta(seconds=5) < approval.deadline
        assert approval.deadline < before + HOUR + dt.timedelta(seconds=5)

    async def test_another_step_gets_another_request(self, db: dbpool.Pool) -> None:
        """A second step of the same task asks on its own."""
        task_id = await idle_task(db)
        first = await ask(db, task_id)
        second = await ask(db, task_id, step_key="tool:2:refund")

        assert second.approval_id != first.approval_id

    async def test_a_decided_request_comes_back_decided(self, db: dbpool.Pool) -> None:
        """Asking again after the decision returns the decision, not a new request."""
        task_id = await idle_task(db)
        first = await ask(db, task_id)
        await approvals.decide(
            db, approval_id=first.approval_id, approver="os:alice", approve=False, reason="no"
        )
        again = await ask(db, task_id)

        assert again.approval_id == first.approval_id
        assert again.state == "denied"

    async def test_the_same_step_asking_for_other_arguments_is_refused(
        self, db: dbpool.Pool
    ) -> None:
        """A step that asks again for another call is not covered by the first request."""
        task_id = await idle_task(db)
        await ask(db, task_id)

        with pytest.raises(errors.NonDeterminismError, match="another call"):
            await ask(db, task_id, arguments={**ARGUMENTS, "amount": 70000})

    async def test_a_task_of_another_tenant_is_not_found(self, db: dbpool.Pool) -> None:
        """The tenant must own the task."""
        task_id = await idle_task(db, tenant_id="acme")

        with pytest.raises(errors.NotFoundError, match=str(task_id)):
            await ask(db, task_id, tenant_id="globex")

    async def test_an_ended_task_asks_for_nothing(self, db: dbpool.Pool) -> None:
        """A cancelled task cannot open a request."""
        task_id = await idle_task(db)
        await dbtasks.cancel_task(db, task_id=task_id, actor="test")

        with pytest.raises(errors.StateError, match="cancelled"):
            await ask(db, task_id)

    async def test_an_unknown_action_class_is_bad_input(self, db: dbpool.Pool) -> None:
        """The risk class is one of the policy's classes."""
        task_id = await idle_task(db)

        with pytest.raises(errors.InputError, match="action class"):
            await ask(db, task_id, action_class="dangerous")

    async def test_a_pending_request_parks_the_step_with_its_reason(self, db: dbpool.Pool) -> None:
        """raise_if_pending raises a WaitError whose reason names the request."""
        approval = await ask(db, await idle_task(db))

        with pytest.raises(errors.ApprovalPendingError) as caught:
            approvals.raise_if_pending(approval)
        assert isinstance(caught.value, errors.WaitError)
        assert caught.value.reason.startswith(f"approval:{approval.approval_id}: refund")


class TestDecide:
    async def test_one_approval_approves_by_default(self, db: dbpool.Pool) -> None:
        """With one approver required, an approve decides; the vote and reason are kept."""
        approval = await ask(db, await idle_task(db))
        decided = await approvals.decide(
            db,
            approval_id=approval.approval_id,
            approver="os:root",
            declared_as="alice",
            approve=True,
            reason="customer verified",
        )

        assert decided.state == "approved"
        assert decided.decided_at is not None
        assert decided.decision_reason == "customer verified"
        [vote] = decided.votes
        assert (vote.who, vote.decision) == ("alice (os:root)", "approve")

    async def test_one_deny_denies_even_when_two_approvals_are_needed(
        self, db: dbpool.Pool
    ) -> None:
        """Any deny decides the request."""
        approval = await ask(db, await idle_task(db), approvers=2)
        decided = await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:bob", approve=False, reason="no"
        )

        assert decided.state == "denied"
        assert decided.decision_reason == "no"

    async def test_two_approvers_needed_one_vote_keeps_it_pending(self, db: dbpool.Pool) -> None:
        """A first approval of two needed leaves the request pending."""
        approval = await ask(db, await idle_task(db), approvers=2)
        after = await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:alice", approve=True, reason=None
        )

        assert after.state == "pending"
        assert [v.approver for v in after.votes] == ["os:alice"]

    async def test_a_second_distinct_approver_approves(self, db: dbpool.Pool) -> None:
        """Two approvals from two people approve a request that needs two."""
        approval = await ask(db, await idle_task(db), approvers=2)
        for approver in ("os:alice", "os:bob"):
            decided = await approvals.decide(
                db, approval_id=approval.approval_id, approver=approver, approve=True, reason=None
            )

        assert decided.state == "approved"
        assert {v.approver for v in decided.votes} == {"os:alice", "os:bob"}

    async def test_the_same_approver_twice_is_refused(self, db: dbpool.Pool) -> None:
        """A second vote of one person is refused, even under another declared name."""
        approval = await ask(db, await idle_task(db), approvers=2)
        await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:root", approve=True, reason=None
        )

        with pytest.raises(errors.StateError, match="already voted") as caught:
            await approvals.decide(
                db,
                approval_id=approval.approval_id,
                approver="os:root",
                declared_as="bob",
                approve=True,
                reason=None,
            )
        assert caught.value.exit_code == 1
        after = await approvals.get(db, approval.approval_id)
        assert after.state == "pending"
        assert len(after.votes) == 1

    async def test_deciding_a_decided_request_is_refused(self, db: dbpool.Pool) -> None:
        """A request that is no longer pending takes no vote; the answer is no (exit 1)."""
        approval = await ask(db, await idle_task(db))
        await approvals.decide(
            db, approval_id=approval.approval_id, approver="os:alice", approve=True, reason=None
        )

        with pytest.raises(errors.StateError, match="already approved") as caught:
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:bob", approve=False, reason=None
            )
        assert caught.value.exit_code == 1
        assert (await approvals.get(db, approval.approval_id)).state == "approved"

    async def test_an_unknown_request_is_not_found(self, db: dbpool.Pool) -> None:
        """Deciding an id that does not exist is NotFoundError."""
        with pytest.raises(errors.NotFoundError, match="999"):
            await approvals.decide(
                db, approval_id=999, approver="os:alice", approve=True, reason=None
            )

    async def test_a_vote_after_the_deadline_finds_the_request_expired(
        self, db: dbpool.Pool
    ) -> None:
        """A vote that comes too late is refused, and the request expires there and then."""
        approval = await ask(db, await idle_task(db), timeout=MOMENT)

        with pytest.raises(errors.StateError, match="expired"):
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:alice", approve=True, reason=None
            )
        after = await approvals.get(db, approval.approval_id)
        assert after.state == "expired"
        assert after.votes == ()


class TestExpiry:
    async def test_overdue_requests_expire_and_others_stay_pending(self, db: dbpool.Pool) -> None:
        """expire_overdue expires the requests past their deadline, only those."""
        overdue = await ask(db, await idle_task(db), timeout=MOMENT)
        current = await ask(db, await idle_task(db))

        assert await approvals.expire_overdue(db) == 1
        assert (await approvals.get(db, overdue.approval_id)).state == "expired"
        assert (await approvals.get(db, current.approval_id)).state == "pending"
        assert await approvals.expire_overdue(db) == 0

    async def test_the_sweep_expires_until_cancelled(self, db: dbpool.Pool) -> None:
        """The daemon's loop expires an overdue request and ends when cancelled."""
        approval = await ask(db, await idle_task(db), timeout=MOMENT)
        sweeping = asyncio.create_task(approvals.sweep(db, every=0.01))

        async def expired() -> bool:
            return (await approvals.get(db, approval.approval_id)).state == "expired"

        await support.wait_until(expired, what="the sweep to expire the request")
        sweeping.cancel()
        async with asyncio.timeout(support.WAIT_SECONDS):
            await asyncio.wait([sweeping])
        assert sweeping.cancelled()


class TestResume:
    async def test_approval_resumes_the_task_at_the_step_that_asked(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """After approval the task goes on: `before` is not run again, `refund` runs once."""
        runs: collections.Counter[str] = collections.Counter()
        reg = gated(db, runs)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            approval = await parked(db, w, task_id)
            assert runs == {"before": 1, "ask": 1}
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:alice", approve=True, reason="ok"
            )
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        assert task.output == {"refunded": 700}
        assert runs == {"before": 1, "ask": 2, "refund": 1}
        assert [s.name for s in await dbtasks.list_steps(db, task_id)] == [
            "before",
            "ask",
            "refund",
        ]
        chain = await dbaudit.list_chain(db, f"task:{task_id}")
        order = [e.action for e in chain]
        assert order.index("approval.requested") < order.index("task.waiting")
        assert order.index("task.waiting") < order.index("task.resumed")
        assert chain[order.index("task.resumed")].actor == "os:alice"

    async def test_denial_resumes_the_task_and_the_workflow_sees_it(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A denied request resumes the task; the workflow goes on without the refund."""
        runs: collections.Counter[str] = collections.Counter()
        reg = gated(db, runs)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            approval = await parked(db, w, task_id)
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:bob", approve=False, reason="no"
            )
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        assert task.output == {"refunded": None, "state": "denied"}
        assert runs == {"before": 1, "ask": 2}

    async def test_a_timeout_denies_and_resumes_the_task(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A request the sweep expires resumes its task, which sees it expired."""
        runs: collections.Counter[str] = collections.Counter()
        reg = gated(db, runs, timeout=MOMENT)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await parked(db, w, task_id)
            sweeping = asyncio.create_task(approvals.sweep(db, every=0.01))
            task = await support.wait_for_state(db, task_id, workers=[w])
            sweeping.cancel()
            await asyncio.wait([sweeping])

        assert task.output == {"refunded": None, "state": "expired"}
        assert runs["refund"] == 0

    async def test_two_approvers_one_vote_keeps_the_task_waiting(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """With two approvers needed the task waits after one approval, resumes after two."""
        runs: collections.Counter[str] = collections.Counter()
        reg = gated(db, runs, approvers=2)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            approval = await parked(db, w, task_id)
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:alice", approve=True, reason=None
            )
            still = await dbtasks.get_task(db, task_id)
            assert still is not None
            assert still.state == "waiting"
            await approvals.decide(
                db, approval_id=approval.approval_id, approver="os:bob", approve=True, reason=None
            )
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.output == {"refunded": 700}
        assert runs == {"before": 1, "ask": 2, "refund": 1}

    async def test_a_decision_before_the_task_parks_is_not_lost(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Approved while the step that asked still runs: the park sees it and queues the task."""
        runs: collections.Counter[str] = collections.Counter()

        async def approve_at_once(approval: approvals.Approval) -> None:
            if approval.state == "pending":
                await approvals.decide(
                    db,
                    approval_id=approval.approval_id,
                    approver="os:alice",
                    approve=True,
                    reason=None,
                )

        reg = gated(db, runs, hook=approve_at_once)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.output == {"refunded": 700}
        assert runs == {"before": 1, "ask": 2, "refund": 1}
        chain = await dbaudit.list_chain(db, f"task:{task_id}")
        assert [e.action for e in chain].count("task.waiting") == 1
        [resumed] = [e for e in chain if e.action == "task.resumed"]
        assert resumed.actor.startswith("approval:")  # queued by the park, not by the vote

    async def test_a_decision_resumes_only_the_task_that_waits_for_it(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Deciding approval 1 leaves the task waiting for approval 12 waiting."""
        other = await idle_task(db)
        first = await ask(db, other, step_key="step:0")
        for n in range(1, 11):
            await ask(db, other, step_key=f"step:{n}")
        runs: collections.Counter[str] = collections.Counter()
        reg = gated(db, runs)
        cfg = support.engine_settings(node_name="approvals")
        task_id = await support.submit(db, reg, cfg, workflow=GATED)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            approval = await parked(db, w, task_id)
            assert (first.approval_id, approval.approval_id) == (1, 12)
            await approvals.decide(
                db, approval_id=1, approver="os:alice", approve=True, reason=None
            )
            task = await dbtasks.get_task(db, task_id)

        assert task is not None
        assert task.state == "waiting"
        assert "task.resumed" not in await actions(db, f"task:{task_id}")


class TestAudit:
    async def test_request_votes_and_decision_are_audited_and_announced(
        self, db: dbpool.Pool
    ) -> None:
        """Request in the task's chain, votes and decision in the tenant's; both are events."""
        task_id = await idle_task(db)
        approval = await ask(db, task_id, approvers=2)
        for approver in ("os:alice", "os:bob"):
            await approvals.decide(
                db, approval_id=approval.approval_id, approver=approver, approve=True, reason="ok"
            )

        [requested] = await approval_entries(db, f"task:{task_id}")
        assert requested.action == "approval.requested"
        assert requested.detail["arguments"] == ARGUMENTS
        assert requested.detail["reason"] == WHY
        tenant = await approval_entries(db, "tenant:default")
        assert [(e.action, e.actor, e.task_id) for e in tenant] == [
            ("approval.voted", "os:alice", task_id),
            ("approval.voted", "os:bob", task_id),
            ("approval.decided", "os:bob", task_id),
        ]
        assert tenant[-1].detail["approvers"] == ["os:alice", "os:bob"]
        assert await dbaudit.find_chain_breaks(db) == []
        events = await db.fetch(
            "SELECT type, task_id, payload FROM appliance.outbox_events"
            " WHERE type LIKE 'approval.%' ORDER BY event_seq"
        )
        assert [(e["type"], e["task_id"]) for e in events] == [
            ("approval.requested", task_id),
            ("approval.decided", task_id),
        ]
        assert events[1]["payload"]["state"] == "approved"

    async def test_an_expiry_is_audited_as_the_timeouts_decision(self, db: dbpool.Pool) -> None:
        """The timeout's decision is recorded in the tenant's chain and announced."""
        task_id = await idle_task(db)
        await ask(db, task_id, timeout=MOMENT)
        await approvals.expire_overdue(db)

        [entry] = await approval_entries(db, "tenant:default")
        assert (entry.action, entry.actor, entry.task_id) == (
            "approval.decided",
            "approvals:timeout",
            task_id,
        )
        assert entry.detail["state"] == "expired"
