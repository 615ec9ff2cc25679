"""CLI commands of replay: `task replay N [--from-step NAME]` and `audit replay N`
(appliance/engine/replay.py does the work)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from appliance import errors, settings
from appliance.cli import arguments, output
from appliance.db import connection


async def cmd_task_replay(args: argparse.Namespace, config: settings.Settings) -> int:
    """A new task that reuses task N's checkpoints before the step and runs the rest."""
    from appliance import demo  # noqa: F401 - registers the demo workflow
    from appliance.agents import loop  # noqa: F401 - registers agent.run
    from appliance.engine import registry, replay

    registry.import_modules(config.engine.workflow_modules)
    async with connection.open_database(config, pool_size=2) as db:
        replayed = await replay.replay(
            db.pool,
            registry.registry,
            config.engine,
            task_id=args.task_id,
            from_step=args.from_step,
            actor=output.actor(),
        )
    if args.json:
        output.emit_json(dataclasses.asdict(replayed))
    elif replayed.from_step is None:
        output.out(f"{replayed.task_id} (replays task {replayed.replay_of}, every step again)")
    else:
        output.out(
            f"{replayed.task_id} (replays task {replayed.replay_of} from step "
            f"{replayed.from_step!r}, {replayed.reused_steps} checkpoint(s) reused)"
        )
    return 0


async def cmd_audit_replay(args: argparse.Namespace, config: settings.Settings) -> int:
    """Rebuild task N's step results from its audit entries alone; compare with checkpoints."""
    from appliance.engine import replay

    async with connection.open_database(config, pool_size=2) as db:
        found = await replay.rebuild_from_audit(db.pool, args.task_id)
    if args.json:
        output.emit_json(dataclasses.asdict(found) | {"matches": found.difference is None})
    elif found.difference is None:
        output.out(
            f"ok: task {found.task_id}: {found.rebuilt} step result(s) rebuilt from "
            f"{found.entries} audit entries match its {found.steps} checkpoint(s)"
        )
    if found.difference is not None:
        raise errors.AuditReplayError(
            f"task {found.task_id}: its audit entries do not rebuild its checkpoints: "
            f"{found.difference}"
        )
    return 0


def add_commands(task: Any, audit: Any, add: Callable[..., Any]) -> None:
    """task replay N [--from-step NAME]; audit replay N."""
    command = add(
        "replay", cmd_task_replay, "a new task that replays task N (from one of its steps)", task
    )
    command.add_argument("task_id", type=arguments.identifier)
    command.add_argument(
        "--from-step",
        metavar="NAME",
        help="reuse the checkpoints before the first step of this name, run it and the rest "
        "(default: run every step again)",
    )
    add(
        "replay",
        cmd_audit_replay,
        "rebuild a task's step results from its audit entries; compare with its checkpoints",
        audit,
    ).add_argument("task_id", type=arguments.identifier)
