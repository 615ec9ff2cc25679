"""A cancel or a shutdown cannot be swallowed by a workflow's `except Exception`: not in a plain
workflow, not in the agent loop (which catches a tool's failure to hand it to the model)."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import models, settings
from appliance.agents import client, definitions, loop
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from tests.support import engine as support
from tests.support import isolation, messages_api, workflows
from tests.support import tools as support_tools

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

STEPS = ("first", "second", "third")


def careless(reg: registry.Registry, calls: collections.Counter[str], gate: asyncio.Event) -> None:
    """Register `careless`: three steps, each inside `try: ... except Exception`; the first
    signals it started (`calls`) and waits for the gate."""

    async def run_step(name: str) -> str:
        calls[name] += 1
        if name == "first":
            await gate.wait()
        return name

    @reg.workflow("careless")
    async def run(ctx: context.TaskContext, task_input: Any) -> Any:
        results = []
        for name in STEPS:
            try:
                results.append(await ctx.step(name, run_step, name))
            except Exception as exc:  # noqa: BLE001 - the careless pattern under test
                results.append(f"failed: {exc!r}")
        return results


async def first_step_started(calls: collections.Counter[str]) -> bool:
    return calls["first"] == 1


class TestSignalsInAWorkflow:
    async def test_a_cancel_is_not_swallowed_by_except_exception(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A task cancelled mid-step ends cancelled though its workflow catches Exception."""
        calls: collections.Counter[str] = collections.Counter()
        gate = asyncio.Event()
        reg = registry.Registry()
        careless(reg, calls, gate)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="careless")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_until(lambda: first_step_started(calls), what="the first step")
            assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
            gate.set()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "cancelled"
        assert calls == {"first": 1}
        assert await support.outcomes(db, task_id) == ["cancelled"]

    async def test_a_shutdown_is_not_swallowed_by_except_exception(
        self, db: dbpool.Pool, database_dsn: str
    ) -> None:
        """A stopping worker releases the task at the next boundary, whatever the workflow
        catches; the next worker finishes it from its checkpoint."""
        calls: collections.Counter[str] = collections.Counter()
        gate = asyncio.Event()
        reg = registry.Registry()
        careless(reg, calls, gate)
        cfg = support.engine_settings()
        task_id = await support.submit(db, reg, cfg, workflow="careless")
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            await support.wait_until(lambda: first_step_started(calls), what="the first step")
            stopping = asyncio.create_task(w.worker.stop(grace=support.WAIT_SECONDS))
            gate.set()
            await stopping
        released = await dbtasks.get_task(db, task_id)
        async with support.running_worker(db, database_dsn, cfg, reg) as w:
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert released is not None
        assert released.state == "queued"
        assert (task.state, task.output) == ("succeeded", list(STEPS))
        assert calls == {"first": 1, "second": 1, "third": 1}
        assert await support.outcomes(db, task_id) == ["released", "succeeded"]

    async def test_signals_are_not_exceptions(self) -> None:
        """The engine's signals derive from BaseException, as asyncio.CancelledError does."""
        for signal in (context.Cancelled, context.Released):
            assert issubclass(signal, BaseException)
            assert not issubclass(signal, Exception)


# ---- the agent loop ---------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def api() -> AsyncIterator[messages_api.Server]:
    async with messages_api.running_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def runtime(db: dbpool.Pool, api: messages_api.Server) -> AsyncIterator[loop.Runtime]:
    config = settings.ModelSettings.model_validate(
        {"api_key": api.api_key, "base_url": api.base_url, "max_retries": 0}
    )
    model = client.ModelClient(config)
    try:
        yield loop.Runtime(db, model, config, isolation.tool_actions(db))
    finally:
        await model.close()


async def define(db: dbpool.Pool, tmp_path: Path, *, tools: tuple[str, ...]) -> None:
    """Apply the agent `careful`, allowed these tools."""
    path = tmp_path / "agent.toml"
    path.write_text(
        'name = "careful"\nmodel = "claude-sonnet-4-6"\npersona = "You look things up."\n'
        f"tools = {json.dumps(list(tools))}\n"
    )
    await definitions.apply(db, definitions.load(path), tenant_id="default", actor="test")


async def submit_agent_task(db: dbpool.Pool) -> int:
    return await support.submit(
        db,
        registry.registry,
        support.engine_settings(node_name="agents"),
        workflow=loop.WORKFLOW,
        task_input={"agent": "careful", "prompt": "Where is order 7?"},
    )


async def agent_task(db: dbpool.Pool, tmp_path: Path, api: messages_api.Server) -> tuple[int, Path]:
    """An agent task whose first reply asks for two tools: one held by a gate file, then
    another; a second reply would end the task. Returns the task and its gate."""
    gate = tmp_path / "gate"
    await define(db, tmp_path, tools=(workflows.GATE_TOOL, support_tools.lookup_order.__name__))
    api.script(
        messages_api.ToolUseReply(
            workflows.GATE_TOOL,
            {"gate": str(gate)},
            more=(messages_api.ToolUseReply("lookup_order", {"order": "7"}),),
        ),
        messages_api.TextReply("Order 7 has shipped."),
    )
    return await submit_agent_task(db), gate


async def gate_tool_started(db: dbpool.Pool, task_id: int) -> bool:
    """The gate tool's call has begun (its policy decision is in the audit log)."""
    found: bool = await db.fetchval(
        "SELECT count(*) > 0 FROM appliance.audit_entries"
        " WHERE task_id = $1 AND action = 'tool.decided'",
        task_id,
    )
    return found


async def step_names(db: dbpool.Pool, task: models.Task) -> list[str]:
    return [s.name for s in await dbtasks.list_steps(db, task.task_id)]


class TestSignalsInTheAgentLoop:
    async def test_a_cancel_during_a_tool_call_makes_no_further_model_call(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
    ) -> None:
        """Cancelled while its tool runs, an agent task ends cancelled; the model is not
        called again and the next tool does not run."""
        task_id, gate = await agent_task(db, tmp_path, api)
        cfg = support.engine_settings(node_name="agents")
        services = {loop.SERVICE: runtime}
        async with support.running_worker(db, database_dsn, cfg, registry.registry, services) as w:
            await support.wait_until(lambda: gate_tool_started(db, task_id), what="the tool")
            assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
            gate.touch()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "cancelled"
        assert len(api.requests_to("/v1/messages")) == 1
        assert await step_names(db, task) == [
            "agent",
            "retrieve",
            "model:0",
            "tool:0:wait_for_gate",
        ]

    async def test_a_cancel_during_a_model_call_makes_no_further_model_call(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        api: messages_api.Server,
        runtime: loop.Runtime,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Cancelled while the model answers, an agent task stops before the tool it asks for;
        the model is not called again."""
        await define(db, tmp_path, tools=("lookup_order",))
        api.script(
            messages_api.ToolUseReply("lookup_order", {"order": "7"}),
            messages_api.TextReply("Order 7 has shipped."),
        )
        task_id = await submit_agent_task(db)
        asked = asyncio.Event()
        answer = asyncio.Event()
        real_create = runtime.model.create

        async def held_create(params: dict[str, Any]) -> client.Reply:
            asked.set()
            await answer.wait()  # the call goes out once the cancel is in
            return await real_create(params)

        monkeypatch.setattr(runtime.model, "create", held_create)
        cfg = support.engine_settings(node_name="agents")
        services = {loop.SERVICE: runtime}
        async with support.running_worker(db, database_dsn, cfg, registry.registry, services) as w:
            await support.wait_for_event(asked)
            assert await dbtasks.cancel_task(db, task_id=task_id, actor="test") == "cancelling"
            answer.set()
            task = await support.wait_for_state(db, task_id, workers=[w])

        assert task.state == "cancelled"
        assert len(api.requests_to("/v1/messages")) == 1
        assert await step_names(db, task) == ["agent", "retrieve", "model:0"]
