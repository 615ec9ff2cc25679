"""Workflows the acceptance tests run inside `appliance run` subprocesses.

The daemon imports this module through `engine.workflow_modules`; the tests import it too, so
that `submission.submit` on the default registry knows the same names.

`test.counted` records every execution of each of its three steps as a row of
`public.step_runs` in the database the daemon uses (the test creates the table), so a test can
tell which steps ran how often, in which attempt. Its input may hold `gate` (a file path: step
`two` waits until that file exists) and `hold` (seconds step `two` takes). `test.delivered` is
the same for a webhook delivery, whose task input carries those options in its `body`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pydantic

from appliance.agents import tools
from appliance.db import pool as dbpool
from appliance.engine import context, registry
from appliance.isolation import steps

COUNTED = "test.counted"
DELIVERED = "test.delivered"
TYPED = "test.typed"
SLEEPY = "test.sleepy"
FAILS = "test.fails"
KILLS_WORKER = "test.kills_worker"
GATE_TOOL = "wait_for_gate"
ISOLATED = "test.isolated"
STEPS = ("one", "two", "three")
GATE_POLL_SECONDS = 0.01

STEP_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS public.step_runs (
    task_id bigint NOT NULL,
    step    text NOT NULL,
    attempt integer NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
)
"""


async def create_step_runs(executor: dbpool.Pool | dbpool.Connection) -> None:
    """Create `public.step_runs` if needed and empty it."""
    await executor.execute(STEP_RUNS_DDL)
    await executor.execute("TRUNCATE public.step_runs")


async def _record(task_id: int, step: str, attempt: int) -> None:
    """One row in step_runs: this step of this task started in this attempt."""
    conn = await asyncpg.connect(os.environ["APPLIANCE_DATABASE__URL"])
    try:
        await conn.execute(
            "INSERT INTO public.step_runs (task_id, step, attempt) VALUES ($1, $2, $3)",
            task_id,
            step,
            attempt,
        )
    finally:
        await conn.close()


async def _plain(task_id: int, step: str, attempt: int) -> str:
    await _record(task_id, step, attempt)
    return step


async def _gated(task_id: int, attempt: int, gate: str | None, hold: float) -> str:
    await _record(task_id, "two", attempt)
    if gate is not None:
        path = Path(gate)
        # A file made by another process: nothing to await but the file system, so poll it.
        while not path.exists():  # noqa: ASYNC110
            await asyncio.sleep(GATE_POLL_SECONDS)
    if hold:
        await asyncio.sleep(hold)
    return "two"


@registry.workflow(COUNTED)
async def counted(ctx: context.TaskContext, task_input: Any) -> Any:
    """Three recorded steps; the middle one may wait for a gate file or take `hold` seconds."""
    options: dict[str, Any] = task_input or {}
    gate: str | None = options.get("gate")
    hold = float(options.get("hold", 0))
    one = await ctx.step("one", _plain, ctx.task_id, "one", ctx.attempt)
    two = await ctx.step("two", _gated, ctx.task_id, ctx.attempt, gate, hold)
    three = await ctx.step("three", _plain, ctx.task_id, "three", ctx.attempt)
    return [one, two, three]


@registry.workflow(DELIVERED)
async def delivered(ctx: context.TaskContext, task_input: Any) -> Any:
    """test.counted with the options of a webhook delivery's body."""
    return await counted(ctx, task_input["body"])


class TypedInput(pydantic.BaseModel):
    """The input test.typed declares: a count."""

    model_config = pydantic.ConfigDict(extra="forbid")

    count: int


@registry.workflow(TYPED, input_model=TypedInput)
async def typed(ctx: context.TaskContext, task_input: Any) -> Any:
    """One step that echoes the declared input's count."""
    return await ctx.step("echo", _echo, int(task_input["count"]))


async def _echo(count: int) -> int:
    return count


async def _sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@registry.workflow(SLEEPY)
async def sleepy(ctx: context.TaskContext, task_input: Any) -> Any:
    """One step that sleeps `seconds` of the input."""
    return await ctx.step("sleep", _sleep, float(task_input["seconds"]))


def _explode() -> None:
    raise RuntimeError("test.fails always fails")


@registry.workflow(FAILS, max_attempts=1)
async def fails(ctx: context.TaskContext, task_input: Any) -> Any:
    """A step that raises; one attempt unless the submission asks for more."""
    return await ctx.step("explode", _explode)


def _kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@registry.workflow(KILLS_WORKER)
async def kills_worker(ctx: context.TaskContext, task_input: Any) -> Any:
    """A step that kills the process running it: a task that crashes its worker every time."""
    return await ctx.step("die", _kill_this_process)


@tools.toolbox.tool(
    GATE_TOOL,
    "Wait until the gate file exists (a test tool that holds an agent task mid-step).",
    {"type": "object", "properties": {"gate": {"type": "string"}}, "required": ["gate"]},
    action_class="read",
)
async def wait_for_gate(call: tools.Call, arguments: dict[str, Any]) -> Any:
    """Poll for the gate file every 10 ms."""
    gate = Path(arguments["gate"])
    # A file made by another process: nothing to await but the file system, so poll it.
    while not gate.exists():  # noqa: ASYNC110
        await asyncio.sleep(GATE_POLL_SECONDS)
    return {"opened": gate.name}


async def inside_isolation(call: tools.Call, argument: Any) -> Any:
    """An isolated step: where it runs, what it sees, and what the control plane grants it."""
    found: dict[str, Any] = {"pid": os.getpid(), "environment": sorted(os.environ)}
    found["own_secret"] = await call.services.secret("token")
    try:
        await call.services.secret("token", integration="elsewhere")
    except Exception as exc:  # noqa: BLE001 - the refusal is the report
        found["other_integration"] = f"refused: {exc}"
    return found


@registry.workflow(ISOLATED)
async def isolated(ctx: context.TaskContext, task_input: Any) -> Any:
    """One step in its own confined process."""
    return await steps.run(ctx, "inside", inside_isolation, task_input, integrations=("billing",))
