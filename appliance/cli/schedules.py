"""CLI commands of cron schedules: schedules list|add|pause|resume|remove|run-now.

They act on Postgres, the source of truth for schedules: a running daemon's scheduler sees a
change at its next look (`scheduler.poll_seconds`). A schedule from the config file is removed
there first, else the daemon's next start brings it back.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args

import pydantic

from appliance import errors, models, settings
from appliance.cli import arguments, output, validation
from appliance.db import connection
from appliance.ingress import cron, schedules

if TYPE_CHECKING:
    from appliance.engine import registry


def _workflows(config: settings.Settings) -> registry.Registry:
    """The registry with every workflow the box has: built-in, plugins, configured modules."""
    from appliance import plugins
    from appliance.engine import registry as known

    plugins.load(config.engine.workflow_modules)
    return known.registry


def _local(value: dt.datetime | None, zone: str) -> str:
    """An instant on the schedule's own clock (`2026-03-29 03:00 CEST`)."""
    if value is None:
        return "-"
    return value.astimezone(cron.zone(zone)).strftime("%Y-%m-%d %H:%M %Z")


async def cmd_schedules_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every schedule: its cron and zone, whether it runs, its next slot, its last task."""
    async with connection.open_database(config, pool_size=2) as db:
        found = await schedules.listing(db.pool, tenant_id=args.tenant)
        if not found and args.tenant is not None:
            await validation.known_tenant(db.pool, args.tenant)
    if args.json:
        output.emit_json([schedules.describe(s) for s in found])
        return 0
    output.table(
        [
            (
                s.name,
                s.tenant_id,
                s.cron,
                s.timezone,
                s.workflow,
                "paused" if s.paused else "active",
                "-" if s.paused else _local(s.next_fire_at, s.timezone),
                "-" if s.last_task_id is None else f"{s.last_task_id} {s.last_task_state}",
            )
            for s in found
        ],
        ("name", "tenant", "cron", "zone", "workflow", "state", "next", "last task"),
    )
    return 0


async def cmd_schedules_add(args: argparse.Namespace, config: settings.Settings) -> int:
    """Add a schedule at run time."""
    from appliance.agents import loop

    workflows = _workflows(config)
    tenant = args.tenant or config.default_tenant
    task_input = validation.task_input(args.input, workflows.get(args.workflow))
    try:
        definition = settings.Schedule(
            name=args.name,
            tenant=tenant,
            cron=args.cron,
            timezone=args.timezone,
            workflow=args.workflow,
            input=task_input,
            catchup=args.catchup,
            catchup_limit=args.catchup_limit,
            overlap=args.overlap,
        )
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        reason = first["msg"].removeprefix("Value error, ")
        raise errors.InputError(f"{where}: {reason}" if where else reason) from None
    async with connection.open_database(config, pool_size=2) as db:
        await validation.known_tenant(db.pool, tenant)
        if args.workflow == loop.WORKFLOW:
            await validation.agent_task(db.pool, tenant, task_input)
        added = await schedules.add(
            db.pool, workflows, definition, now=dt.datetime.now(dt.UTC), actor=output.actor()
        )
    if args.json:
        output.emit_json(schedules.describe(added))
    else:
        output.out(
            f"schedule {added.name}: added; next slot {_local(added.next_fire_at, added.timezone)}"
        )
    return 0


async def cmd_schedules_pause(args: argparse.Namespace, config: settings.Settings) -> int:
    """Stop a schedule firing (its state is kept)."""
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        was_paused = await schedules.pause(
            db.pool, tenant_id=tenant, name=args.name, actor=output.actor()
        )
    result = "already paused" if was_paused else "paused"
    if args.json:
        output.emit_json({"tenant_id": tenant, "name": args.name, "result": result})
    else:
        output.out(f"schedule {args.name}: {result}")
    return 0


async def cmd_schedules_resume(args: argparse.Namespace, config: settings.Settings) -> int:
    """Fire a paused schedule again, from its next slot after now."""
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        was_paused = await schedules.resume(
            db.pool,
            tenant_id=tenant,
            name=args.name,
            actor=output.actor(),
            now=dt.datetime.now(dt.UTC),
        )
        resumed = await schedules.get(db.pool, tenant_id=tenant, name=args.name)
    result = "resumed" if was_paused else "not paused"
    if args.json:
        output.emit_json({**schedules.describe(resumed), "result": result})
    else:
        nxt = _local(resumed.next_fire_at, resumed.timezone)
        output.out(f"schedule {args.name}: {result}; next slot {nxt}")
    return 0


async def cmd_schedules_remove(args: argparse.Namespace, config: settings.Settings) -> int:
    """Delete a schedule (the tasks it started stay)."""
    tenant = args.tenant or config.default_tenant
    if any(s.tenant == tenant and s.name == args.name for s in config.schedules):
        raise errors.StateError(
            f"schedule {args.name!r} of tenant {tenant!r} is in the config file "
            f"({args.config_path}): take it out there first, else the daemon's next start adds "
            f"it back (`appliance schedules pause {args.name}` stops it meanwhile)"
        )
    async with connection.open_database(config, pool_size=2) as db:
        await schedules.remove(db.pool, tenant_id=tenant, name=args.name, actor=output.actor())
    if args.json:
        output.emit_json({"tenant_id": tenant, "name": args.name, "result": "removed"})
    else:
        output.out(f"schedule {args.name}: removed")
    return 0


async def cmd_schedules_run_now(args: argparse.Namespace, config: settings.Settings) -> int:
    """Start a schedule's task now, by its overlap policy, without moving its slots."""
    tenant = args.tenant or config.default_tenant
    workflows = _workflows(config)
    async with connection.open_database(config, pool_size=2) as db:
        started = await schedules.run_now(
            db.pool,
            workflows,
            config.engine,
            tenant_id=tenant,
            name=args.name,
            actor=output.actor(),
            now=dt.datetime.now(dt.UTC),
        )
    if args.json:
        output.emit_json(
            {"name": args.name, "task_id": started.task_id, "cancelled": list(started.cancelled)}
        )
    else:
        cancelled = ", ".join(map(str, started.cancelled))
        output.out(
            f"schedule {args.name}: task {started.task_id}"
            + (f" (cancelled {cancelled})" if cancelled else "")
        )
    return 0


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """schedules list|add|pause|resume|remove|run-now."""
    commands = sub.add_parser("schedules", help="cron schedules").add_subparsers(
        dest="schedules_command", required=True, parser_class=parser_class
    )
    listing = add("list", cmd_schedules_list, "schedules, next slot and last task", commands)
    listing.add_argument("--tenant", help="one tenant's (default: every tenant's)")
    new = add("add", cmd_schedules_add, "add a schedule", commands)
    new.add_argument("name", type=arguments.schedule_name)
    new.add_argument(
        "--cron",
        required=True,
        type=arguments.cron_expression,
        help="five fields (minute hour day-of-month month day-of-week) or @hourly, @daily ...",
    )
    new.add_argument(
        "--timezone",
        default="UTC",
        type=arguments.timezone,
        help="IANA zone the fields are read in (default UTC)",
    )
    new.add_argument("--workflow", required=True, help="the workflow each slot starts")
    new.add_argument("--input", default="{}", help="the task input as a JSON object")
    new.add_argument("--tenant", help="tenant id (default: the configured default tenant)")
    new.add_argument(
        "--catchup",
        choices=get_args(models.Catchup),
        default="latest",
        help="missed slots: none, the newest (default), all up to --catchup-limit",
    )
    new.add_argument("--catchup-limit", type=arguments.catchup_limit, default=10)
    new.add_argument(
        "--overlap",
        choices=get_args(models.Overlap),
        default="skip",
        help="a slot while the previous task runs: skip it (default), start anyway, or cancel "
        "the previous one",
    )
    for name, handler, text in (
        ("pause", cmd_schedules_pause, "stop a schedule firing"),
        ("resume", cmd_schedules_resume, "fire a paused schedule again, from now on"),
        ("remove", cmd_schedules_remove, "delete a schedule (its tasks stay)"),
        ("run-now", cmd_schedules_run_now, "start a schedule's task now"),
    ):
        command = add(name, handler, text, commands)
        command.add_argument("name")
        command.add_argument("--tenant", help="tenant id (default: the configured default tenant)")
