"""Replay and fork against the real Postgres with a real worker: a new task reuses the source's
checkpoints before a step and runs the rest; a changed workflow is refused with the first
difference; the audit log alone rebuilds every step result."""

from __future__ import annotations

import collections
import contextlib
import json
from typing import Any

import pytest

from appliance import errors
from appliance.agents import loop
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry, replay
from tests.support import engine as support

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]

CONFIG = support.engine_settings(node_name="replay-test")
Calls = collections.Counter[str]


def counted(calls: Calls, name: str, value: Any) -> Any:
    async def run() -> Any:
        calls[name] += 1
        return value

    return run


def register_abc(
    reg: registry.Registry, calls: Calls, *, names: tuple[str, ...] = ("a", "b", "c")
) -> None:
    """`abc`: three counted steps, each one's output built on the last (names as given)."""

    @reg.workflow("abc")
    async def abc(ctx: context.TaskContext, task_input: Any) -> Any:
        total = task_input["start"]
        for name in names:
            total = await ctx.step(name, counted(calls, name, total + 1))
        return total


async def ran(db: dbpool.Pool, database_dsn: str, reg: registry.Registry, task_id: int) -> str:
    """Run the queued tasks of `reg` until `task_id` ended; its state."""
    async with support.running_worker(db, database_dsn, CONFIG, reg) as w:
        task = await support.wait_for_state(db, task_id, workers=[w])
    return task.state


async def finished_abc(db: dbpool.Pool, database_dsn: str, calls: Calls) -> int:
    """A task of `abc` that ran its three steps."""
    reg = registry.Registry()
    register_abc(reg, calls)
    task_id = await support.submit(db, reg, CONFIG, workflow="abc", task_input={"start": 10})
    assert await ran(db, database_dsn, reg, task_id) == "succeeded"
    return task_id


class TestFork:
    async def test_a_fork_reuses_the_steps_before_and_runs_the_rest(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Replayed from `b`, the new task reads `a` back and runs `b` and `c` again."""
        calls: Calls = collections.Counter()
        source = await finished_abc(db, database_dsn, calls)
        reg = registry.Registry()
        register_abc(reg, calls)

        replayed = await replay.replay(db, reg, CONFIG, task_id=source, from_step="b", actor="test")
        state = await ran(db, database_dsn, reg, replayed.task_id)

        task = await dbtasks.get_task(db, replayed.task_id)
        assert task is not None
        assert (state, task.output, task.replay_of, task.replay_from) == (
            "succeeded",
            13,
            source,
            "b",
        )
        assert (replayed.replay_of, replayed.reused_steps) == (source, 1)
        assert calls == {"a": 1, "b": 2, "c": 2}
        steps = await dbtasks.list_steps(db, replayed.task_id)
        assert [(s.name, s.attempt) for s in steps] == [("a", 0), ("b", 1), ("c", 1)]

    async def test_without_a_step_every_step_runs_again(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A replay of the whole task reuses nothing."""
        calls: Calls = collections.Counter()
        source = await finished_abc(db, database_dsn, calls)
        reg = registry.Registry()
        register_abc(reg, calls)

        replayed = await replay.replay(
            db, reg, CONFIG, task_id=source, from_step=None, actor="test"
        )
        await ran(db, database_dsn, reg, replayed.task_id)

        assert replayed.reused_steps == 0
        assert calls == {"a": 2, "b": 2, "c": 2}

    async def test_both_chains_record_the_replay_and_still_verify(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The source's chain says `task.replayed`, the new one's starts with the replay and a
        `step.reused` per reused checkpoint; every chain verifies."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        reg = registry.Registry()
        register_abc(reg, collections.Counter())

        replayed = await replay.replay(db, reg, CONFIG, task_id=source, from_step="c", actor="ops")

        [told] = [
            e for e in await dbaudit.list_chain(db, f"task:{source}") if e.action == "task.replayed"
        ]
        assert (told.actor, told.detail) == (
            "ops",
            {"replay_task_id": replayed.task_id, "from_step": "c", "reused_steps": 2},
        )
        new_chain = await dbaudit.list_chain(db, f"task:{replayed.task_id}")
        assert [e.action for e in new_chain] == ["task.submitted", "step.reused", "step.reused"]
        assert new_chain[0].detail["replay_of"] == source
        assert await dbaudit.find_chain_breaks(db) == []

    async def test_a_handled_failure_before_the_fork_is_raised_again(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A step failure the workflow caught is replayed as the same exception, so the
        check and the new task follow the same path."""
        calls: Calls = collections.Counter()
        reg = registry.Registry()

        async def flaky() -> None:
            calls["flaky"] += 1
            raise LookupError("not there")

        @reg.workflow("fallback")
        async def fallback(ctx: context.TaskContext, task_input: Any) -> Any:
            try:
                await ctx.step("lookup", flaky)
            except LookupError:
                return await ctx.step("fallback", counted(calls, "fallback", "used the fallback"))
            return await ctx.step("found", counted(calls, "found", "found it"))

        source = await support.submit(db, reg, CONFIG, workflow="fallback")
        await ran(db, database_dsn, reg, source)

        replayed = await replay.replay(
            db, reg, CONFIG, task_id=source, from_step="fallback", actor="test"
        )
        await ran(db, database_dsn, reg, replayed.task_id)

        task = await dbtasks.get_task(db, replayed.task_id)
        assert task is not None
        assert task.output == "used the fallback"
        assert calls == {"flaky": 1, "fallback": 2}

    async def test_a_service_is_stood_in_for_while_checking(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A workflow that looks a daemon service up with ctx.service is checked without the
        daemon: the stand-in is never called, since no step runs."""
        reg = registry.Registry()

        class Lookup:
            async def find(self, key: str) -> str:
                return key.upper()

        @reg.workflow("served")
        async def served(ctx: context.TaskContext, task_input: Any) -> Any:
            lookup = ctx.service("lookup", Lookup, "no lookup service")
            first = await ctx.step("first", lookup.find, "x")
            return await ctx.step("second", lookup.find, first + "y")

        services = {"lookup": Lookup()}
        source = await support.submit(db, reg, CONFIG, workflow="served")
        async with support.running_worker(db, database_dsn, CONFIG, reg, services) as w:
            await support.wait_for_state(db, source, workers=[w])

        replayed = await replay.replay(
            db, reg, CONFIG, task_id=source, from_step="second", actor="test"
        )
        async with support.running_worker(db, database_dsn, CONFIG, reg, services) as w:
            task = await support.wait_for_state(db, replayed.task_id, workers=[w])

        assert (task.state, task.output) == ("succeeded", "XY")

    async def test_an_agent_task_is_checked_without_the_agent_runtime(
        self, db: dbpool.Pool
    ) -> None:
        """`agent.run`'s checkpoints (definition, passages, a reply asking for a tool, the
        tool's result, the next reply) replay in a process without the model or the tools: a
        fork from `model:1` reuses the four before it."""
        spec = {
            "name": "support",
            "version": 1,
            "persona": "Be brief.",
            "model": "claude-sonnet-4-5",
            "tools": ["lookup"],
            "max_tokens": 64,
            "max_turns": 4,
            "retrieval": {},
        }
        asks = {
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 5},
            "request_id": "req_1",
        }
        answers = {
            "content": [{"type": "text", "text": "Five days."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 9},
            "request_id": "req_2",
        }
        task_id = await support.submit(
            db,
            registry.registry,
            CONFIG,
            workflow=loop.WORKFLOW,
            task_input={"agent": "support", "prompt": "Refunds?"},
        )
        for position, (name, output) in enumerate(
            (("agent", spec), ("retrieve", []), ("model:0", asks), ("tool:0:lookup", "5 days"),
             ("model:1", answers))
        ):  # fmt: skip
            await db.execute(
                "INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt,"
                " started_at, duration_ms) VALUES ($1, $2, 'default', $3, $4::text::json, 1,"
                " now(), 1.0)",
                task_id,
                position,
                name,
                json.dumps(output),
            )

        replayed = await replay.replay(
            db, registry.registry, CONFIG, task_id=task_id, from_step="model:1", actor="t"
        )

        assert replayed.reused_steps == 4


class TestRefusals:
    async def test_a_renamed_step_is_refused_naming_the_first_difference(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The code now names step 1 `b2`: a replay from `c` is refused, naming both names,
        and no task is made."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        changed = registry.Registry()
        register_abc(changed, collections.Counter(), names=("a", "b2", "c"))

        with pytest.raises(errors.ReplayMismatchError) as refused:
            await replay.replay(db, changed, CONFIG, task_id=source, from_step="c", actor="test")

        assert "step 1 is 'b2' in the workflow now but was checkpointed as 'b'" in str(
            refused.value
        )
        assert [t.task_id for t in await dbtasks.list_tasks(db)] == [source]

    async def test_a_step_changed_after_the_fork_point_does_not_matter(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Only the steps up to the fork are compared: a new `c2` is fine from `b` on."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        changed = registry.Registry()
        register_abc(changed, collections.Counter(), names=("a", "b", "c2"))

        replayed = await replay.replay(
            db, changed, CONFIG, task_id=source, from_step="b", actor="t"
        )

        assert replayed.reused_steps == 1

    async def test_a_workflow_that_now_ends_earlier_is_refused(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The code now makes one step only: the fork step `c` is never reached."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        shorter = registry.Registry()
        register_abc(shorter, collections.Counter(), names=("a",))

        with pytest.raises(errors.ReplayMismatchError, match="returns after 1 step"):
            await replay.replay(db, shorter, CONFIG, task_id=source, from_step="c", actor="test")

    async def test_an_unknown_step_is_refused_listing_the_known_ones(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """`--from-step z` names the steps the task has."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        reg = registry.Registry()
        register_abc(reg, collections.Counter())

        with pytest.raises(errors.InputError, match="has no step 'z'; its steps: a, b, c"):
            await replay.replay(db, reg, CONFIG, task_id=source, from_step="z", actor="test")

    async def test_an_unknown_task_is_not_found(self, db: dbpool.Pool) -> None:
        """A task id nobody has is NotFoundError."""
        with pytest.raises(errors.NotFoundError):
            await replay.replay(
                db, registry.Registry(), CONFIG, task_id=999_999, from_step=None, actor="t"
            )

    async def test_a_workflow_no_longer_registered_is_refused(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task whose workflow this process does not know is refused, naming it."""
        source = await finished_abc(db, database_dsn, collections.Counter())

        with pytest.raises(errors.ReplayMismatchError, match="unknown workflow 'abc'"):
            await replay.replay(
                db, registry.Registry(), CONFIG, task_id=source, from_step=None, actor="t"
            )


class TestAuditReplay:
    async def test_the_audit_entries_rebuild_every_checkpoint(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task's step results, failures and values jsonb would renormalise included, come
        back from its audit chain exactly as its checkpoints hold them."""
        reg = registry.Registry()

        def broken() -> None:
            raise ValueError("handled")

        @reg.workflow("values")
        async def values(ctx: context.TaskContext, task_input: Any) -> Any:
            await ctx.step("big", counted(collections.Counter(), "big", {"x": 1e300, "y": 0.1}))
            with contextlib.suppress(ValueError):
                await ctx.step("broken", broken)
            return await ctx.step("text", counted(collections.Counter(), "text", 'é\n"q"'))

        task_id = await support.submit(db, reg, CONFIG, workflow="values")
        await ran(db, database_dsn, reg, task_id)

        found = await replay.rebuild_from_audit(db, task_id)

        assert (found.difference, found.steps, found.rebuilt) == (None, 3, 3)

    async def test_a_forked_task_is_rebuilt_from_its_own_chain(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """The reused checkpoints are carried by the new task's `step.reused` entries."""
        calls: Calls = collections.Counter()
        source = await finished_abc(db, database_dsn, calls)
        reg = registry.Registry()
        register_abc(reg, calls)
        replayed = await replay.replay(db, reg, CONFIG, task_id=source, from_step="c", actor="t")
        await ran(db, database_dsn, reg, replayed.task_id)

        found = await replay.rebuild_from_audit(db, replayed.task_id)

        assert (found.difference, found.rebuilt) == (None, 3)

    async def test_a_checkpoint_changed_behind_the_log_is_named(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A checkpoint edited in place no longer matches its entry: the step is named."""
        source = await finished_abc(db, database_dsn, collections.Counter())
        await db.execute(
            "UPDATE appliance.steps SET output = '99' WHERE task_id = $1 AND position = 1", source
        )

        found = await replay.rebuild_from_audit(db, source)

        assert found.difference is not None
        assert found.difference.startswith("step 1: audit entry #")
        assert '\'b\' holds the output "12", the checkpoint "99"' in found.difference

    async def test_an_entry_from_before_results_were_audited_is_named(
        self, db: dbpool.Pool
    ) -> None:
        """A chain written before migration 0014 (step entries without results) verifies, but
        cannot rebuild the checkpoints: the first such entry is named."""
        reg = registry.Registry()
        register_abc(reg, collections.Counter())
        task_id = await support.submit(db, reg, CONFIG, workflow="abc", task_input={"start": 0})
        await db.execute(
            """
            INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt,
                                         started_at, duration_ms)
            VALUES ($1, 0, 'default', 'fetch', '1', 1, now(), 1.0)
            """,
            task_id,
        )
        await db.execute(
            "SELECT appliance.audit_append('task:' || $1::bigint, 'default', $1::bigint, 'w',"
            " 'step.completed',"
            " jsonb_build_object('step', 'fetch', 'position', 0, 'attempt', 1))",
            task_id,
        )

        found = await replay.rebuild_from_audit(db, task_id)

        assert found.difference is not None
        assert "(step 0 'fetch') carries no result" in found.difference
        assert await dbaudit.find_chain_breaks(db) == []
