"""CLI command of first-boot provisioning: `appliance provision [FILE]` (appliance/provisioning.py
does the work), and `--stage`, the packaged box's root step (appliance-provision.service).

By hand, it does what the daemon does with a file it finds: check it, record it (the auth key
into the vault, tenants, the admin's roles), shred it, join the tailnet, and print the console's
URL. Without FILE it takes the one file found where the daemon looks; `--check` only reads it
and says what it asks for. Exit codes: 0 done, 1 no file found, 65 a bad file (nothing
consumed), 69 tailscaled down (the file was consumed: the key is in the vault, and `appliance
init` joins with it later), 78 the vault's key cannot be used.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import errors, provisioning, settings
from appliance.cli import output
from appliance.db import connection


async def cmd_provision(args: argparse.Namespace, config: settings.Settings) -> int:
    """Consume a provisioning file now."""
    if args.stage:
        return await _stage(config)
    path = _file(args.file, config)
    plan = provisioning.read(path)  # a bad file is refused before the database is opened
    if args.check:
        return _checked(args, config, path, plan)
    async with connection.open_database(config, create_cluster=True, pool_size=2) as db:
        done, plan = await provisioning.provision(db.pool, config, path, actor=output.actor())
    try:
        status = await provisioning.join(config, plan.tailnet.auth_key.get_secret_value().encode())
    except errors.ApplianceError:
        output.err(
            "appliance: the file was consumed (the auth key is in the vault); once the cause "
            "below is fixed, `appliance init` joins the tailnet with it"
        )
        raise
    url = provisioning.console_url(config, status, config.health.port) if status.ready else None
    if args.json:
        output.emit_json(
            {
                **output.fields(done),
                "tailnet": {
                    "state": status.backend_state,
                    "name": status.dns_name,
                    "ips": [str(ip) for ip in status.ips],
                },
                "console": url,
            }
        )
    else:
        for label, value in provisioning.describe(done):
            output.field(label, value, width=10)
        output.field("tailnet", f"{status.backend_state} as {status.dns_name}", width=10)
        output.field("console", url or "(once the tailnet is up)", width=10)
    return 0


def _checked(
    args: argparse.Namespace, config: settings.Settings, path: Path, plan: provisioning.Plan
) -> int:
    """--check: what the file would do, nothing consumed."""
    tenants = list(plan.tenant_names(config.default_tenant))
    if args.json:
        output.emit_json({"file": path, "admin": plan.admin.login, "tenants": tenants})
    else:
        output.out(f"{path}: ok; admin {plan.admin.login} of {', '.join(tenants)}")
    return 0


def _file(given: Path | None, config: settings.Settings) -> Path:
    if given is not None:
        return given
    found = provisioning.candidates(config)
    if not found:
        raise errors.NotFoundError(
            f"no provisioning file in {provisioning.look_in(config)}; name one: "
            "appliance provision FILE"
        )
    return provisioning.the_one(found)


async def _stage(config: settings.Settings) -> int:
    """The packaged box's root step, before each start of the daemon: the file found handed to
    the daemon, and the tailnet joined with its key. Always exit 0 (each problem said in one
    line), so the daemon still starts and says what it waits for."""
    try:
        staged = provisioning.stage(config)
    except provisioning.ProvisioningFileError as exc:
        output.err(f"appliance: {exc.message}; nothing was consumed")
        return 0
    if staged is None:
        return 0
    source, plan = staged
    output.err(f"appliance: staged {source} for the daemon, and removed it")
    try:
        status = await provisioning.join(config, plan.tailnet.auth_key.get_secret_value().encode())
    except errors.ApplianceError as exc:
        output.err(
            f"appliance: cannot join the tailnet now: {exc.message.splitlines()[0]} (the daemon "
            "tries again as its own user, which needs `tailscale set --operator=appliance`)"
        )
        return 0
    name = status.dns_name or status.hostname
    output.err(f"appliance: the tailnet: {status.backend_state} as {name}")
    return 0


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """provision [FILE] [--stage]."""
    del parser_class  # one command, no group
    command = add("provision", cmd_provision, "consume a first-boot provisioning file now")
    command.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="the provisioning file (default: the one found where the daemon looks)",
    )
    command.add_argument(
        "--check", action="store_true", help="only read the file and say what it asks for"
    )
    command.add_argument(
        "--stage",
        action="store_true",
        help="as root, before the daemon starts: move the file found into the state directory",
    )
