"""The durable agent loop against the local Messages API stand-in, through the real SDK."""

from __future__ import annotations

import decimal
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import models, settings
from appliance.agents import client, costs, definitions, loop
from appliance.db import audit as dbaudit
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry
from appliance.retrieval import documents
from tests.support import engine as support
from tests.support import isolation, messages_api, workflows
from tests.support import tools as support_tools

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "claude-sonnet-4-6"
RULES = " ".join(
    f"Rule {n}: when a customer writes about order case {n}, check the ledger entry {n * 7}, "
    f"compare it with shipment record {n * 11}, and answer politely with the outcome."
    for n in range(1, 90)
)


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    """A fresh Messages API stand-in."""
    async with messages_api.running_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def runtime(db: dbpool.Pool, api: messages_api.Server) -> AsyncIterator[loop.Runtime]:
    """The agent runtime the daemon would build, pointed at the stand-in."""
    config = settings.ModelSettings.model_validate(
        {"api_key": api.api_key, "base_url": api.base_url, "max_retries": 2}
    )
    model = client.ModelClient(config)
    try:
        yield loop.Runtime(db, model, config, isolation.tool_actions(db))
    finally:
        await model.close()


async def define(
    db: dbpool.Pool,
    tmp_path: Path,
    *,
    name: str = "support",
    model: str = MODEL,
    persona: str = RULES,
    agent_tools: tuple[str, ...] = (support_tools.lookup_order.__name__,),
    collections: tuple[str, ...] = (),
    context: str = "auto",
) -> None:
    """Apply an agent from a TOML file, as `appliance agents apply` does."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"name = {json.dumps(name)}\nmodel = {json.dumps(model)}\n"
        f"persona = {json.dumps(persona)}\ntools = {json.dumps(list(agent_tools))}\n"
        "max_tokens = 256\nmax_turns = 4\n"
        f"[retrieval]\ncollections = {json.dumps(list(collections))}\n"
        f"top_k = 3\ntoken_budget = 600\ncontext = {json.dumps(context)}\n"
    )
    await definitions.apply(db, definitions.load(path), tenant_id="default", actor="test")


async def run_agent(
    db: dbpool.Pool, dsn: str, runtime: loop.Runtime, prompt: str, *, name: str = "support"
) -> Any:
    """Submit an agent task and run a worker until it ends."""
    cfg = support.engine_settings(node_name="agents")
    task_id = await support.submit(
        db,
        registry.registry,
        cfg,
        workflow=loop.WORKFLOW,
        task_input={"agent": name, "prompt": prompt},
    )
    async with support.running_worker(
        db, dsn, cfg, registry.registry, services={loop.SERVICE: runtime}
    ) as w:
        return await support.wait_for_state(db, task_id, workers=[w])


async def tool_entries(db: dbpool.Pool, task_id: int, action: str) -> list[models.AuditEntry]:
    """The task's audit entries of one action (what its tool calls left behind)."""
    return [e for e in await dbaudit.list_chain(db, f"task:{task_id}") if e.action == action]


async def started(db: dbpool.Pool, task_id: int) -> list[models.AuditEntry] | None:
    """The task's tool decisions once there is one, else None."""
    return await tool_entries(db, task_id, "tool.decided") or None


def markers(body: dict[str, Any]) -> list[str]:
    """Where a request carries cache_control markers, in order."""
    found = []
    if body.get("tools") and "cache_control" in body["tools"][-1]:
        found.append("tools")
    found += ["system" for block in body.get("system", []) if "cache_control" in block]
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, list):
            found += ["messages" for block in content if "cache_control" in block]
    return found


class TestAgentTask:
    async def test_answer_and_every_counter_land_in_the_ledger(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """An agent from a TOML file answers, and its call's tokens and cost are recorded."""
        await define(db, tmp_path)
        api.script(messages_api.TextReply("Order 42 has shipped."))
        task = await run_agent(db, database_dsn, runtime, "Where is order 42?")

        assert task.state == "succeeded"
        assert task.output["answer"] == "Order 42 has shipped."
        assert task.output["agent_version"] == 1
        [row] = await costs.cost_report(db, by="task")
        usage = api.requests_to("/v1/messages")[0].usage
        assert usage is not None
        assert (row.calls, row.input_tokens, row.output_tokens) == (
            1,
            usage["input_tokens"],
            usage["output_tokens"],
        )
        assert row.cache_creation_input_tokens == usage["cache_creation_input_tokens"]
        assert row.cost_usd > 0

    async def test_tool_call_runs_once_and_its_result_goes_back(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A tool_use reply runs the tool as a step and sends its result to the model."""
        await define(db, tmp_path)
        api.script(
            messages_api.ToolUseReply("lookup_order", {"order": "42"}),
            messages_api.TextReply("It has shipped."),
        )
        task = await run_agent(db, database_dsn, runtime, "Where is order 42?")

        assert (task.state, task.output["turns"]) == ("succeeded", 2)
        assert len(await tool_entries(db, task.task_id, "tool.decided")) == 1
        second = api.requests_to("/v1/messages")[1].body
        result = second["messages"][-1]["content"][0]
        assert result["type"] == "tool_result"
        assert json.loads(result["content"]) == {"order": "42", "status": "shipped"}
        steps = [s.name for s in await dbtasks.list_steps(db, task.task_id)]
        assert steps == ["agent", "retrieve", "model:0", "tool:0:lookup_order", "model:1"]

    async def test_a_tool_the_agent_may_not_use_is_refused_to_the_model(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A tool outside the agent's list is not run; the model gets an error result."""
        await define(db, tmp_path, agent_tools=())
        api.script(
            messages_api.ToolUseReply("lookup_order", {"order": "42"}),
            messages_api.TextReply("I cannot look that up."),
        )
        task = await run_agent(db, database_dsn, runtime, "Where is order 42?")

        assert task.state == "succeeded"
        assert await tool_entries(db, task.task_id, "tool.decided") == []
        result = api.requests_to("/v1/messages")[1].body["messages"][-1]["content"][0]
        assert result["is_error"] is True
        assert "may not call tool 'lookup_order'" in result["content"]


async def handbook(db: dbpool.Pool, tmp_path: Path) -> None:
    """Three short notes in the collection `handbook` of tenant `default`."""
    docs = tmp_path / "handbook"
    docs.mkdir()
    (docs / "returns.md").write_text(
        "# Returns\n\nCustomers may return unopened items within 30 days of delivery. "
        "Refunds go back to the original payment method within five business days.\n"
    )
    (docs / "shipping.md").write_text(
        "# Shipping\n\nParcels leave the warehouse in Rotterdam every weekday at noon. "
        "Express shipping costs twelve euros inside the Netherlands.\n"
    )
    (docs / "security.md").write_text(
        "# Badges\n\nVisitors sign in at the front desk and wear a red badge at all times.\n"
    )
    report = await documents.add_documents(
        db, tenant_id="default", collection="handbook", paths=[docs]
    )
    assert len(report.added) == 3


class TestRetrieval:
    async def test_the_passage_that_answers_reaches_the_context_with_its_source(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """The first call carries the answering passage, cited, and not the unrelated ones."""
        await handbook(db, tmp_path)
        await define(db, tmp_path, agent_tools=(), collections=("handbook",), context="retrieval")
        task = await run_agent(db, database_dsn, runtime, "How many days do refunds take?")

        context = api.requests_to("/v1/messages")[0].body["messages"][0]["content"][0]["text"]
        assert "within five business days" in context
        assert "returns.md" in context
        assert "red badge" not in context
        assert task.output["sources"][0].endswith("returns.md")

    async def test_a_small_collection_goes_whole_into_the_cached_system_prompt(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A collection smaller than the retrieval budget is cheaper whole: every passage goes
        after the persona, behind the cache marker, and the question alone in the message."""
        await handbook(db, tmp_path)
        await define(db, tmp_path, agent_tools=(), collections=("handbook",))

        await run_agent(db, database_dsn, runtime, "How many days do refunds take?")

        body = api.requests_to("/v1/messages")[0].body
        system = body["system"]
        assert "cache_control" not in system[1]
        assert "cache_control" in system[-1]
        for words in ("within five business days", "red badge", "Rotterdam", "security.md"):
            assert words in system[-1]["text"]
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "How many days do refunds take?"}
        ]

    async def test_the_ledger_records_the_context_chosen_and_both_expected_costs(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """Each call's row says which context it had, its size and what either would cost."""
        await handbook(db, tmp_path)
        await define(db, tmp_path, agent_tools=(), collections=("handbook",))

        await run_agent(db, database_dsn, runtime, "How many days do refunds take?")

        row = await db.fetchrow(
            "SELECT context, context_tokens, context_expected_usd, context_other_usd"
            "  FROM appliance.model_calls"
        )
        assert row is not None
        assert row["context"] == "collection"
        assert 0 < row["context_tokens"] < 600
        assert 0 < row["context_expected_usd"] < row["context_other_usd"]


class TestPromptCaching:
    async def test_breakpoints_on_last_tool_system_and_history(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """Markers go on the last tool, the persona and the newest block, in that order."""
        await define(db, tmp_path)
        api.script(
            messages_api.ToolUseReply("lookup_order", {"order": "1"}),
            messages_api.TextReply("done"),
        )
        await run_agent(db, database_dsn, runtime, "Check order 1.")

        bodies = [r.body for r in api.requests_to("/v1/messages")]
        assert [markers(b) for b in bodies] == [["tools", "system", "messages"]] * 2
        assert "cache_control" in bodies[1]["messages"][-1]["content"][-1]
        assert bodies[0]["system"][1]["text"] == RULES

    async def test_the_second_call_reads_the_cached_prefix(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A second task of the same agent reads the stable prefix the first one wrote."""
        await define(db, tmp_path)
        await run_agent(db, database_dsn, runtime, "First question about order 5?")
        await run_agent(db, database_dsn, runtime, "Second question about order 6?")

        first, second = (r.usage for r in api.requests_to("/v1/messages"))
        first_body = api.requests_to("/v1/messages")[0].body
        assert first is not None
        assert second is not None
        prompt = messages_api.parse_prompt(first_body)
        system_breakpoint = prompt.breakpoints[1][0]
        stable = prompt.cumulative_tokens()[system_breakpoint]
        assert first["cache_read_input_tokens"] == 0
        assert first["cache_creation_input_tokens"] > stable > 2048
        assert second["cache_read_input_tokens"] == stable
        first_task, second_task = sorted(
            await costs.cost_report(db, by="task"), key=lambda row: row.task_id or 0
        )
        assert first_task.saving_usd < 0  # a cache write costs more than plain input
        assert second_task.saving_usd > 0  # the read it enables costs a tenth

    async def test_a_prefix_below_the_model_minimum_is_reported(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A short persona on a model with a 4,096-token minimum is noted as not cacheable."""
        await define(db, tmp_path, model="claude-haiku-4-5", persona="Be brief.", agent_tools=())
        task = await run_agent(db, database_dsn, runtime, "Hello?")

        assert task.state == "succeeded"
        usage = api.requests_to("/v1/messages")[0].usage
        assert usage is not None
        assert usage["cache_creation_input_tokens"] == 0
        calls = await costs.cost_report(db, by="task")
        assert calls[0].calls == 1
        notes = await db.fetch("SELECT cache_note FROM appliance.model_calls")
        assert notes[0]["cache_note"].startswith("not cacheable")


class TestDurability:
    async def test_a_checkpointed_reply_is_not_paid_for_again(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A worker stopped inside the tool step leaves model:0 checkpointed; no second call."""
        gate = tmp_path / "gate"
        await define(db, tmp_path, agent_tools=(workflows.GATE_TOOL,))
        api.script(
            messages_api.ToolUseReply(workflows.GATE_TOOL, {"gate": str(gate)}),
            messages_api.TextReply("Shipped."),
        )
        cfg = support.engine_settings(node_name="agents")
        task_id = await support.submit(
            db,
            registry.registry,
            cfg,
            workflow=loop.WORKFLOW,
            task_input={"agent": "support", "prompt": "Order 7?"},
        )
        services = {loop.SERVICE: runtime}
        async with support.running_worker(db, database_dsn, cfg, registry.registry, services):
            await support.wait_until(lambda: started(db, task_id), what="the tool step to start")
        gate.touch()
        async with support.running_worker(db, database_dsn, cfg, registry.registry, services) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        assert len(api.requests_to("/v1/messages")) == 2
        [row] = await costs.cost_report(db, by="task")
        assert row.calls == 2

    async def test_a_reply_lost_before_its_checkpoint_is_paid_again(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A crash between the reply and its checkpoint makes the retry call the model again."""
        await define(db, tmp_path, agent_tools=())
        real_record = costs.record_call
        crashes = [RuntimeError("crashed after the reply, before its checkpoint")]

        async def crash_once(*args: Any, **kwargs: Any) -> Any:
            if crashes:
                raise crashes.pop()
            return await real_record(*args, **kwargs)

        monkeypatch.setattr(costs, "record_call", crash_once)
        task = await run_agent(db, database_dsn, runtime, "Order 9?")

        assert (task.state, task.attempts) == ("succeeded", 2)
        assert len(api.requests_to("/v1/messages")) == 2

    async def test_a_rate_limited_call_is_retried_after_retry_after(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """A 429 with retry-after is retried by the client; one ledger row for the one reply."""
        await define(db, tmp_path, agent_tools=())
        api.script(messages_api.rate_limited(0.05), messages_api.TextReply("ok"))
        task = await run_agent(db, database_dsn, runtime, "Order 3?")

        assert task.state == "succeeded"
        assert [r.status for r in api.requests_to("/v1/messages")] == [429, 200]
        [row] = await costs.cost_report(db, by="task")
        assert row.calls == 1


class TestBudgets:
    async def test_a_call_that_could_exceed_the_budget_is_not_made(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """Over the month budget the task waits with the reason, and no request is sent."""
        await define(db, tmp_path, agent_tools=())
        await costs.set_budget(
            db, tenant_id="default", scope="month", usd_limit=decimal.Decimal("0.0001"), actor="t"
        )
        cfg = support.engine_settings(node_name="agents")
        task_id = await support.submit(
            db,
            registry.registry,
            cfg,
            workflow=loop.WORKFLOW,
            task_input={"agent": "support", "prompt": "Order 4?"},
        )
        services = {loop.SERVICE: runtime}
        async with support.running_worker(db, database_dsn, cfg, registry.registry, services) as w:
            waiting = await support.wait_for_state(db, task_id, {"waiting"}, workers=[w])
            assert waiting.wait_reason is not None
            assert waiting.wait_reason.startswith("budget:month")
            assert api.requests_to("/v1/messages") == []
            await costs.set_budget(
                db, tenant_id="default", scope="month", usd_limit=decimal.Decimal("5"), actor="t"
            )
            resumed = await dbtasks.resume_waiting(
                db, tenant_id="default", reason_prefix="budget:", actor="t"
            )
            assert resumed == 1
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "succeeded"
        assert len(api.requests_to("/v1/messages")) == 1


class TestInput:
    async def test_an_unknown_agent_fails_the_task_clearly(
        self, db: dbpool.Pool, database_dsn: str, runtime: loop.Runtime
    ) -> None:
        """A task naming no defined agent fails with a message that says how to define it."""
        task = await run_agent(db, database_dsn, runtime, "hi", name="nobody")

        assert task.state == "failed"
        assert task.error is not None
        assert "agents apply" in task.error

    async def test_a_task_without_a_prompt_fails_with_what_it_needs(
        self, db: dbpool.Pool, database_dsn: str, runtime: loop.Runtime
    ) -> None:
        """agent.run without a prompt fails, naming the input it needs; no model call."""
        cfg = support.engine_settings(node_name="agents")
        task_id = await support.submit(
            db, registry.registry, cfg, workflow=loop.WORKFLOW, task_input={"agent": "support"}
        )
        async with support.running_worker(
            db, database_dsn, cfg, registry.registry, {loop.SERVICE: runtime}
        ) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "failed"
        assert task.error is not None
        assert '"prompt": TEXT' in task.error
