"""`test.counted` as a later version of its code might have it: step `two` renamed `two_v2`.

A CLI given `engine.workflow_modules = ["tests.support.changed_workflows"]` (and not
`tests.support.workflows`) knows this version, so a replay of a task the old code ran is refused.
"""

from __future__ import annotations

from typing import Any

from appliance.engine import context, registry

COUNTED = "test.counted"  # tests.support.workflows.COUNTED (importing it would register the old)


async def _step(name: str) -> str:
    return name


@registry.workflow(COUNTED)
async def counted(ctx: context.TaskContext, task_input: Any) -> Any:
    """`one`, `two_v2`, `three`."""
    return [await ctx.step(name, _step, name) for name in ("one", "two_v2", "three")]
