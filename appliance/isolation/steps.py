"""Isolated steps: a workflow's step that runs in its own confined process.

    async def charge(call: tools.Call, order: dict[str, Any]) -> dict[str, Any]:
        key = await call.services.secret("api-key")        # a lease, in the workflow's scope
        ...

    @registry.workflow("billing.charge")
    async def charge_order(ctx, order):
        return await steps.run(ctx, "charge", charge, order, integrations=("stripe",))

The step is checkpointed like any other (`ctx.step`): on resume its result is read back and
the process is not started again. The function must be defined at module level (the process
imports it by name), takes the control plane's proxy as `call.services` and one JSON argument,
and may lease the secrets of the task's tenant, of the workflow (or `*`), and of the
integrations named here, nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from appliance import leases
from appliance.agents import tools
from appliance.engine import context
from appliance.isolation import supervisor

SERVICE = "isolation"

StepFn = Callable[[tools.Call, Any], Awaitable[Any]]


async def run(
    ctx: context.TaskContext,
    name: str,
    fn: StepFn,
    argument: Any,
    *,
    integrations: tuple[str, ...] = (),
) -> Any:
    """Run `fn(call, argument)` as step `name` of the task, in its own confined process."""
    isolation = ctx.service(
        SERVICE,
        supervisor.Supervisor,
        f"step {name!r} of task {ctx.task_id} runs isolated, but this worker has no "
        "isolation service (the daemon provides it)",
    )
    target = supervisor.Target.of(fn)
    binding = leases.Binding(
        tenant_id=ctx.tenant_id,
        task_id=ctx.task_id,
        workflow=ctx.workflow,
        step_key=name,
        tool=name,
        integrations=integrations,
        worker=ctx.worker_id,
        attempt=ctx.attempt,
    )
    key = f"task-{ctx.task_id}-step-{ctx.next_position}"
    return await ctx.step(name, isolation.run, binding, target, argument, key)
