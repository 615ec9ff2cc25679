"""Workflows the boot test installs into the packaged box's virtualenv (tests only).

- `box.confined` runs one isolated step, in the confined process the daemon starts for every
  tool call, and returns what that process sees of the daemon's secrets: the state directory,
  the configuration file, the credentials and the Postgres socket directory should all be empty.
- `box.slow` takes a few seconds over several checkpointed steps, to be killed in the middle.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from appliance.agents import tools
from appliance.engine import context, registry
from appliance.isolation import steps

CONFINED = "box.confined"
SLOW = "box.slow"
SLOW_STEPS = 6
STEP_SECONDS = 1.0
CONFIG_FILE = "/etc/appliance/appliance.toml"
LOOKED_AT = (
    "/var/lib/appliance",
    "/etc/appliance",
    "/run/postgresql",
    "/run/credentials/appliance.service",
)


def _seen(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"refused: {exc.strerror}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        return f"refused: {exc.strerror}"


async def look_around(call: tools.Call, argument: Any) -> Any:
    """Inside the tool process: what each of the daemon's directories shows."""
    del call
    seen = {path: _seen(path) for path in LOOKED_AT}
    config = _read(CONFIG_FILE)
    processes = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    return {
        "argument": argument,
        "uid": os.getuid(),
        "seen": seen,
        "config": config,
        "processes": processes,
    }


@registry.workflow(CONFINED)
async def confined(ctx: context.TaskContext, task_input: Any) -> Any:
    """One step in its own confined process."""
    return await steps.run(ctx, "look", look_around, task_input)


async def _pause(position: int) -> int:
    await asyncio.sleep(STEP_SECONDS)
    return position


@registry.workflow(SLOW)
async def slow(ctx: context.TaskContext, task_input: Any) -> Any:
    """SLOW_STEPS checkpointed steps of STEP_SECONDS each."""
    del task_input
    return [await ctx.step(f"pause{n}", _pause, n) for n in range(SLOW_STEPS)]
