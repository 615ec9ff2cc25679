"""`appliance workflows list` and `appliance tools list`: what this box can run, and where each
came from (the appliance, a module of `engine.workflow_modules`, or an installed distribution's
entry point), loaded as the daemon loads it at start (`appliance.plugins`). No database: the
registry lives in the code, so these answer on a box whose Postgres is down, and a plugin that
does not load fails them as it fails the daemon (exit 78, one line)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from appliance import origins, plugins, settings
from appliance.agents import tools
from appliance.cli import output
from appliance.engine import registry


def _source(origin: origins.Origin) -> str:
    """Where it came from, in a table cell: the module loaded, or the distribution."""
    if origin.kind == "entry-point":
        return f"{origin.distribution} {origin.version} ({origin.entry_point})"
    return origin.module


async def cmd_workflows_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every registered workflow: its origin, its module and the input it declares."""
    plugins.load(config.engine.workflow_modules)
    found = registry.registry.workflows()
    if args.json:
        output.emit_json(
            [
                {
                    "name": w.name,
                    "module": w.module,
                    "origin": output.fields(w.origin),
                    "input": w.input_shape,
                    "integration": w.integration,
                    "max_attempts": w.max_attempts,
                }
                for w in found
            ]
        )
        return 0
    output.table(
        [(w.name, w.origin.kind, _source(w.origin), w.input_shape) for w in found],
        ("name", "origin", "source", "input"),
    )
    return 0


async def cmd_tools_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every registered tool: its action class (what the policy sees), whether it runs in its
    own confined process, the integrations whose secrets it may lease, and its origin."""
    plugins.load(config.engine.workflow_modules)
    found = tools.toolbox.tools()
    if args.json:
        output.emit_json(
            [
                {
                    "name": t.name,
                    "description": t.description,
                    "action_class": t.action_class,
                    "isolated": t.isolated,
                    "idempotent": t.idempotent,
                    "integrations": list(t.integrations),
                    "input_schema": t.input_schema,
                    "module": t.module,
                    "origin": output.fields(t.origin),
                }
                for t in found
            ]
        )
        return 0
    output.table(
        [
            (
                t.name,
                t.action_class,
                "yes" if t.isolated else "no",
                ", ".join(t.integrations) or "-",
                t.origin.kind,
                _source(t.origin),
            )
            for t in found
        ],
        ("name", "class", "isolated", "integrations", "origin", "source"),
    )
    return 0


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """workflows list, tools list."""
    for group, handler, text in (
        ("workflows", cmd_workflows_list, "the registered workflows and where each came from"),
        ("tools", cmd_tools_list, "the registered tools, their action classes, their origins"),
    ):
        commands = sub.add_parser(group, help=f"registered {group}").add_subparsers(
            dest=f"{group}_command", required=True, parser_class=parser_class
        )
        add("list", handler, text, commands)
