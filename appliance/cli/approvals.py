"""CLI commands of human approvals: approvals list|show|approve|deny.

The decider is the OS user running the command, taken from the process's real uid (not from
$USER, which anyone can set); under sudo, the user who ran sudo ($SUDO_USER, trusted only when
the process runs as root, which sudo makes it). `--as NAME` adds a declared name: the vote is
recorded as `NAME (os:USER)`, and it is the OS user that counts once per request, so one account
cannot approve twice under two names.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
from collections.abc import Callable
from typing import Any

from appliance import approvals, errors, settings
from appliance.cli import arguments, output, validation
from appliance.db import connection
from appliance.db import tasks as dbtasks


def principal() -> str:
    """`os:<user>`: the OS account behind this command (the sudo caller's under sudo)."""
    uid = os.getuid()
    caller = os.environ.get("SUDO_USER")
    if uid == 0 and caller:
        return f"os:{caller}"
    try:
        return f"os:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"os:uid{uid}"


def _data(approval: approvals.Approval) -> dict[str, Any]:
    data = output.fields(approval)
    data["votes"] = [{**output.fields(v), "who": v.who} for v in approval.votes]
    return data


def _tally(approval: approvals.Approval) -> str:
    approved = sum(1 for v in approval.votes if v.decision == "approve")
    return f"{approved}/{approval.required_approvers}"


async def cmd_approvals_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Pending requests, soonest deadline first (--all: every request, newest first)."""
    async with connection.open_database(config, pool_size=2) as db:
        found = await approvals.list_requests(
            db.pool,
            tenant_id=args.tenant,
            task_id=args.task,
            pending_only=not args.all,
            limit=args.limit,
        )
        if not found and args.tenant is not None:
            await validation.known_tenant(db.pool, args.tenant)
        if (
            not found
            and args.task is not None
            and await dbtasks.get_task(db.pool, args.task) is None
        ):
            raise errors.NotFoundError(f"no task {args.task}")
    if args.json:
        output.emit_json([_data(a) for a in found])
        return 0
    output.table(
        [
            (
                a.approval_id,
                a.tenant_id,
                a.task_id,
                a.tool,
                a.action_class,
                a.state,
                _tally(a),
                a.deadline,
                a.reason,
            )
            for a in found
        ],
        ("id", "tenant", "task", "tool", "class", "state", "approvals", "deadline", "why"),
        whole_in="appliance approvals show ID",
    )
    return 0


async def cmd_approvals_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """One request: what, why, the arguments, the risk class, its state, deadline and votes."""
    async with connection.open_database(config, pool_size=2) as db:
        approval = await approvals.get(db.pool, args.approval_id)
    if args.json:
        output.emit_json(_data(approval))
        return 0
    _print(approval)
    return 0


def _print(approval: approvals.Approval) -> None:
    lines: list[tuple[str, Any]] = [
        ("approval", approval.approval_id),
        ("state", approval.state),
        ("tenant", approval.tenant_id),
        ("task", approval.task_id),
        ("step", approval.step_key),
        ("tool", approval.tool),
        ("risk class", approval.action_class),
        ("why", approval.reason),
        ("policy version", approval.policy_version),
        ("approvals", f"{_tally(approval)} (given/needed)"),
        ("requested", approval.created_at),
        ("deadline", approval.deadline),
        ("decided", approval.decided_at),
        ("decision reason", approval.decision_reason),
    ]
    for key, value in lines:
        if value is not None:
            output.field(key, value, width=17)
    output.out(f"{'arguments':<17}{json.dumps(approval.arguments, indent=2)}")
    output.out("")
    output.out("votes")
    output.table(
        [(v.voted_at, v.who, v.decision, v.reason) for v in approval.votes],
        ("time", "approver", "decision", "reason"),
    )


async def _decide(args: argparse.Namespace, config: settings.Settings, *, approve: bool) -> int:
    async with connection.open_database(config, pool_size=2) as db:
        approval = await approvals.decide(
            db.pool,
            approval_id=args.approval_id,
            approver=principal(),
            declared_as=args.declared_as,
            approve=approve,
            reason=args.reason,
        )
    if args.json:
        output.emit_json(_data(approval))
    elif approval.state == "pending":
        output.out(
            f"approval {approval.approval_id}: pending, {_tally(approval)} approvals; "
            "it needs another approver"
        )
    else:
        output.out(
            f"approval {approval.approval_id}: {approval.state}; "
            f"task {approval.task_id} resumes at the step that asked"
        )
    return 0


async def cmd_approvals_approve(args: argparse.Namespace, config: settings.Settings) -> int:
    """Approve a pending request (it is approved once enough distinct people have)."""
    return await _decide(args, config, approve=True)


async def cmd_approvals_deny(args: argparse.Namespace, config: settings.Settings) -> int:
    """Deny a pending request (one deny decides)."""
    return await _decide(args, config, approve=False)


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """approvals list|show|approve|deny."""
    commands = sub.add_parser("approvals", help="human approvals of agent actions").add_subparsers(
        dest="approvals_command", required=True, parser_class=parser_class
    )
    listing = add("list", cmd_approvals_list, "pending requests, soonest deadline first", commands)
    listing.add_argument("--tenant", help="one tenant's (default: every tenant's)")
    listing.add_argument("--task", type=arguments.identifier, help="one task's")
    listing.add_argument("--all", action="store_true", help="decided ones too, newest first")
    listing.add_argument("--limit", type=arguments.count, default=50)
    add("show", cmd_approvals_show, "one request with its votes", commands).add_argument(
        "approval_id", type=arguments.identifier
    )
    for name, handler, text in (
        ("approve", cmd_approvals_approve, "approve a pending request"),
        ("deny", cmd_approvals_deny, "deny a pending request"),
    ):
        command = add(name, handler, text, commands)
        command.add_argument("approval_id", type=arguments.identifier)
        command.add_argument("--reason", help="why, recorded with the vote")
        command.add_argument(
            "--as",
            dest="declared_as",
            metavar="NAME",
            help="your name, recorded with your OS user (which counts once per request)",
        )
