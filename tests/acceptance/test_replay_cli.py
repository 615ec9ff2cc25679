"""`appliance task replay` and `appliance audit replay` as an operator runs them, beside a
running daemon that works the tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from tests.support import daemon, workflows
from tests.support import engine as support

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def succeeded(db: dbpool.Pool, task_id: int, run: daemon.Daemon) -> Any:
    async def ended() -> Any:
        task = await dbtasks.get_task(db, task_id)
        return task if task is not None and task.state == "succeeded" else None

    return await daemon.wait_until(ended, what=f"task {task_id} to succeed", daemons=[run])


async def steps_run(db: dbpool.Pool, task_id: int) -> list[str]:
    rows = await db.fetch(
        "SELECT step FROM public.step_runs WHERE task_id = $1 ORDER BY at", task_id
    )
    return [row["step"] for row in rows]


class TestReplayCommands:
    async def test_a_replay_from_a_step_runs_only_that_step_and_the_rest(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """Task N ran one, two, three; its replay from `two` runs two and three, and its audit
        log rebuilds every checkpoint (exit 0); a checkpoint changed behind it: exit 1."""
        await workflows.create_step_runs(db)
        source = await support.submit(
            db, registry.registry, support.engine_settings(), workflow=workflows.COUNTED
        )
        async with daemon.running(database_dsn, tmp_path) as run:
            await succeeded(db, source, run)
            replay = await daemon.cli(
                "--json",
                "task",
                "replay",
                str(source),
                "--from-step",
                "two",
                folder=tmp_path,
                dsn=database_dsn,
            )
            assert replay.code == 0, replay.stderr
            new = replay.json()
            task = await succeeded(db, new["task_id"], run)

        assert new == {
            "task_id": new["task_id"],
            "replay_of": source,
            "from_step": "two",
            "reused_steps": 1,
        }
        assert (task.output, task.replay_of) == (["one", "two", "three"], source)
        assert await steps_run(db, new["task_id"]) == ["two", "three"]
        audited = await daemon.cli(
            "audit", "replay", str(new["task_id"]), folder=tmp_path, dsn=database_dsn
        )
        assert audited.code == 0, audited.stderr
        assert "3 step result(s) rebuilt" in audited.stdout
        await db.execute(
            "UPDATE appliance.steps SET output = '\"changed\"' WHERE task_id = $1 AND position = 2",
            new["task_id"],
        )
        tampered = await daemon.cli(
            "audit", "replay", str(new["task_id"]), folder=tmp_path, dsn=database_dsn
        )
        assert tampered.code == 1
        assert "step 2: audit entry #" in tampered.stderr
        assert "'three' holds the output" in tampered.stderr

    async def test_refusals_are_one_line_with_their_exit_code(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """An unknown step is 65 listing the steps; code that renamed step two is 1 naming the
        first difference; neither makes a task."""
        source = await support.submit(
            db, registry.registry, support.engine_settings(), workflow=workflows.COUNTED
        )
        await db.execute(
            """
            INSERT INTO appliance.steps (task_id, position, tenant_id, name, output, attempt,
                                         started_at, duration_ms)
            SELECT $1, p, 'default', n, '"x"', 1, now(), 1.0
              FROM unnest(ARRAY[0, 1, 2], ARRAY['one', 'two', 'three']) AS s (p, n)
            """,
            source,
        )

        unknown = await daemon.cli(
            "task", "replay", str(source), "--from-step", "four", folder=tmp_path, dsn=database_dsn
        )
        changed = await daemon.cli(
            "task",
            "replay",
            str(source),
            "--from-step",
            "three",
            folder=tmp_path,
            dsn=database_dsn,
            overrides={"engine.workflow_modules": ["tests.support.changed_workflows"]},
        )

        assert unknown.code == 65, unknown.stderr
        assert unknown.stderr.strip() == (
            f"appliance: error: task {source} has no step 'four'; its steps: one, two, three"
        )
        assert changed.code == 1, changed.stderr
        assert "step 1 is 'two_v2' in the workflow now but was checkpointed as 'two'" in (
            changed.stderr
        )
        assert len(changed.stderr.strip().splitlines()) == 1
        assert [t.task_id for t in await dbtasks.list_tasks(db)] == [source]
