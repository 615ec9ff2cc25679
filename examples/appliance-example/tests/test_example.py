"""The example plugin in the appliance as it runs it: loaded by its entry points, the tool
called by the help-desk agent under the policy in its own confined process, the workflow run
by a worker, against the tracker's and the Messages API's stand-ins.

Nothing here imports `appliance_example`: `plugins.load` brings it in as the daemon does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import stand_in

from appliance import models, plugins, settings, vault
from appliance.agents import client, definitions, loop, tools
from appliance.db import audit as dbaudit
from appliance.db import policies
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from appliance.isolation import steps
from tests.support import engine as support
from tests.support import isolation, messages_api

pytestmark = pytest.mark.timeout(60)
ASYNC = pytest.mark.asyncio(loop_scope="session")

AGENT_FILE = Path(__file__).parents[1] / "agents" / "helpdesk.toml"
WORKFLOW = "example.escalate"
TICKET = {"title": "Checkout is down", "body": "Nobody can pay since noon.", "severity": "high"}


@pytest.fixture(scope="module", autouse=True)
def loaded() -> None:
    """The plugin's workflows and tools, registered through its entry points."""
    plugins.load(())


@pytest_asyncio.fixture(loop_scope="session")
async def tracker() -> AsyncIterator[stand_in.Tracker]:
    async with stand_in.Tracker().running() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    async with messages_api.running_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def actions(db: dbpool.Pool, tracker: stand_in.Tracker) -> Any:
    """Tool calls as the daemon makes them, the tracker's secrets in the vault (for every
    workflow and agent of the tenant), its port let through the egress rule."""
    opened = await vault.open_vault(db, vault.new_key(), initialise=True)
    for name, value in (("endpoint", tracker.endpoint), ("token", tracker.token)):
        await vault.set_secret(
            db,
            opened,
            tenant_id="default",
            integration="tracker",
            workflow=vault.WILDCARD,
            name=name,
            value=value.encode(),
            actor="test",
        )
    return isolation.tool_actions(db, opened=opened, egress_ports=(443, tracker.port))


@pytest_asyncio.fixture(loop_scope="session")
async def runtime(
    db: dbpool.Pool, api: messages_api.Server, actions: Any
) -> AsyncIterator[loop.Runtime]:
    config = settings.ModelSettings.model_validate(
        {"api_key": api.api_key, "base_url": api.base_url, "max_retries": 0}
    )
    model = client.ModelClient(config)
    try:
        yield loop.Runtime(db, model, config, actions)
    finally:
        await model.close()


async def run(
    db: dbpool.Pool,
    dsn: str,
    services: dict[str, Any],
    workflow: str,
    task_input: Any,
    states: Collection[str] = models.TERMINAL_STATES,
) -> models.Task:
    """Submit a task and run a worker until it reaches one of `states`."""
    config = support.engine_settings(node_name="example")
    task_id = await support.submit(
        db, registry.registry, config, workflow=workflow, task_input=task_input
    )
    async with support.running_worker(db, dsn, config, registry.registry, services) as worker:
        return await support.wait_for_state(
            db, task_id, states, workers=[worker], timeout=support.WAIT_SECONDS * 3
        )


async def ask_helpdesk(
    db: dbpool.Pool,
    dsn: str,
    runtime: loop.Runtime,
    states: Collection[str] = models.TERMINAL_STATES,
) -> models.Task:
    await definitions.apply(db, definitions.load(AGENT_FILE), tenant_id="default", actor="test")
    prompt = {"agent": "helpdesk", "prompt": "Checkout is down, nobody can pay!"}
    services = {loop.SERVICE: runtime}
    return await run(db, dsn, services, loop.WORKFLOW, prompt, states)


async def audit_actions(db: dbpool.Pool, task_id: int) -> list[str]:
    """The task's audit entries of its tool calls and leases, in order."""
    chain = await dbaudit.list_chain(db, f"task:{task_id}")
    return [entry.action for entry in chain if entry.action.startswith(("tool.", "lease."))]


class TestPackage:
    def test_the_entry_points_register_the_tool_and_the_workflow(self) -> None:
        """Both come from the distribution appliance-example, the tool as a write."""
        tool = tools.toolbox.get("open_ticket")
        workflow = registry.registry.get(WORKFLOW)

        assert (tool.origin.distribution, workflow.origin.distribution) == (
            "appliance-example",
            "appliance-example",
        )
        assert (tool.action_class, tool.isolated, tool.integrations) == (
            "write",
            True,
            ("tracker",),
        )

    def test_the_agent_file_names_only_registered_tools(self) -> None:
        """helpdesk.toml is a valid definition whose tools are all registered."""
        definition = definitions.load(AGENT_FILE)

        assert set(definition.tools) <= set(tools.toolbox.names())


@ASYNC
class TestTool:
    async def test_the_agent_opens_a_ticket_with_the_leased_token(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tracker: stand_in.Tracker,
    ) -> None:
        """The call reaches the tracker with the token and the step's idempotency key; the
        model gets the ticket's id and never the token; every stage is an audit entry."""
        api.script(
            messages_api.ToolUseReply("open_ticket", TICKET),
            messages_api.TextReply("I opened HD-1 for you."),
        )
        task = await ask_helpdesk(db, database_dsn, runtime)

        assert task.state == "succeeded", task.error
        assert task.output["answer"] == "I opened HD-1 for you."
        [request] = tracker.requests_to("/tickets")
        assert request.authorization == f"Bearer {tracker.token}"
        assert request.idempotency_key.startswith(f"task-{task.task_id}-step-")
        assert tracker.tickets == {"HD-1": TICKET}
        calls = api.requests_to("/v1/messages")
        [result] = calls[1].body["messages"][-1]["content"]
        assert json.loads(result["content"])["id"] == "HD-1"
        assert all(tracker.token not in json.dumps(call.body) for call in calls)
        assert await audit_actions(db, task.task_id) == [
            "tool.decided",
            "tool.intent",
            "lease.granted",
            "lease.granted",
            "tool.result",
        ]

    async def test_a_policy_can_send_each_ticket_to_a_person(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tracker: stand_in.Tracker,
    ) -> None:
        """Under a rule requiring approval for open_ticket, the task waits and nothing is sent."""
        rule = '[[rules]]\ntools = ["open_ticket"]\neffect = "require_approval"\n'
        await policies.apply_policy(db, tenant_id="default", document_text=rule, actor="test")
        api.script(messages_api.ToolUseReply("open_ticket", TICKET))

        task = await ask_helpdesk(db, database_dsn, runtime, ("waiting",))

        assert (task.wait_reason or "").startswith("approval:")
        assert tracker.requests == []

    async def test_arguments_out_of_the_schema_go_back_to_the_model(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tracker: stand_in.Tracker,
    ) -> None:
        """A severity the tool does not know is the model's error to fix; nothing is sent."""
        api.script(
            messages_api.ToolUseReply("open_ticket", {**TICKET, "severity": "extreme"}),
            messages_api.TextReply("Sorry, I could not open a ticket."),
        )
        task = await ask_helpdesk(db, database_dsn, runtime)

        assert task.state == "succeeded", task.error
        [result] = api.requests_to("/v1/messages")[1].body["messages"][-1]["content"]
        assert result["is_error"] is True
        assert "severity must be one of low, normal, high" in result["content"]
        assert tracker.requests == []


@ASYNC
class TestWorkflow:
    async def test_a_message_becomes_a_ticket_with_a_comment(
        self, db: dbpool.Pool, database_dsn: str, actions: Any, tracker: stand_in.Tracker
    ) -> None:
        """Three checkpointed steps: triage, open_ticket, comment."""
        message = {"customer": "acme", "message": "Checkout is down since noon."}
        task = await run(db, database_dsn, {steps.SERVICE: actions.isolation}, WORKFLOW, message)

        assert task.state == "succeeded", task.error
        assert task.output["ticket"] == "HD-1"
        assert task.output["severity"] == "high"
        checkpoints = await dbtasks.list_steps(db, task.task_id)
        assert [step.name for step in checkpoints] == ["triage", "open_ticket", "comment"]
        assert tracker.tickets["HD-1"]["title"] == "acme: Checkout is down since noon."
        [comment] = tracker.comments["HD-1"]
        assert comment.startswith(f"Escalated by task {task.task_id}; received ")

    async def test_a_retry_after_a_failed_comment_opens_no_second_ticket(
        self, db: dbpool.Pool, database_dsn: str, actions: Any, tracker: stand_in.Tracker
    ) -> None:
        """The second attempt reads open_ticket back from its checkpoint and comments again
        with the same idempotency key."""
        tracker.fail_next["comments"] = 1
        message = {"customer": "acme", "message": "A question about invoices."}
        task = await run(db, database_dsn, {steps.SERVICE: actions.isolation}, WORKFLOW, message)

        assert task.state == "succeeded", task.error
        assert task.attempts == 2
        assert len(tracker.requests_to("/tickets")) == 1
        first, second = tracker.requests_to("/comments")
        assert first.idempotency_key == second.idempotency_key
        assert tracker.comments == {"HD-1": [tracker.comments["HD-1"][0]]}
        assert task.output["severity"] == "normal"

    async def test_input_without_a_message_fails_at_once(
        self, db: dbpool.Pool, database_dsn: str, actions: Any, tracker: stand_in.Tracker
    ) -> None:
        """Bad input is not retried: one attempt, an error naming the missing key."""
        task = await run(
            db, database_dsn, {steps.SERVICE: actions.isolation}, WORKFLOW, {"customer": "acme"}
        )

        assert (task.state, task.attempts) == ("failed", 1)
        assert "message" in (task.error or "")
        assert tracker.requests == []
