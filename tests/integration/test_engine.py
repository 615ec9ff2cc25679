"""The task engine in-process, against the real Postgres: replay, retries, idempotency,
cancellation, scheduling, fairness, limits, leases, audit and outbox."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from appliance import errors, models
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]


def counted(calls: collections.Counter[str], name: str, value: Any) -> Callable[[], Awaitable[Any]]:
    """An async step function that counts its runs under `name` and returns `value`."""

    async def run() -> Any:
        calls[name] += 1
        return value

    return run


def three_steps(reg: registry.Registry, calls: collections.Counter[str]) -> None:
    """Register `three`: the steps a, b and c, each counted."""

    @reg.workflow("three")
    async def three(ctx: context.TaskContext, task_input: Any) -> Any:
        a = await ctx.step("a", counted(calls, "a", 1))
        b = await ctx.step("b", counted(calls, "b", a + 1))
        return await ctx.step("c", counted(calls, "c", b + 1))


class TestReplay:
    async def test_resumed_attempt_does_not_run_checkpointed_steps_again(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task that failed after step 2 resumes on attempt 2 without re-running steps 1-2."""
        calls: collections.Counter[str] = collections.Counter()
        replayed: dict[int, int] = {}
        reg = registry.Registry()

        @reg.workflow("resume")
        async def resume(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("first", counted(calls, "first", {"n": 1}))
            await ctx.step("second", counted(calls, "second", [1, 2]))
            replayed[ctx.attempt] = ctx.replayed
            if ctx.attempt == 1:
                raise RuntimeError("fails after step 2")
            return await ctx.step("third", counted(calls, "third", "done"))

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="resume")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts, task.output) == ("succeeded", 2, "done")
        assert calls == {"first": 1, "second": 1, "third": 1}
        assert replayed == {1: 0, 2: 2}

    async def test_replayed_outputs_equal_the_originals(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The outputs handed back on replay equal those the steps returned on the first run."""
        seen: dict[int, tuple[Any, Any]] = {}
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()

        @reg.workflow("resume")
        async def resume(ctx: context.TaskContext, task_input: Any) -> Any:
            a = await ctx.step("first", counted(calls, "first", {"n": 1, "s": "x", "f": 0.5}))
            b = await ctx.step("second", counted(calls, "second", [1, None, True, "é"]))
            seen[ctx.attempt] = (a, b)
            if ctx.attempt == 1:
                raise RuntimeError("fails after step 2")
            return None

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="resume")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        assert seen[1] == ({"n": 1, "s": "x", "f": 0.5}, [1, None, True, "é"])
        assert seen[2] == seen[1]

    async def test_changed_step_name_fails_the_task_without_retry(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step whose name differs from its checkpoint ends the task failed, naming both."""
        reg = registry.Registry()

        @reg.workflow("drift")
        async def drift(ctx: context.TaskContext, task_input: Any) -> Any:
            if ctx.attempt == 1:
                await ctx.step("fetch", counted(collections.Counter(), "fetch", 1))
                raise RuntimeError("first attempt fails")
            return await ctx.step("fetch_v2", counted(collections.Counter(), "fetch_v2", 2))

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="drift", max_attempts=5)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts) == ("failed", 2)
        assert task.error is not None
        assert "NonDeterminismError" in task.error
        assert "'fetch'" in task.error
        assert "'fetch_v2'" in task.error
        assert await support.outcomes(db, task_id) == ["retry", "failed"]

    async def test_caught_step_failure_does_not_shift_later_checkpoints(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step whose error the workflow caught does not make later checkpoints replay wrongly."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()

        async def flaky() -> None:
            calls["flaky"] += 1
            raise RuntimeError("the optional call failed")

        @reg.workflow("fallback")
        async def fallback(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("x", counted(calls, "x", 1))
            with contextlib.suppress(RuntimeError):
                await ctx.step("flaky", flaky)
            await ctx.step("y", counted(calls, "y", 2))
            if ctx.attempt == 1:
                raise RuntimeError("fails after step y")
            return "done"

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="fallback")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", "done")
        assert (calls["x"], calls["y"]) == (1, 1)

    async def test_failure_turned_into_another_error_runs_the_step_again(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step failure the workflow turns into its own error is run again on the next attempt."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()

        async def fetch() -> str:
            calls["fetch"] += 1
            if calls["fetch"] == 1:
                raise RuntimeError("the service is down")
            return "data"

        @reg.workflow("fetching")
        async def fetching(ctx: context.TaskContext, task_input: Any) -> Any:
            try:
                data = await ctx.step("fetch", fetch)
            except RuntimeError:
                data = None
            if data is None:
                raise LookupError("no data yet: retry the task")
            return data

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="fetching", max_attempts=3)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", "data")
        assert calls == {"fetch": 2}

    async def test_replayed_failure_is_caught_by_the_same_handler(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A handled step failure whose type takes more arguments replays as a catchable type."""
        reg = registry.Registry()

        async def parse() -> Any:
            return json.loads("{not json")  # JSONDecodeError(msg, doc, pos): a ValueError

        @reg.workflow("parsing")
        async def parsing(ctx: context.TaskContext, task_input: Any) -> Any:
            try:
                parsed = await ctx.step("parse", parse)
            except ValueError:
                parsed = "fallback"
            await ctx.step("after", counted(collections.Counter(), "after", 1))
            if ctx.attempt == 1:
                raise RuntimeError("fail to force a replay")
            return parsed

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="parsing", max_attempts=3)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output, task.attempts) == ("succeeded", "fallback", 2)


class TestRetries:
    async def test_task_fails_after_max_attempts(self, db: dbpool.Pool, database_dsn: str) -> None:
        """A task that always fails is failed after max_attempts, one attempt row each."""
        reg = registry.Registry()

        @reg.workflow("broken")
        async def broken(ctx: context.TaskContext, task_input: Any) -> Any:
            raise ValueError(f"boom {ctx.attempt}")

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="broken", max_attempts=3)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts, task.error) == ("failed", 3, "ValueError: boom 3")
        attempts = await dbtasks.list_attempts(db, task_id)
        assert [(a.attempt, a.outcome, a.error) for a in attempts] == [
            (1, "retry", "ValueError: boom 1"),
            (2, "retry", "ValueError: boom 2"),
            (3, "failed", "ValueError: boom 3"),
        ]

    async def test_workflow_max_attempts_applies_when_submission_names_none(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A workflow's own max_attempts bounds its tasks when the submission sets none."""
        reg = registry.Registry()

        @reg.workflow("broken", max_attempts=2)
        async def broken(ctx: context.TaskContext, task_input: Any) -> Any:
            raise ValueError("boom")

        cfg = support.engine_settings(max_attempts=5)
        task_id = await support.submit(db, reg, cfg, workflow="broken")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts) == ("failed", 2)
        assert await support.outcomes(db, task_id) == ["retry", "failed"]

    async def test_failed_attempt_pushes_run_after_by_the_backoff(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """After a failed attempt, run_after lies a jittered backoff delay in the future."""
        reg = registry.Registry()

        @reg.workflow("flaky")
        async def flaky(ctx: context.TaskContext, task_input: Any) -> Any:
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
            return "ok"

        base = 0.4
        cfg = support.engine_settings(retry_base_seconds=base, retry_max_seconds=10.0)
        task_id = await support.submit(db, reg, cfg, workflow="flaky")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        first = (await dbtasks.list_attempts(db, task_id))[0]
        assert first.ended_at is not None
        # the delay of attempt 1 lies in [base/2, base]; allow for the time of the commit
        delay = support.seconds(task.run_after - first.ended_at)
        assert base / 2 - 0.05 <= delay <= base + 0.05

    async def test_retry_does_not_start_before_run_after(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The second attempt of a failed task starts only once its run_after has come."""
        reg = registry.Registry()

        @reg.workflow("flaky")
        async def flaky(ctx: context.TaskContext, task_input: Any) -> Any:
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
            return "ok"

        cfg = support.engine_settings(retry_base_seconds=0.4, retry_max_seconds=10.0)
        task_id = await support.submit(db, reg, cfg, workflow="flaky")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        first, second = await dbtasks.list_attempts(db, task_id)
        assert first.ended_at is not None
        assert task.run_after > first.ended_at + dt.timedelta(seconds=0.1)
        assert second.started_at >= task.run_after
        assert task.state == "succeeded"


class TestIdempotency:
    async def test_same_key_returns_the_same_task(self, db: dbpool.Pool) -> None:
        """Submitting twice with one key returns the first task, with created=False."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        first = await support.submitted(
            db, reg, cfg, workflow="three", task_input={"x": 1}, idempotency_key="k1"
        )
        again = await support.submitted(
            db, reg, cfg, workflow="three", task_input={"x": 1}, idempotency_key="k1"
        )

        assert first == models.Submitted(first.task_id, created=True)
        assert again == models.Submitted(first.task_id, created=False)
        assert len(await dbtasks.list_tasks(db)) == 1

    async def test_same_key_with_another_input_is_refused(self, db: dbpool.Pool) -> None:
        """Reusing a key with a different input raises IdempotencyConflictError."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        await support.submit(
            db, reg, cfg, workflow="three", task_input={"x": 1}, idempotency_key="k1"
        )

        with pytest.raises(errors.IdempotencyConflictError, match="k1"):
            await support.submitted(
                db, reg, cfg, workflow="three", task_input={"x": 2}, idempotency_key="k1"
            )

    async def test_tenants_may_reuse_a_key(self, db: dbpool.Pool) -> None:
        """The same key in two tenants makes two tasks."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        acme = await support.submit(
            db, reg, cfg, workflow="three", tenant_id="acme", idempotency_key="k1"
        )
        globex = await support.submit(
            db, reg, cfg, workflow="three", tenant_id="globex", idempotency_key="k1"
        )

        assert acme != globex

    async def test_identical_input_with_a_large_float_is_not_a_conflict(
        self, db: dbpool.Pool
    ) -> None:
        """Resubmitting the very same input (holding a large float) under one key is no conflict."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        first = await support.submit(
            db, reg, cfg, workflow="three", task_input={"amount": 1e23}, idempotency_key="k1"
        )

        again = await support.submitted(
            db, reg, cfg, workflow="three", task_input={"amount": 1e23}, idempotency_key="k1"
        )
        assert again == models.Submitted(first, created=False)


class TestSubmission:
    async def test_unknown_workflow_is_refused(self, db: dbpool.Pool) -> None:
        """Submitting a workflow the registry does not know raises UnknownWorkflowError."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())

        with pytest.raises(errors.UnknownWorkflowError, match="'nope'"):
            await support.submitted(db, reg, support.engine_settings(), workflow="nope")
        assert await dbtasks.list_tasks(db) == []

    async def test_unknown_tenant_is_refused(self, db: dbpool.Pool) -> None:
        """Submitting for a tenant that does not exist raises UnknownTenantError."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())

        with pytest.raises(errors.UnknownTenantError):
            await support.submitted(
                db, reg, support.engine_settings(), workflow="three", tenant_id="initech"
            )

    @pytest.mark.parametrize("value", [float("nan"), float("-inf")], ids=["nan", "inf"])
    async def test_input_json_cannot_carry_is_bad_input(
        self, db: dbpool.Pool, value: float
    ) -> None:
        """An input holding NaN or Infinity raises InputError (bad input), not a database error."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())

        with pytest.raises(errors.InputError, match="not JSON"):
            await support.submitted(
                db, reg, support.engine_settings(), workflow="three", task_input={"x": value}
            )

    async def test_zero_max_attempts_is_refused(self, db: dbpool.Pool) -> None:
        """An explicit max_attempts of 0 is refused rather than replaced by the default."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())

        with pytest.raises(errors.InputError, match="max_attempts"):
            await support.submitted(
                db, reg, support.engine_settings(), workflow="three", max_attempts=0
            )


class _Gate:
    """A step that signals it has begun and then waits to be let through."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self, value: Any = "held") -> Any:
        self.entered.set()
        await support.wait_for_event(self.release)
        return value


def gated_two_steps(reg: registry.Registry, gate: _Gate, calls: collections.Counter[str]) -> None:
    """Register `gated`: step `first` waits at the gate, step `second` is counted."""

    async def first() -> Any:
        calls["first"] += 1
        return await gate.hold("first-done")

    @reg.workflow("gated")
    async def gated(ctx: context.TaskContext, task_input: Any) -> Any:
        await ctx.step("first", first)
        await ctx.step("second", counted(calls, "second", "second-done"))
        return "end"


class TestCancellation:
    async def test_queued_task_is_cancelled_at_once(self, db: dbpool.Pool) -> None:
        """Cancelling a queued task makes it cancelled straight away."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="three")

        assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelled"
        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert (task.state, task.cancel_requested_by) == ("cancelled", "test")
        assert task.finished_at is not None

    async def test_cancelled_queued_task_is_never_run(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A worker never runs a task that was cancelled while queued."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()
        three_steps(reg, calls)
        cfg = support.engine_settings(concurrency=1)
        cancelled = await support.submit(db, reg, cfg, workflow="three")
        await dbtasks.cancel_task(db, task_id=cancelled, actor="test")
        later = await support.submit(db, reg, cfg, workflow="three")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, later, workers=[w])

        assert calls == {"a": 1, "b": 1, "c": 1}
        assert await dbtasks.list_steps(db, cancelled) == []

    async def _cancel_mid_step(
        self, db: dbpool.Pool, database_dsn: str, calls: collections.Counter[str]
    ) -> models.Task:
        """Cancel `gated` while its first step runs, then let the step finish."""
        gate = _Gate()
        reg = registry.Registry()
        gated_two_steps(reg, gate, calls)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
            gate.release.set()
            return await support.wait_for_state(db, task_id, workers=[w])

    async def test_running_task_stops_at_the_next_step_boundary(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A running task cancelled mid-step ends cancelled; the step after it never runs."""
        calls: collections.Counter[str] = collections.Counter()
        task = await self._cancel_mid_step(db, database_dsn, calls)

        assert task.state == "cancelled"
        assert calls == {"first": 1}

    async def test_step_running_at_cancel_is_checkpointed(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The step that was running when the cancel came completes and is checkpointed."""
        task = await self._cancel_mid_step(db, database_dsn, collections.Counter())

        steps = await dbtasks.list_steps(db, task.task_id)
        assert [(s.position, s.name, s.output) for s in steps] == [(0, "first", "first-done")]
        assert await support.outcomes(db, task.task_id) == ["cancelled"]

    async def test_cancel_of_finished_task_reports_its_state(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Cancelling a task that has ended returns its terminal state and changes nothing."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="three")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, task_id, workers=[w])

        assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "ended:succeeded"
        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert (task.state, task.cancel_requested_by) == ("succeeded", None)

    async def test_cancel_is_not_lost_when_the_attempt_then_fails(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task whose cancel was requested ends cancelled, not retried, if its step fails."""
        gate = _Gate()
        reg = registry.Registry()

        async def fail_late() -> None:
            await gate.hold()
            raise RuntimeError("the step fails after the cancel")

        @reg.workflow("failing")
        async def failing(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("fail_late", fail_late)

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="failing", max_attempts=3)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
            gate.release.set()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.attempts) == ("cancelled", 1)

    async def test_cancel_of_task_whose_worker_died_does_not_run_it(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task cancelled while its worker is dead ends cancelled without running again."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()

        @reg.workflow("one")
        async def one(ctx: context.TaskContext, task_input: Any) -> Any:
            return await ctx.step("effect", counted(calls, "effect", "sent"))

        cfg = support.engine_settings(lease_seconds=1)
        task_id = await support.submit(db, reg, cfg, workflow="one")
        await support.fake_claim(db, reg, worker_id="dead:1", node="n0", lease_seconds=1)
        assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "cancelled"
        assert calls == {}


class TestRetryTask:
    def _two_steps(
        self, reg: registry.Registry, calls: collections.Counter[str], broken: list[bool]
    ) -> None:
        """Register `fixable`: step `first` counted, step `second` fails while broken[0]."""

        async def second() -> str:
            calls["second"] += 1
            if broken[0]:
                raise RuntimeError("second is broken")
            return "fixed"

        @reg.workflow("fixable")
        async def fixable(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("first", counted(calls, "first", "one"))
            return await ctx.step("second", second)

    async def test_retry_puts_a_failed_task_back_in_the_queue(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """retry_task on a failed task answers 'queued' and leaves it queued."""
        reg = registry.Registry()
        self._two_steps(reg, collections.Counter(), [True])
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="fixable", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, task_id, workers=[w])

        assert await dbtasks.retry_task(db, task_id=task_id, actor="test", attempts=1) == "queued"
        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert (task.state, task.error) == ("queued", None)

    async def test_retried_task_resumes_from_its_last_checkpoint(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A failed task put back by retry_task runs again from its last checkpoint."""
        calls: collections.Counter[str] = collections.Counter()
        broken = [True]
        reg = registry.Registry()
        self._two_steps(reg, calls, broken)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="fixable", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            failed = await support.wait_for_state(db, task_id, workers=[w])
            assert failed.state == "failed"
            broken[0] = False
            assert (
                await dbtasks.retry_task(db, task_id=task_id, actor="test", attempts=1) == "queued"
            )
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", "fixed")
        assert calls == {"first": 1, "second": 2}

    async def test_retry_of_succeeded_task_changes_nothing(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """retry_task on a succeeded task answers its state and does not requeue it."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="three")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, task_id, workers=[w])

        assert (
            await dbtasks.retry_task(db, task_id=task_id, actor="test", attempts=1)
            == "refused:succeeded"
        )
        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert task.state == "succeeded"


class TestScheduling:
    async def test_higher_priority_runs_first(self, db: dbpool.Pool, database_dsn: str) -> None:
        """With one slot, queued tasks run in order of priority, highest first."""
        order: list[int] = []
        reg = registry.Registry()

        @reg.workflow("ranked")
        async def ranked(ctx: context.TaskContext, task_input: Any) -> Any:
            order.append(task_input)

        cfg = support.engine_settings(concurrency=1)
        ids = [
            await support.submit(db, reg, cfg, workflow="ranked", task_input=p, priority=p)
            for p in (0, 10, 5)
        ]
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_all(db, ids, workers=[w])

        assert order == [10, 5, 0]

    async def test_delayed_task_does_not_run_before_its_time(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task with run_after in the future does not start before run_after."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings(poll_seconds=30)
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
        task_id = await support.submit(db, reg, cfg, workflow="three", run_after=due)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.started_at is not None
        assert task.started_at >= due

    async def test_idle_worker_wakes_for_a_delayed_task(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """An idle worker runs a delayed task soon after its time, with no poll or notify."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings(poll_seconds=30)
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
        task_id = await support.submit(db, reg, cfg, workflow="three", run_after=due)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w], timeout=5)

        assert task.state == "succeeded"
        assert task.finished_at is not None
        assert support.seconds(task.finished_at - due) < 0.5


class TestFairness:
    @pytest.mark.parametrize(
        ("integration", "limits"),
        [(None, {}), ("github", {}), ("github", {"github": 4})],
        ids=["plain", "integration", "limited-integration"],
    )
    async def test_other_tenant_starts_long_before_a_flood_drains(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        integration: str | None,
        limits: dict[str, int],
    ) -> None:
        """A task of globex submitted behind 40 of acme starts after only a few of them."""
        gauge = support.Gauge(full_at=1)
        reg = registry.Registry()

        async def work() -> None:
            async with gauge.inside():
                await asyncio.sleep(0.05)

        @reg.workflow("work", integration=integration)
        async def run(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("work", work)

        cfg = support.engine_settings(
            concurrency=4, tenant_concurrency=2, integration_limits=limits
        )
        flood = [
            await support.submit(db, reg, cfg, workflow="work", tenant_id="acme") for _ in range(40)
        ]
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gauge.full)
            globex_id = await support.submit(db, reg, cfg, workflow="work", tenant_id="globex")
            tasks = await support.wait_for_all(db, [*flood, globex_id], workers=[w])

        globex = next(t for t in tasks if t.task_id == globex_id)
        assert globex.started_at is not None
        acme_before = [
            t
            for t in tasks
            if t.tenant_id == "acme" and t.started_at and t.started_at < globex.started_at
        ]
        assert len(acme_before) <= 8

    @pytest.mark.parametrize("backlog", [8, 40])
    async def test_claim_batch_keeps_a_tenant_to_its_share_while_others_wait(
        self, db: dbpool.Pool, database_dsn: str, backlog: int
    ) -> None:
        """One claim keeps a tenant to its share while another waits, however long its queue."""
        reg = registry.Registry()

        @reg.workflow("work")
        async def run(ctx: context.TaskContext, task_input: Any) -> Any:
            await asyncio.sleep(0.05)

        cfg = support.engine_settings(concurrency=4, tenant_concurrency=2)
        ids = [
            await support.submit(db, reg, cfg, workflow="work", tenant_id="acme")
            for _ in range(backlog)
        ]
        globex_id = await support.submit(db, reg, cfg, workflow="work", tenant_id="globex")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            tasks = await support.wait_for_all(db, [*ids, globex_id], workers=[w])

        first_claim = min(t.started_at for t in tasks if t.started_at is not None)
        globex = next(t for t in tasks if t.task_id == globex_id)
        assert globex.started_at == first_claim

    async def test_single_tenant_alone_uses_every_slot(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """With no other tenant waiting, one tenant runs as many tasks as there are slots."""
        gauge = support.Gauge(full_at=4)
        reg = registry.Registry()

        async def hold() -> None:
            async with gauge.inside():
                # each task waits (bounded) until four run at once
                with contextlib.suppress(AssertionError):
                    await support.wait_for_event(gauge.full, timeout=1)

        @reg.workflow("hold")
        async def run(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("hold", hold)

        cfg = support.engine_settings(concurrency=4, tenant_concurrency=2)
        ids = [
            await support.submit(db, reg, cfg, workflow="hold", tenant_id="acme") for _ in range(8)
        ]
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            tasks = await support.wait_for_all(db, ids, workers=[w])

        assert {t.state for t in tasks} == {"succeeded"}
        assert gauge.peak == 4


class TestIntegrationLimit:
    async def test_hard_limit_is_never_exceeded(self, db: dbpool.Pool, database_dsn: str) -> None:
        """Tasks of an integration limited to 1 never run two at once, even with free slots."""
        gauge = support.Gauge()
        reg = registry.Registry()

        async def call_github() -> None:
            async with gauge.inside():
                await asyncio.sleep(0.05)

        @reg.workflow("gh", integration="github")
        async def gh(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("call", call_github)

        cfg = support.engine_settings(concurrency=4, integration_limits={"github": 1})
        ids = [await support.submit(db, reg, cfg, workflow="gh") for _ in range(4)]
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            tasks = await support.wait_for_all(db, ids, workers=[w])

        assert {t.state for t in tasks} == {"succeeded"}
        assert gauge.peak == 1

    async def test_burst_of_limited_tasks_does_not_hold_back_other_work(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Other work behind a long queue of tasks held back by a limit runs in the free slots."""
        other_ran = asyncio.Event()
        first_saw_other: list[bool] = []
        reg = registry.Registry()

        async def call_github() -> None:
            if not first_saw_other:
                # the first limited task waits (bounded) for the other work to run beside it
                with contextlib.suppress(AssertionError):
                    await support.wait_for_event(other_ran, timeout=1)
                first_saw_other.append(other_ran.is_set())

        async def other_work() -> None:
            other_ran.set()

        @reg.workflow("gh", integration="github")
        async def gh(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("call", call_github)

        @reg.workflow("other")
        async def other(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("work", other_work)

        cfg = support.engine_settings(
            concurrency=4, poll_seconds=30, integration_limits={"github": 1}
        )
        ids = [await support.submit(db, reg, cfg, workflow="gh") for _ in range(40)]
        ids.append(await support.submit(db, reg, cfg, workflow="other", tenant_id="acme"))
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            tasks = await support.wait_for_all(db, ids, workers=[w])

        assert {t.state for t in tasks} == {"succeeded"}
        assert first_saw_other == [True]

    async def test_task_held_back_by_the_limit_does_not_make_the_worker_spin(
        self, db: dbpool.Pool, database_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While a ready task waits for the integration limit, the idle worker does not spin."""
        gate = _Gate()
        reg = registry.Registry()

        async def call_github(first: bool) -> None:
            if first:
                gate.entered.set()
                await asyncio.sleep(0.3)

        @reg.workflow("gh", integration="github")
        async def gh(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("call", call_github, task_input)

        loop = asyncio.get_running_loop()
        claims: list[float] = []
        real_claim = dbtasks.claim_tasks

        async def counting_claim(*args: Any, **kwargs: Any) -> list[models.ClaimedTask]:
            claims.append(loop.time())
            return await real_claim(*args, **kwargs)

        monkeypatch.setattr(dbtasks, "claim_tasks", counting_claim)
        cfg = support.engine_settings(
            concurrency=4, poll_seconds=5, integration_limits={"github": 1}
        )
        first = await support.submit(db, reg, cfg, workflow="gh", task_input=True)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            held_since = loop.time()
            second = await support.submit(db, reg, cfg, workflow="gh", task_input=False)
            await support.wait_for_all(db, [first, second], workers=[w])

        while_held = [t for t in claims if t >= held_since]
        assert len(while_held) <= 5

    async def test_task_freed_from_the_limit_starts_without_waiting_for_a_poll(
        self, db: dbpool.Pool, database_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When a limited task ends on a stopping worker, an idle worker starts the next at once."""
        gate = _Gate()
        held_back = asyncio.Event()
        idle_worker: list[str] = []
        reg = registry.Registry()

        async def call_github(first: bool) -> None:
            if first:
                await gate.hold()

        @reg.workflow("gh", integration="github")
        async def gh(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("call", call_github, task_input)

        real_claim = dbtasks.claim_tasks

        async def watched_claim(*args: Any, **kwargs: Any) -> list[models.ClaimedTask]:
            claimed = await real_claim(*args, **kwargs)
            if kwargs["worker"] in idle_worker and not claimed:
                held_back.set()
            return claimed

        monkeypatch.setattr(dbtasks, "claim_tasks", watched_claim)
        limits = {"github": 1}
        one = support.engine_settings(
            node_name="n1", concurrency=1, poll_seconds=30, integration_limits=limits
        )
        two = support.engine_settings(
            node_name="n2", concurrency=1, poll_seconds=30, integration_limits=limits
        )
        first = await support.submit(db, reg, one, workflow="gh", task_input=True)
        async with support.running_worker(db, database_dsn, one, reg) as w1:
            await support.wait_for_event(gate.entered)
            async with support.running_worker(db, database_dsn, two, reg) as w2:
                idle_worker.append(w2.worker.worker_id)
                second = await support.submit(db, reg, two, workflow="gh", task_input=False)
                await support.wait_for_event(held_back)  # the idle worker found it held back
                stopping = asyncio.create_task(w1.worker.stop(grace=5))
                gate.release.set()
                await stopping
                assert (await support.wait_for_state(db, first)).state == "succeeded"
                task = await support.wait_for_state(db, second, workers=[w2], timeout=3)

        assert task.state == "succeeded"


class TestLeases:
    async def test_live_worker_takes_over_a_dead_workers_task(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task claimed by a dead worker is taken over by a live one once its lease expires."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        task_id = await support.submit(db, reg, support.engine_settings(), workflow="three")
        loop = asyncio.get_running_loop()
        claimed_at = loop.time()
        await support.fake_claim(db, reg, worker_id="dead:1", node="n0", lease_seconds=1)
        one = support.engine_settings(node_name="n1", lease_seconds=1)
        two = support.engine_settings(node_name="n2", lease_seconds=1)
        async with (
            support.running_worker(db, database_dsn, one, reg) as w1,
            support.running_worker(db, database_dsn, two, reg) as w2,
        ):
            task = await support.wait_for_state(db, task_id, workers=[w1, w2], timeout=5)
            took = loop.time() - claimed_at

        assert task.state == "succeeded"
        assert took < 2.5
        attempts = await dbtasks.list_attempts(db, task_id)
        assert [(a.worker, a.outcome) for a in attempts[:1]] == [("dead:1", "lease_expired")]
        assert [(a.node in {"n1", "n2"}, a.outcome) for a in attempts[1:]] == [(True, "succeeded")]

    async def test_restarted_node_takes_back_its_tasks_at_once(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A worker starting on a node requeues that node's running tasks without waiting."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings(node_name="n1", lease_seconds=60)
        task_id = await support.submit(db, reg, cfg, workflow="three")
        await support.fake_claim(db, reg, worker_id="n1:dead", node="n1", lease_seconds=60)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w], timeout=3)

        assert task.state == "succeeded"
        assert await support.outcomes(db, task_id) == ["node_restarted", "succeeded"]

    async def test_stale_writer_cannot_checkpoint_after_a_takeover(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """After a takeover, record_step by the old worker and attempt raises LeaseLostError."""
        gate = _Gate()
        reg = registry.Registry()
        gated_two_steps(reg, gate, collections.Counter())
        cfg = support.engine_settings(lease_seconds=1)
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        dead = await support.fake_claim(db, reg, worker_id="dead:1", node="n0", lease_seconds=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            with pytest.raises(errors.LeaseLostError):
                await support.record_step_as(
                    db, task_id=task_id, worker="dead:1", attempt=dead.attempt, name="stale"
                )
            gate.release.set()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        steps = await dbtasks.list_steps(db, task_id)
        assert [s.name for s in steps] == ["first", "second"]

    async def test_stopping_worker_releases_its_task_with_the_step_checkpointed(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A worker told to stop puts its task back in the queue after the running step."""
        gate = _Gate()
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()
        gated_two_steps(reg, gate, calls)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            stopping = asyncio.create_task(w.worker.stop(grace=5))
            gate.release.set()
            await stopping

        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert task.state == "queued"
        assert [s.name for s in await dbtasks.list_steps(db, task_id)] == ["first"]
        assert await support.outcomes(db, task_id) == ["released"]
        assert calls == {"first": 1}

    async def test_released_task_is_resumed_by_the_next_worker(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task released by a stopping worker is finished by the next one, from its checkpoint."""
        gate = _Gate()
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()
        gated_two_steps(reg, gate, calls)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="gated")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(gate.entered)
            stopping = asyncio.create_task(w.worker.stop(grace=5))
            gate.release.set()
            await stopping
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", "end")
        assert calls == {"first": 1, "second": 1}
        steps = await dbtasks.list_steps(db, task_id)
        assert [(s.name, s.output) for s in steps] == [
            ("first", "first-done"),
            ("second", "second-done"),
        ]

    async def test_task_whose_only_attempt_died_with_its_worker_runs_again(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """An attempt lost with its worker is not charged: a task of one attempt runs again."""
        calls: collections.Counter[str] = collections.Counter()
        reg = registry.Registry()

        @reg.workflow("one")
        async def one(ctx: context.TaskContext, task_input: Any) -> Any:
            return await ctx.step("effect", counted(calls, "effect", "sent"))

        cfg = support.engine_settings(lease_seconds=1)
        task_id = await support.submit(db, reg, cfg, workflow="one", max_attempts=1)
        await support.fake_claim(db, reg, worker_id="dead:1", node="n0", lease_seconds=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w], timeout=5)

        assert (task.state, task.crashes) == ("succeeded", 1)
        assert calls == {"effect": 1}
        assert await support.outcomes(db, task_id) == ["lease_expired", "succeeded"]


class TestShutdown:
    async def test_stop_during_a_claim_leaves_no_task_in_flight(
        self, db: dbpool.Pool, database_dsn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When stop() returns, a task claimed while it was being called is not still running."""
        claiming = asyncio.Event()
        go = asyncio.Event()
        reg = registry.Registry()

        @reg.workflow("slow_start")
        async def slow_start(ctx: context.TaskContext, task_input: Any) -> Any:
            await asyncio.sleep(0.3)  # workflow code before its first step
            return await ctx.step("only", counted(collections.Counter(), "only", 1))

        real_claim = dbtasks.claim_tasks

        async def held_claim(*args: Any, **kwargs: Any) -> list[models.ClaimedTask]:
            claiming.set()
            await support.wait_for_event(go)
            return await real_claim(*args, **kwargs)

        monkeypatch.setattr(dbtasks, "claim_tasks", held_claim)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="slow_start")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_event(claiming)
            stopping = asyncio.create_task(w.worker.stop(grace=5))
            go.set()
            await stopping
            in_flight = w.worker.active
            at_stop = await dbtasks.get_task(db, task_id)

            async def slots_ended() -> bool:
                return w.worker.active == 0

            # let the orphaned slot end before the next test empties the tables
            await support.wait_until(slots_ended, what="the worker's slots to end")

        assert at_stop is not None
        assert (in_flight, at_stop.state) == (0, "queued")


class TestAudit:
    async def _finished_three(self, db: dbpool.Pool, database_dsn: str) -> int:
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="three")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])
        assert task.state == "succeeded"
        return task_id

    async def test_every_step_has_an_entry_in_the_task_chain(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Each step of a finished task has a step.completed entry in chain task:<id>."""
        task_id = await self._finished_three(db, database_dsn)

        entries = await dbaudit.list_chain(db, f"task:{task_id}")
        steps = [e.detail["step"] for e in entries if e.action == "step.completed"]
        assert steps == ["a", "b", "c"]
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        assert {e.task_id for e in entries} == {task_id}

    async def test_untouched_log_has_no_chain_breaks(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """find_chain_breaks finds nothing in a log nobody altered."""
        await self._finished_three(db, database_dsn)

        assert await dbaudit.find_chain_breaks(db) == []

    async def _behind_the_triggers(self, db: dbpool.Pool, statement: str, *args: Any) -> None:
        """Run a statement on the audit log with its append-only trigger lifted (as owner)."""
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "ALTER TABLE appliance.audit_entries DISABLE TRIGGER audit_entries_append_only"
            )
            await conn.execute(statement, *args)
            await conn.execute(
                "ALTER TABLE appliance.audit_entries ENABLE TRIGGER audit_entries_append_only"
            )

    async def test_tampered_entry_is_named(self, db: dbpool.Pool, database_dsn: str) -> None:
        """An entry altered behind the triggers' back is reported by chain and seq."""
        task_id = await self._finished_three(db, database_dsn)
        chain = f"task:{task_id}"
        await self._behind_the_triggers(
            db,
            "UPDATE appliance.audit_entries SET detail = detail || '{\"forged\": true}'"
            " WHERE chain = $1 AND seq = 3",
            chain,
        )

        breaks = await dbaudit.find_chain_breaks(db)
        assert [(b.chain, b.seq) for b in breaks] == [(chain, 3)]
        assert "altered" in breaks[0].reason

    async def test_removed_entry_is_named(self, db: dbpool.Pool, database_dsn: str) -> None:
        """An entry deleted from the middle of a chain is reported at the entry after it."""
        task_id = await self._finished_three(db, database_dsn)
        chain = f"task:{task_id}"
        await self._behind_the_triggers(
            db, "DELETE FROM appliance.audit_entries WHERE chain = $1 AND seq = 3", chain
        )

        breaks = await dbaudit.find_chain_breaks(db)
        assert [(b.chain, b.seq) for b in breaks] == [(chain, 4)]
        assert "missing" in breaks[0].reason

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE appliance.audit_entries SET actor = 'mallory'",
            "DELETE FROM appliance.audit_entries",
            "TRUNCATE appliance.audit_entries",
        ],
        ids=["update", "delete", "truncate"],
    )
    async def test_changes_are_refused(self, db: dbpool.Pool, statement: str) -> None:
        """UPDATE, DELETE and TRUNCATE of audit entries are refused by the triggers."""
        before = await db.fetchval("SELECT count(*) FROM appliance.audit_entries")
        assert before > 0

        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
        rows = await db.fetch("SELECT actor FROM appliance.audit_entries")
        assert len(rows) == before
        assert "mallory" not in {r["actor"] for r in rows}


class TestOutbox:
    async def test_three_step_task_writes_its_events_in_order(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A 3-step task writes submitted, started, 3 step.completed and succeeded, in order."""
        reg = registry.Registry()
        three_steps(reg, collections.Counter())
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="three")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_for_state(db, task_id, workers=[w])

        assert await support.event_types(db, task_id) == [
            "task.submitted",
            "task.started",
            "step.completed",
            "step.completed",
            "step.completed",
            "task.succeeded",
        ]
        payloads = await db.fetch(
            "SELECT payload FROM appliance.outbox_events WHERE type = 'step.completed'"
            " ORDER BY event_seq"
        )
        assert [p["payload"]["step"] for p in payloads] == ["a", "b", "c"]


class TestStepOutput:
    async def _seen_per_attempt(
        self, db: dbpool.Pool, database_dsn: str, value: Callable[[], Any]
    ) -> dict[int, Any]:
        """Run a step returning value() on attempt 1 and replay it on attempt 2."""
        seen: dict[int, Any] = {}
        reg = registry.Registry()

        async def produce() -> Any:
            return value()

        @reg.workflow("produce")
        async def run(ctx: context.TaskContext, task_input: Any) -> Any:
            seen[ctx.attempt] = await ctx.step("produce", produce)
            if ctx.attempt == 1:
                raise RuntimeError("fail to force a replay")
            return None

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="produce")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])
        assert task.state == "succeeded"
        return seen

    async def test_tuple_comes_back_as_a_list_on_first_run_and_replay(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step returning a tuple gets a list back, the same on first run as on replay."""
        seen = await self._seen_per_attempt(db, database_dsn, lambda: (1, "a", (2, 3)))

        assert seen == {1: [1, "a", [2, 3]], 2: [1, "a", [2, 3]]}
        assert type(seen[1]) is list

    async def test_large_float_comes_back_equal_on_replay(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step returning a large float gets an equal float back on replay."""
        seen = await self._seen_per_attempt(db, database_dsn, lambda: {"x": 1e300})

        assert seen[2] == seen[1] == {"x": 1e300}
        assert type(seen[2]["x"]) is float

    async def test_nul_character_survives_the_round_trip(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A string holding a NUL character comes back unchanged on first run and replay."""
        seen = await self._seen_per_attempt(db, database_dsn, lambda: {"raw": "a\x00b"})

        assert seen == {1: {"raw": "a\x00b"}, 2: {"raw": "a\x00b"}}

    async def test_failure_message_with_a_nul_character_is_recorded(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A workflow failing with a NUL character in its message ends failed with its error."""
        reg = registry.Registry()

        @reg.workflow("garbled")
        async def garbled(ctx: context.TaskContext, task_input: Any) -> Any:
            raise ValueError("reply was b\x00d")

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="garbled", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "failed"
        assert task.error is not None
        assert task.error.startswith("ValueError: reply was b")

    async def test_set_output_fails_the_attempt_naming_the_step(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step returning a set fails the attempt with a message naming the step."""
        reg = registry.Registry()

        async def make_set() -> set[int]:
            return {1, 2}

        @reg.workflow("bad")
        async def bad(ctx: context.TaskContext, task_input: Any) -> Any:
            return await ctx.step("make_set", make_set)

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="bad", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "failed"
        assert task.error is not None
        assert "'make_set'" in task.error
        assert "not JSON" in task.error

    async def test_workflow_output_postgres_cannot_store_fails_the_attempt(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A workflow returning a value jsonb refuses (NaN) ends its task failed, not stuck."""
        reg = registry.Registry()

        @reg.workflow("bad")
        async def bad(ctx: context.TaskContext, task_input: Any) -> Any:
            return {"ratio": float("nan")}

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="bad", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "failed"
        assert await support.outcomes(db, task_id) == ["failed"]

    @pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
    async def test_value_postgres_cannot_store_fails_the_attempt_naming_the_step(
        self, db: dbpool.Pool, database_dsn: str, value: Any
    ) -> None:
        """A step output JSON cannot carry (NaN, Infinity) fails the attempt, naming the step."""
        reg = registry.Registry()

        async def make_value() -> Any:
            return value

        @reg.workflow("bad")
        async def bad(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("make_value", make_value)
            return "unreachable"

        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="bad", max_attempts=1)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "failed"
        assert task.error is not None
        assert "'make_value'" in task.error
