"""Workflows the benchmarks run inside `appliance run` subprocesses."""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.engine import context, registry


async def _sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


SLEEPY = "bench.sleepy"


@registry.workflow(SLEEPY)
async def sleepy(ctx: context.TaskContext, task_input: Any) -> Any:
    """One long step, so a killed worker holds its tasks mid-step."""
    return await ctx.step("sleep", _sleep, 3600.0)
