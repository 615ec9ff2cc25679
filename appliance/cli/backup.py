"""CLI commands of backups: backup create|list|restore (appliance/backup.py does the work)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

from appliance import backup, settings
from appliance.cli import output


def _listed(found: backup.Listed) -> dict[str, Any]:
    data: dict[str, Any] = {"path": found.path, "bytes": found.bytes, "problem": found.problem}
    if found.manifest is not None:
        data.update(output.fields(found.manifest))
    return data


async def cmd_backup_create(args: argparse.Namespace, config: settings.Settings) -> int:
    """One backup now (the nightly timer runs this too)."""
    made = await backup.create(config)
    if args.json:
        output.emit_json(_listed(made))
    else:
        output.out(f"{made.path} ({made.bytes} bytes)")
    return 0


async def cmd_backup_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """The backups of backup.dir, newest first."""
    found = backup.list_backups(config)
    if args.json:
        output.emit_json([_listed(f) for f in found])
        return 0
    now = dt.datetime.now(dt.UTC)
    output.table(
        [
            (
                f.path.name,
                f.manifest.created_at if f.manifest else None,
                _age(now - f.manifest.created_at) if f.manifest else None,
                f.bytes,
                f.manifest.schema_version if f.manifest else None,
                (f.manifest.vault_key_fingerprint or "(no vault)")[:16] if f.manifest else None,
                f.problem,
            )
            for f in found
        ],
        ("backup", "created", "age", "bytes", "schema", "vault key", "problem"),
    )
    return 0


async def cmd_backup_restore(args: argparse.Namespace, config: settings.Settings) -> int:
    """Replace this box's database with a backup's (the daemon stopped)."""
    path = backup.locate(config, args.backup)
    restored = await backup.restore(config, path, replace=args.replace)
    rows = restored.rows
    if args.json:
        output.emit_json(
            {
                "backup": restored.backup,
                "created_at": restored.manifest.created_at,
                "schema_version": restored.manifest.schema_version,
                "migrations_applied": list(restored.migrations_applied),
                "replaced_tasks": restored.replaced_tasks,
                **output.fields(rows),
            }
        )
        return 0
    made = output.cell(restored.manifest.created_at)
    output.out(f"restored {restored.backup.name} (made {made})")
    output.out(f"tasks         {rows.tasks}")
    output.out(f"audit         {rows.audit_entries} entries in {rows.audit_chains} chains verify")
    output.out(f"secrets       {rows.secrets} (sealed under this box's vault key)")
    output.out(f"model calls   {rows.model_calls}, budgets {rows.budgets}")
    output.out(f"migrations    {', '.join(restored.migrations_applied) or 'none needed'}")
    return 0


def _age(delta: dt.timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """backup create|list|restore."""
    commands = sub.add_parser("backup", help="backups of the database").add_subparsers(
        dest="backup_command", required=True, parser_class=parser_class
    )
    add("create", cmd_backup_create, "back up the database now", commands)
    add("list", cmd_backup_list, "the backups in backup.dir, newest first", commands)
    restore = add("restore", cmd_backup_restore, "restore a backup (daemon stopped)", commands)
    restore.add_argument("backup", help="a backup file, or its name in backup.dir")
    restore.add_argument(
        "--replace", action="store_true", help="replace a database that holds tasks"
    )
