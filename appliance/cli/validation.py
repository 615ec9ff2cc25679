"""What the CLI checks before it stores anything: the things a command names must exist and its
input must fit, so a mistake is one line (exit 65) instead of a task that fails later or an
agent that cannot run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import errors, settings
from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants

if TYPE_CHECKING:
    from appliance.agents import definitions
    from appliance.engine import registry


async def known_tenant(pool: dbpool.Pool, tenant_id: str) -> None:
    """UnknownTenantError unless the tenant exists."""
    if await dbtenants.get_tenant(pool, tenant_id) is None:
        raise errors.UnknownTenantError(
            f"unknown tenant {tenant_id!r}; create it with `appliance tenants add {tenant_id}` "
            "(`appliance tenants list` shows the tenants there are)"
        )


def _refuse_constant(name: str) -> Any:
    raise errors.InputError(f"--input is not valid JSON: {name} is not a JSON number")


def task_input(text: str, workflow: registry.Workflow) -> Any:
    """--input parsed as JSON and checked against the input the workflow declares."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise errors.InputError(f"--input is not valid JSON: {exc}") from exc
    workflow.check_input(value)
    return value


async def agent_task(pool: dbpool.Pool, tenant_id: str, task_input: Any) -> None:
    """The agent an `agent.run` input names exists (in that version, if it names one)."""
    from appliance.db import agents as dbagents

    try:
        await dbagents.get_agent(
            pool,
            tenant_id=tenant_id,
            name=str(task_input["agent"]),
            version=task_input.get("version"),
        )
    except errors.NotFoundError as exc:
        raise errors.InputError(f"--input names an unknown agent: {exc}") from exc


async def agent_definition(
    pool: dbpool.Pool, config: settings.Settings, definition: definitions.Definition, path: Path
) -> None:
    """Every tool of the definition is registered, and its model has a price in each category
    (else no call could be costed or checked against a budget)."""
    from appliance import plugins
    from appliance.agents import costs, tools

    plugins.load(config.engine.workflow_modules)  # they register the tools
    unknown = [name for name in definition.tools if name not in tools.toolbox.names()]
    if unknown:
        known = ", ".join(tools.toolbox.names()) or "none"
        them = "them" if len(unknown) > 1 else "it"
        raise errors.InputError(
            f"{path}: unknown tool {', '.join(map(repr, unknown))} (registered: {known}); "
            f"remove {them} from `tools`, or register {them} (install the package that "
            "provides them, or name their module in engine.workflow_modules)"
        )
    try:
        await costs.price_of(pool, definition.model)
    except errors.NotFoundError as exc:
        raise errors.InputError(f"{path}: {exc}") from exc
