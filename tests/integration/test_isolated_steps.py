"""Isolated steps of a plain workflow (`isolation.steps.run`): their own confined process,
the workflow's secrets scope, a checkpoint like any step."""

from __future__ import annotations

import os

import pytest

from appliance import vault
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from appliance.isolation import steps
from tests.support import engine as support
from tests.support import isolation, workflows

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestIsolatedSteps:
    async def test_a_step_runs_in_its_own_process_with_only_its_workflows_secrets(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """Another pid, a clean environment, its own secret (redacted in the checkpoint), and
        a refusal for an integration the step did not declare."""
        opened = await vault.open_vault(db, vault.new_key(), initialise=True)
        for integration in ("billing", "elsewhere"):
            await vault.set_secret(
                db,
                opened,
                tenant_id="default",
                integration=integration,
                workflow=workflows.ISOLATED,
                name="token",
                value=b"tok-" + integration.encode() * 3,
                actor="test",
            )
        supervisor = isolation.tool_actions(db, opened=opened).isolation
        cfg = support.engine_settings(node_name="isolated")
        task_id = await support.submit(
            db, registry.registry, cfg, workflow=workflows.ISOLATED, task_input={"n": 1}
        )
        async with support.running_worker(
            db, database_dsn, cfg, registry.registry, {steps.SERVICE: supervisor}
        ) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded", task.error
        found = task.output
        assert found["pid"] != os.getpid()
        assert found["environment"] == ["HOME", "LANG", "PATH", "TMPDIR"]
        assert found["own_secret"] == "[redacted:default/billing/token]"
        assert found["other_integration"].startswith("refused: lease refused: ")
        [step] = await dbtasks.list_steps(db, task_id)
        assert "tok-billing" not in str(step.output)
        chain = await dbaudit.list_chain(db, f"task:{task_id}")
        assert [e.action for e in chain if e.action.startswith(("lease.", "isolation."))] == [
            "lease.granted",
            "isolation.refused",
        ]
