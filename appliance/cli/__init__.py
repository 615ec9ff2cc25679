"""The `appliance` command. Data goes to stdout, diagnostics to stderr, `--json` for machines.

Exit codes (STYLE.md): 0 ok, 1 the answer is no, 2 usage, 65 bad input data, 69 a dependency
is down, 70 a bug, 75 try again later, 77 not allowed, 78 misconfigured.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, get_args

from appliance import __version__, errors, launchd, models, settings
from appliance.cli import agents as agent_commands
from appliance.cli import approvals as approval_commands
from appliance.cli import arguments, output, validation
from appliance.cli import backup as backup_commands
from appliance.cli import catalogue as catalogue_commands
from appliance.cli import health as health_commands
from appliance.cli import provision as provision_commands
from appliance.cli import replay as replay_commands
from appliance.cli import schedules as schedule_commands
from appliance.db import audit as dbaudit
from appliance.db import connection, migrations
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants

Handler = Callable[[argparse.Namespace, settings.Settings], Coroutine[Any, Any, int]]


def _task_dict(task: models.Task) -> dict[str, Any]:
    return {f: getattr(task, f) for f in task.__dataclass_fields__}


# ---- commands ----------------------------------------------------------------------------------


async def cmd_init(args: argparse.Namespace, config: settings.Settings) -> int:
    """Config file, state directory, database, migrations, default tenant; safe to repeat."""
    if not config.embedded:  # else the cluster makes it, traversable by its Postgres user
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    async with connection.open_database(config, create_cluster=True) as db:
        async with db.pool.acquire() as conn:
            applied = await migrations.migrate(conn)
        initialised = await agent_commands.init_vault(
            config, db.pool, replace_lost_key=args.replace_lost_vault_key
        )
        box = initialised.vault
        vault_state = f"key version {box.current_version}, fingerprint {box.fingerprint}"
        created = await dbtenants.create_tenant(
            db.pool,
            tenant_id=config.default_tenant,
            name=config.default_tenant,
            actor=output.actor(),
        )
        stored_key = None
        if args.tailnet_auth_key_file is None:
            from appliance import provisioning

            stored_key = await provisioning.tailnet_key(db.pool, config, box)
        where = f"embedded cluster in {db.cluster.data_dir}" if db.cluster else "configured server"
    tailnet = None
    if args.tailnet_auth_key_file is not None:
        tailnet = await _join_tailnet(config, args.tailnet_auth_key_file)
    elif stored_key is not None:
        from appliance.mesh import tailscale

        with tailscale.auth_key_file(stored_key) as key_file:
            tailnet = await _join_tailnet(config, key_file)
    result: dict[str, Any] = {
        "tailnet": tailnet,
        "config": str(args.config_path),
        "state_dir": str(config.state_dir),
        "database": where,
        "migrations_applied": [m.filename for m in applied],
        "default_tenant": config.default_tenant,
        "tenant_created": created,
        "vault": vault_state,
        "vault_secrets_lost": list(initialised.lost),
    }
    if args.json:
        output.emit_json(result)
    else:
        output.out(f"config        {result['config']}")
        output.out(f"state dir     {result['state_dir']}")
        output.out(f"database      {where}")
        output.out(f"migrations    {', '.join(result['migrations_applied']) or 'up to date'}")
        output.out(f"tenant        {config.default_tenant} ({'created' if created else 'exists'})")
        output.out(f"vault         {vault_state}")
        if initialised.lost:
            output.out(f"lost secrets  {', '.join(initialised.lost)} (set them again)")
        if tailnet is not None:
            output.out(f"tailnet       {tailnet['state']} as {tailnet['name']} {tailnet['ips']}")
    return 0


async def cmd_exposure_check(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every listening socket of the box against the exposure policy (for install scripts and
    CI): exit 0, or 78 naming each offending socket's protocol, address, port and process."""
    from appliance.mesh import exposure, listeners

    policy, notes = listeners.configured_policy(config)
    result = exposure.run_check(policy, box_wide=True, notes=notes)
    if args.json:
        output.emit_json(result.as_json())
    else:
        output.out(result.text())
    if not result.passed:
        raise exposure.ExposureError(result.violations)
    return 0


async def _join_tailnet(config: settings.Settings, key_file: Path) -> dict[str, Any]:
    """First run: `tailscale up` with the key file (the key never reaches argv); later: `set`."""
    from appliance.mesh import tailscale

    mesh = tailscale.Tailscale(config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds)
    status = await mesh.join(
        auth_key_file=key_file,
        hostname=config.mesh.hostname or config.engine.node_name,
        advertise_tags=config.mesh.advertise_tags,
    )
    return {
        "state": status.backend_state,
        "name": status.dns_name,
        "ips": [str(i) for i in status.ips],
    }


async def cmd_run(args: argparse.Namespace, config: settings.Settings) -> int:
    """The daemon."""
    from appliance import daemon

    demo_folder = None
    if args.demo is not None:
        demo_folder = Path(args.demo) if args.demo else Path(__file__).resolve().parent
    options = daemon.Options(
        migrate=config.database.migrate_on_start and not args.no_migrate,
        demo_folder=demo_folder,
        until_idle=args.until_idle,
        local=args.local,
        config_file=args.config_path,
    )
    return await daemon.run(config, options)


async def cmd_migrate(args: argparse.Namespace, config: settings.Settings) -> int:
    """Apply pending migrations (or print their SQL)."""
    async with (
        connection.open_database(config, create_cluster=True, pool_size=2) as db,
        db.pool.acquire() as conn,
    ):
        if args.print_sql:
            pending = (await migrations.status(conn)).to_apply
            if args.json:
                output.emit_json(
                    [{"file": m.filename, "sha256": m.checksum, "sql": m.text} for m in pending]
                )
                return 0
            for migration in pending:
                output.out(f"-- {migration.filename} (sha256 {migration.checksum})")
                output.out(migration.text)
            return 0
        applied = await migrations.migrate(conn)
    if args.json:
        output.emit_json({"applied": [m.filename for m in applied]})
    elif applied:
        for migration in applied:
            output.out(f"applied {migration.filename}")
    else:
        output.out("up to date")
    return 0


async def cmd_config_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """The effective settings, secrets redacted."""
    data = settings.redacted(config)
    if args.json:
        output.emit_json(data)
        return 0
    output.out(f"# effective settings (file: {args.config_path})")
    for key, value in _flatten(data):
        output.out(f"{key} = {json.dumps(value)}")
    return 0


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and key in settings.Settings.model_fields:
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


async def cmd_doctor(args: argparse.Namespace, config: settings.Settings) -> int:
    """Each check: ok, warn or fail, and how to fix it; exit 1 only when one fails."""
    from appliance import doctor

    checks = await doctor.run_checks(config)
    if args.json:
        output.emit_json([output.fields(c) for c in checks])
    else:
        for check in checks:
            mark = "ok  " if check.ok else ("FAIL" if check.failed else "warn")
            output.out(f"[{mark}] {check.name}: {check.detail}")
            if not check.ok and check.fix:
                output.out(f"       fix: {check.fix}")
    return 1 if any(c.failed for c in checks) else 0


async def cmd_task_submit(args: argparse.Namespace, config: settings.Settings) -> int:
    """Enqueue a task."""
    from appliance import plugins
    from appliance.agents import loop
    from appliance.engine import registry, submission

    plugins.load(config.engine.workflow_modules)
    workflow = registry.registry.get(args.workflow)
    task_input = validation.task_input(args.input, workflow)
    tenant = args.tenant or config.default_tenant
    run_after = None
    if args.delay is not None:
        run_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.delay)
    async with connection.open_database(config, pool_size=2) as db:
        await validation.known_tenant(db.pool, tenant)
        if args.workflow == loop.WORKFLOW:
            await validation.agent_task(db.pool, tenant, task_input)
        submitted = await submission.submit(
            db.pool,
            registry.registry,
            config.engine,
            tenant_id=tenant,
            workflow=args.workflow,
            task_input=task_input,
            priority=args.priority,
            run_after=run_after,
            max_attempts=args.max_attempts,
            idempotency_key=args.idempotency_key,
            actor=output.actor(),
        )
    if args.json:
        output.emit_json({"task_id": submitted.task_id, "created": submitted.created})
    else:
        output.out(f"{submitted.task_id}" + ("" if submitted.created else " (existing task)"))
    return 0


async def cmd_task_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """The newest tasks."""
    async with connection.open_database(config, pool_size=2) as db:
        tasks = await dbtasks.list_tasks(
            db.pool, tenant_id=args.tenant, state=args.state, limit=args.limit
        )
        if not tasks and args.tenant is not None:
            await validation.known_tenant(db.pool, args.tenant)
    if args.json:
        output.emit_json([_task_dict(t) for t in tasks])
        return 0
    output.table(
        [
            (
                t.task_id,
                t.tenant_id,
                t.workflow,
                t.state,
                f"{t.attempts}/{t.max_attempts}",
                t.created_at,
                t.error,
            )
            for t in tasks
        ],
        ("id", "tenant", "workflow", "state", "attempts", "created", "error"),
        whole_in="appliance task show ID",
    )
    return 0


async def cmd_task_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """A task with its steps (durations) and attempts."""
    async with connection.open_database(config, pool_size=2) as db:
        task = await dbtasks.get_task(db.pool, args.task_id)
        if task is None:
            raise errors.NotFoundError(f"no task {args.task_id}")
        steps = await dbtasks.list_steps(db.pool, args.task_id)
        attempts = await dbtasks.list_attempts(db.pool, args.task_id)
    if args.json:
        data = _task_dict(task)  # `attempts` stays the count, as in `task list`
        data["steps"] = steps
        data["attempt_history"] = attempts
        output.emit_json(data)
        return 0
    for key in (
        "task_id",
        "tenant_id",
        "workflow",
        "state",
        "wait_reason",
        "priority",
        "attempts",
        "max_attempts",
        "crashes",
        "max_crashes",
        "idempotency_key",
        "created_at",
        "started_at",
        "finished_at",
        "cancel_requested_by",
        "replay_of",
        "replay_from",
        "error",
    ):
        value = getattr(task, key)
        if value is not None:
            output.field(key, value, width=20)
    output.field("input", json.dumps(task.input), width=20)
    if task.output is not None:
        output.field("output", json.dumps(task.output), width=20)
    output.out("")
    output.out("steps")
    output.table(
        [(s.position, s.name, s.attempt, f"{s.duration_ms:.2f} ms", s.started_at) for s in steps],
        ("#", "step", "attempt", "duration", "started"),
    )
    output.out("")
    output.out("attempts")
    output.table(
        [(a.attempt, a.node, a.outcome, a.started_at, a.ended_at, a.error) for a in attempts],
        ("#", "node", "outcome", "started", "ended", "error"),
    )
    return 0


async def cmd_task_cancel(args: argparse.Namespace, config: settings.Settings) -> int:
    """Cancel a task (a running one stops at its next step boundary)."""
    async with connection.open_database(config, pool_size=2) as db:
        result = await dbtasks.cancel_task(db.pool, task_id=args.task_id, actor=output.actor())
    if result is None:
        raise errors.NotFoundError(f"no task {args.task_id}")
    if result.startswith("ended:"):
        raise errors.StateError(f"task {args.task_id} already ended: {result[len('ended:') :]}")
    if args.json:
        output.emit_json({"task_id": args.task_id, "result": result})
    elif result == "cancelling":
        output.out(f"task {args.task_id}: cancel requested; it stops at its next step boundary")
    else:
        output.out(f"task {args.task_id}: cancelled")
    return 0


async def cmd_task_retry(args: argparse.Namespace, config: settings.Settings) -> int:
    """Requeue a failed or cancelled task; it resumes from its last checkpoint."""
    async with connection.open_database(config, pool_size=2) as db:
        result = await dbtasks.retry_task(
            db.pool, task_id=args.task_id, actor=output.actor(), attempts=config.engine.max_attempts
        )
    if result is None:
        raise errors.NotFoundError(f"no task {args.task_id}")
    if result != "queued":
        raise errors.StateError(
            f"task {args.task_id} is {result.removeprefix('refused:')}; "
            "only failed or cancelled tasks can be retried"
        )
    if args.json:
        output.emit_json({"task_id": args.task_id, "result": result})
    else:
        output.out(f"task {args.task_id}: queued again")
    return 0


async def cmd_audit_verify(args: argparse.Namespace, config: settings.Settings) -> int:
    """Check every hash chain; name the first broken entry."""
    async with connection.open_database(config, pool_size=2) as db:
        entries, chains = await dbaudit.count_audit_entries(db.pool)
        breaks = await dbaudit.find_chain_breaks(db.pool)
    if args.json:
        output.emit_json(
            {"entries": entries, "chains": chains, "breaks": [output.fields(b) for b in breaks]}
        )
    elif not breaks:
        output.out(f"ok: {entries} entries in {chains} chains verify")
    if breaks:
        first = breaks[0]
        raise errors.AuditChainError(
            f"audit chain broken: first bad entry is {first.chain} #{first.seq}: {first.reason}"
            + (f" ({len(breaks)} bad entries shown at most 20)" if len(breaks) > 1 else "")
        )
    return 0


async def cmd_audit_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """A task's audit entries."""
    async with connection.open_database(config, pool_size=2) as db:
        entries = await dbaudit.list_chain(db.pool, f"task:{args.task_id}")
    if not entries:
        raise errors.NotFoundError(f"no audit entries for task {args.task_id}")
    if args.json:
        output.emit_json([output.fields(e) for e in entries])
        return 0
    output.table(
        [(e.seq, e.created_at, e.actor, e.action, e.detail, e.hash[:12]) for e in entries],
        ("seq", "time", "actor", "action", "detail", "hash"),
    )
    return 0


async def cmd_tenants_add(args: argparse.Namespace, config: settings.Settings) -> int:
    """Create a tenant."""
    async with connection.open_database(config, pool_size=2) as db:
        created = await dbtenants.create_tenant(
            db.pool,
            tenant_id=args.tenant_id,
            name=args.name or args.tenant_id,
            actor=output.actor(),
        )
    if args.json:
        output.emit_json({"tenant_id": args.tenant_id, "created": created})
    else:
        output.out(f"tenant {args.tenant_id}: {'created' if created else 'exists already'}")
    return 0


async def cmd_tenants_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every tenant."""
    async with connection.open_database(config, pool_size=2) as db:
        found = await dbtenants.list_tenants(db.pool)
    if args.json:
        output.emit_json([output.fields(t) for t in found])
    else:
        output.table(
            [(t.tenant_id, t.name, t.created_at) for t in found], ("id", "name", "created")
        )
    return 0


# ---- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 through our handler, with the usage line."""

    def error(self, message: str) -> Any:
        usage = " ".join(self.format_usage().split())  # one line, however long
        raise errors.UsageError(f"{message}; {usage}")


def _global_options(target: argparse.ArgumentParser, *, below_subcommand: bool) -> None:
    """--config, --json, -v: accepted before and after the subcommand. Below it, SUPPRESS keeps
    a value given before the subcommand from being overwritten by the subparser's default."""
    unset: Any = argparse.SUPPRESS if below_subcommand else None
    flag: Any = argparse.SUPPRESS if below_subcommand else False
    target.add_argument(
        "--config",
        type=Path,
        default=unset,
        help=f"config file (else $APPLIANCE_CONFIG, else {settings.DEFAULT_CONFIG_PATH})",
    )
    target.add_argument("--json", action="store_true", default=flag, help="output for machines")
    target.add_argument("-v", "--verbose", action="store_true", default=flag, help="tracebacks")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_options(common, below_subcommand=True)
    parser = _Parser(prog="appliance", description="The agent appliance.")
    _global_options(parser, below_subcommand=False)
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Handler, help_text: str, parent: Any = sub) -> _Parser:
        cmd: _Parser = parent.add_parser(name, help=help_text, parents=[common])
        cmd.set_defaults(handler=handler)
        return cmd

    init = add(
        "init",
        cmd_init,
        "write the config if missing, create state dir and database, "
        "migrate, add the default tenant",
    )
    init.add_argument("--state-dir", type=Path, help="state directory written into a new config")
    init.add_argument(
        "--replace-lost-vault-key",
        action="store_true",
        help="the vault's master key is lost for good: delete every secret sealed under it "
        "(they cannot be opened) and start a new key (the old key file is kept beside it)",
    )
    init.add_argument(
        "--tailnet-auth-key-file",
        type=Path,
        help="join the tailnet with this auth key (first run: tailscale up; later: set); "
        "without it, the key the vault holds as `tailscale auth-key`, if any",
    )
    add("exposure-check", cmd_exposure_check, "fail if anything but the webhook port is public")
    run = add("run", cmd_run, "run the daemon")
    run.add_argument("--no-migrate", action="store_true", help="do not migrate at start")
    run.add_argument(
        "--local",
        action="store_true",
        help="development: the console listens on 127.0.0.1, not on the tailnet addresses",
    )
    run.add_argument(
        "--demo",
        nargs="?",
        const="",
        metavar="FOLDER",
        help="also submit the demo task (digest of FOLDER; default: the package)",
    )
    run.add_argument(
        "--until-idle", action="store_true", help="exit 0 once no task is ready or running"
    )
    migrate = add("migrate", cmd_migrate, "apply pending migrations")
    migrate.add_argument("--print-sql", action="store_true", help="print pending SQL, apply none")
    add("doctor", cmd_doctor, "check the installation; say how to fix what fails")
    add("health", health_commands.cmd_health, "is the running daemon ready? exit 0, else why")

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True, parser_class=_Parser
    )
    add("show", cmd_config_show, "print the effective settings (secrets redacted)", config)

    task = sub.add_parser("task", help="tasks").add_subparsers(
        dest="task_command", required=True, parser_class=_Parser
    )
    submit = add("submit", cmd_task_submit, "enqueue a task", task)
    submit.add_argument("workflow")
    submit.add_argument("--input", default="{}", help="the task input as JSON")
    submit.add_argument("--tenant", help="tenant id (default: the configured default tenant)")
    submit.add_argument("--idempotency-key", help="the same key returns the same task")
    submit.add_argument("--priority", type=arguments.priority, default=0, help="higher runs first")
    submit.add_argument("--delay", type=arguments.seconds, help="seconds before it may run")
    submit.add_argument("--max-attempts", type=arguments.count, help="attempts before it fails")
    listing = add("list", cmd_task_list, "list tasks, newest first", task)
    listing.add_argument("--tenant")
    listing.add_argument("--state", choices=sorted(get_args(models.TaskState)))
    listing.add_argument("--limit", type=arguments.count, default=50)
    for name, handler, text in (
        ("show", cmd_task_show, "a task with its steps and attempts"),
        ("cancel", cmd_task_cancel, "cancel a task"),
        ("retry", cmd_task_retry, "requeue a failed or cancelled task"),
    ):
        add(name, handler, text, task).add_argument("task_id", type=arguments.identifier)

    replay_commands.add_commands(task, _audit_commands(sub, add), add)

    tenants = sub.add_parser("tenants", help="tenants").add_subparsers(
        dest="tenants_command", required=True, parser_class=_Parser
    )
    tenant_add = add("add", cmd_tenants_add, "create a tenant", tenants)
    tenant_add.add_argument("tenant_id")
    tenant_add.add_argument("--name")
    add("list", cmd_tenants_list, "list tenants", tenants)
    for add_commands in (
        agent_commands.add_commands,
        approval_commands.add_commands,
        backup_commands.add_commands,
        catalogue_commands.add_commands,
        schedule_commands.add_commands,
        provision_commands.add_commands,
    ):
        add_commands(sub, add, _Parser)
    return parser


def _audit_commands(sub: Any, add: Callable[..., Any]) -> Any:
    """audit verify|show; returns the group, for the commands of other modules."""
    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True, parser_class=_Parser
    )
    add("verify", cmd_audit_verify, "verify every hash chain", audit)
    add("show", cmd_audit_show, "a task's audit entries", audit).add_argument(
        "task_id", type=arguments.identifier
    )
    return audit


def _report(exc: BaseException, verbose: bool) -> None:
    """One line saying what went wrong. The causes follow only where a person can act on them:
    our own errors that add to the message, every cause of a bug (exit 70), and with -v the
    whole chain (driver errors included) and the traceback."""
    output.err(f"appliance: error: {exc}")
    bug = (
        not isinstance(exc, errors.ApplianceError)
        or exc.exit_code == errors.ApplianceError.exit_code
    )
    said = str(exc)
    cause = exc.__cause__
    while cause is not None:
        text = str(cause)
        adds = isinstance(cause, errors.ApplianceError) and text not in said
        if verbose or bug or adds:
            output.err(f"  caused by: {type(cause).__name__}: {text}")
            said += text
        cause = cause.__cause__
    if verbose or not isinstance(exc, errors.ApplianceError):
        traceback.print_exception(exc, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command; map errors to exit codes."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        args = build_parser().parse_args(argv)
        args.config_path, _ = settings.config_path(args.config, os.environ)
        if args.handler is cmd_init and not args.config_path.exists():
            _write_template(args.config_path, args.state_dir)
        config = settings.load(args.config)
        _configure_logging(args, config)
        handler: Handler = args.handler
        return asyncio.run(handler(args, config))
    except errors.ApplianceError as exc:
        _report(exc, verbose)
        return launchd.exit_code(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 70
        _report(exc, verbose)
        return errors.ApplianceError.exit_code


def _write_template(path: Path, state_dir: Path | None) -> None:
    text = settings.template()
    if state_dir is not None:
        text = text.replace(
            f"# state_dir = {json.dumps(str(settings.Settings().state_dir))}",
            f"state_dir = {json.dumps(str(state_dir.resolve()))}",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot write the config file: {exc.strerror}") from exc
    output.err(f"wrote {path} (every key at its default)")


def _configure_logging(args: argparse.Namespace, config: settings.Settings) -> None:
    from appliance import observability

    level = config.log.level if args.handler is cmd_run else "WARNING"
    observability.configure(level, "json" if args.json else config.log.format)


if __name__ == "__main__":
    sys.exit(main())
