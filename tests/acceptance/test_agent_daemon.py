"""An agent task in a real daemon, killed with kill -9 mid-task: no reply is paid for twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from appliance import settings
from appliance.agents import costs, definitions, loop
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry, submission
from tests.support import daemon, messages_api, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="session")]

AGENT = """
name = "gated"
model = "claude-sonnet-4-6"
persona = "You check orders. Use the gate tool when asked."
tools = ["wait_for_gate"]
max_tokens = 200
max_turns = 3
"""


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    """The Messages API stand-in the daemon subprocess calls through base_url."""
    async with messages_api.running_server() as server:
        yield server


class TestAgentCrash:
    async def test_kill_9_after_the_reply_is_checkpointed_does_not_pay_again(
        self, db: dbpool.Pool, database_dsn: str, api: messages_api.Server, tmp_path: Path
    ) -> None:
        """Killed inside the tool step, the restarted node reuses model:0's checkpoint."""
        agent_file = tmp_path / "gated.toml"
        agent_file.write_text(AGENT)
        await definitions.apply(db, definitions.load(agent_file), tenant_id="default", actor="t")
        gate = tmp_path / "gate"
        api.script(
            messages_api.ToolUseReply(workflows.GATE_TOOL, {"gate": str(gate)}),
            messages_api.TextReply("The order is fine."),
        )
        model = {"model.api_key": api.api_key, "model.base_url": api.base_url}
        submitted = await submission.submit(
            db,
            registry.registry,
            settings.EngineSettings(),
            tenant_id="default",
            workflow=loop.WORKFLOW,
            task_input={"agent": "gated", "prompt": "Check order 12."},
            actor="test",
        )
        task_id = submitted.task_id

        async def holding_the_tool() -> bool:
            steps = [s.name for s in await dbtasks.list_steps(db, task_id)]
            return "model:0" in steps

        async with daemon.running(
            database_dsn, tmp_path, name="first", node="n1", overrides=model
        ) as first:
            await daemon.wait_until(holding_the_tool, what="model:0 checkpointed", daemons=[first])
            await first.kill()
        async with daemon.running(
            database_dsn, tmp_path, name="second", node="n1", overrides=model
        ) as second:
            gate.touch()

            async def ended() -> bool:
                task = await dbtasks.get_task(db, task_id)
                return task is not None and task.state in ("succeeded", "failed")

            await daemon.wait_until(ended, what="the agent task to end", daemons=[second])

        task = await dbtasks.get_task(db, task_id)
        assert task is not None
        assert task.state == "succeeded", task.error
        assert task.output["answer"] == "The order is fine."
        assert len(api.requests_to("/v1/messages")) == 2
        [row] = await costs.cost_report(db, by="task")
        assert row.calls == 2
