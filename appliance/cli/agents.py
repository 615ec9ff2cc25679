"""CLI commands of the agent side: agents, prices, cost, budgets, documents."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from appliance import errors, settings
from appliance.cli import arguments, output, validation
from appliance.db import connection
from appliance.db import tasks as dbtasks

if TYPE_CHECKING:
    from appliance import master_key


async def cmd_agents_apply(args: argparse.Namespace, config: settings.Settings) -> int:
    """Store an agent file as the agent's next version (unless unchanged)."""
    from appliance.agents import definitions

    definition = definitions.load(args.file)
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        await validation.known_tenant(db.pool, tenant)
        await validation.agent_definition(db.pool, config, definition, args.file)
        version, created = await definitions.apply(
            db.pool, definition, tenant_id=tenant, actor=output.actor()
        )
    if args.json:
        output.emit_json(
            {"agent": definition.name, "tenant_id": tenant, "version": version, "created": created}
        )
    else:
        state = "new version" if created else "unchanged"
        output.out(f"agent {definition.name} (tenant {tenant}): version {version} ({state})")
    return 0


async def cmd_agents_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """A tenant's agents, newest versions."""
    from appliance.db import agents as dbagents

    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        found = await dbagents.list_agents(db.pool, tenant_id=tenant)
        if not found:
            await validation.known_tenant(db.pool, tenant)
    if args.json:
        output.emit_json([output.fields(a) for a in found])
    else:
        output.table(
            [
                (a.name, a.version, a.model, ",".join(a.tools), a.max_tokens, a.created_at)
                for a in found
            ],
            ("agent", "version", "model", "tools", "max tokens", "created"),
        )
    return 0


async def cmd_agents_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """One version of an agent (the newest by default)."""
    from appliance.db import agents as dbagents

    async with connection.open_database(config, pool_size=2) as db:
        agent = await dbagents.get_agent(
            db.pool,
            tenant_id=args.tenant or config.default_tenant,
            name=args.name,
            version=args.version,
        )
    data = output.fields(agent)
    if args.json:
        output.emit_json(data)
    else:
        for key, value in data.items():
            if key != "persona":
                output.field(key, ", ".join(value) if isinstance(value, tuple) else value, width=14)
        output.out("persona")
        output.out(agent.persona)
    return 0


async def cmd_prices_set(args: argparse.Namespace, config: settings.Settings) -> int:
    """Add a price (USD per million tokens) from a date on."""
    from appliance.agents import costs

    start = args.effective_from or dt.datetime.now(dt.UTC).date()
    async with connection.open_database(config, pool_size=2) as db:
        price = await costs.set_price(
            db.pool,
            model=args.model,
            category=args.category,
            usd_per_mtok=args.usd_per_mtok,
            effective_from=start,
        )
    if args.json:
        output.emit_json(output.fields(price))
    else:
        output.out(f"{price.model} {price.category}: ${price.usd_per_mtok}/MTok")
        output.out(f"from {price.effective_from}")
    return 0


async def cmd_prices_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """Every price row (history included)."""
    from appliance.agents import costs

    async with connection.open_database(config, pool_size=2) as db:
        found = await costs.list_prices(db.pool, model=args.model)
    if args.json:
        output.emit_json([output.fields(p) for p in found])
    else:
        output.table(
            [(p.model, p.category, p.effective_from, p.usd_per_mtok, p.source) for p in found],
            ("model", "category", "from", "usd/mtok", "source"),
        )
    return 0


async def cmd_cost(args: argparse.Namespace, config: settings.Settings) -> int:
    """The cost ledger summed by tenant, agent, model, day or task, with the cache saving."""
    from appliance.agents import costs

    async with connection.open_database(config, pool_size=2) as db:
        rows = await costs.cost_report(db.pool, by=args.by, since=args.since, tenant_id=args.tenant)
        if not rows and args.tenant is not None:
            await validation.known_tenant(db.pool, args.tenant)
    if args.json:
        output.emit_json([output.fields(r) for r in rows])
        return 0
    key: Callable[[Any], Any] = {
        "tenant": lambda r: r.tenant_id,
        "agent": lambda r: f"{r.agent} v{r.agent_version}",
        "model": lambda r: r.model,
        "day": lambda r: r.day,
        "task": lambda r: r.task_id,
        "all": lambda r: "all",
    }[args.by]
    output.table(
        [
            (
                key(r),
                r.calls,
                r.input_tokens,
                r.cache_creation_input_tokens,
                r.cache_read_input_tokens,
                r.output_tokens,
                f"${r.cost_usd:.6f}",
                f"${r.saving_usd:.6f}",
                f"{r.saving_fraction:.0%}" if r.saving_fraction is not None else "-",
            )
            for r in rows
        ],
        (
            args.by,
            "calls",
            "input",
            "cache write",
            "cache read",
            "output",
            "cost",
            "saved",
            "saved %",
        ),
    )
    return 0


async def cmd_docs_add(args: argparse.Namespace, config: settings.Settings) -> int:
    """Ingest files and folders into a collection (a changed file replaces its passages).

    A named path that is missing (or not a file or folder) stops it before anything is read:
    exit 65. When every file was skipped, nothing is ingested: exit 65 saying what and why."""
    from appliance.retrieval import documents

    for path in args.paths:
        if not path.is_file() and not path.is_dir():
            what = "not a file or folder" if path.exists() else "no such file or folder"
            raise errors.InputError(f"docs add {path}: {what}")
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        report = await documents.add_documents(
            db.pool, tenant_id=tenant, collection=args.collection, paths=args.paths
        )
    stored = report.added + report.replaced + report.embedded + report.unchanged
    if args.json:
        output.emit_json(output.fields(report))
    elif stored:
        output.out(
            f"collection {args.collection} (tenant {tenant}): {len(report.added)} added, "
            f"{len(report.replaced)} replaced, {len(report.unchanged)} unchanged, "
            f"{len(report.skipped)} skipped; {report.passages} passages written"
        )
        for source, reason in report.skipped:
            output.err(f"skipped {source}: {reason}")
    if not stored:
        shown = "; ".join(f"{source}: {reason}" for source, reason in report.skipped[:5])
        more = len(report.skipped) - 5
        raise errors.InputError(
            f"nothing ingested into collection {args.collection}: {shown}"
            + (f" and {more} more (--json lists them)" if more > 0 else "")
        )
    return 0


async def cmd_policy_apply(args: argparse.Namespace, config: settings.Settings) -> int:
    """Store a policy document as the tenant's next version (unless unchanged)."""
    from appliance.db import policies

    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.InputError(f"{args.file}: cannot be read: {exc.strerror}") from exc
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        version, created = await policies.apply_policy(
            db.pool, tenant_id=tenant, document_text=text, actor=output.actor()
        )
    if args.json:
        output.emit_json({"tenant": tenant, "version": version, "created": created})
    else:
        state = "new version" if created else "unchanged"
        output.out(f"policy of tenant {tenant}: version {version} ({state})")
    return 0


async def cmd_policy_show(args: argparse.Namespace, config: settings.Settings) -> int:
    """A version of the tenant's policy (the newest by default), one setting a line."""
    from appliance.db import policies

    async with connection.open_database(config, pool_size=2) as db:
        found = await policies.get_policy(
            db.pool, tenant_id=args.tenant or config.default_tenant, version=args.version
        )
    if args.json:
        output.emit_json(found.model_dump(mode="json"))
        return 0
    output.out(f"# policy of tenant {found.tenant_id}, version {found.version}")
    output.out(f"# applied by {found.created_by} at {output.cell(found.created_at)}")
    for line in found.document.render():
        output.out(line)
    return 0


async def cmd_policy_diff(args: argparse.Namespace, config: settings.Settings) -> int:
    """What changed between two versions of the tenant's policy."""
    from appliance.db import policies

    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        first = await policies.get_policy(db.pool, tenant_id=tenant, version=args.a)
        second = await policies.get_policy(db.pool, tenant_id=tenant, version=args.b)
    diff = policies.diff_policies(first, second)
    if args.json:
        output.emit_json(
            {"tenant_id": tenant, "from": args.a, "to": args.b, "diff": diff.splitlines()}
        )
    else:
        output.out(diff or "no difference")
    return 0


async def init_vault(
    config: settings.Settings, pool: Any, *, replace_lost_key: bool
) -> master_key.Initialised:
    """`init`: register the configured key (creating a key file while none is recorded), or
    replace a lost one; never writes a key over an initialised vault otherwise."""
    from appliance import master_key

    return await master_key.initialise(
        pool, config, replace_lost_key=replace_lost_key, actor=output.actor()
    )


def _secret_value(args: argparse.Namespace) -> bytes:
    from appliance import vault

    if args.from_file is not None:
        return vault.read_value("file", args.from_file)
    return vault.read_value("stdin")


def _done(args: argparse.Namespace, tenant: str, result: str) -> None:
    """What a secrets command did to which secret (never its value)."""
    scope = {
        "tenant_id": tenant,
        "integration": args.integration,
        "workflow": args.workflow,
        "name": args.name,
    }
    if args.json:
        output.emit_json({**scope, "result": result})
    else:
        output.out(f"secret {'/'.join(scope.values())}: {result}")


async def cmd_secrets_set(args: argparse.Namespace, config: settings.Settings) -> int:
    """Store a secret (the value from stdin or --from-file, never the command line)."""
    from appliance import master_key, vault

    value = _secret_value(args)
    tenant = args.tenant or config.default_tenant
    every = dt.timedelta(days=args.rotate_every_days) if args.rotate_every_days else None
    async with connection.open_database(config, pool_size=2) as db:
        opened = await master_key.open_configured(db.pool, config)
        created = await vault.set_secret(
            db.pool,
            opened,
            tenant_id=tenant,
            integration=args.integration,
            workflow=args.workflow,
            name=args.name,
            value=value,
            rotate_every=every,
            actor=output.actor(),
        )
    _done(args, tenant, "created" if created else "replaced")
    return 0


async def cmd_secrets_rotate(args: argparse.Namespace, config: settings.Settings) -> int:
    """Give a secret a new value (stdin or --from-file); its rotation clock restarts."""
    from appliance import master_key, vault

    value = _secret_value(args)
    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        opened = await master_key.open_configured(db.pool, config)
        await vault.rotate_secret(
            db.pool,
            opened,
            tenant_id=tenant,
            integration=args.integration,
            workflow=args.workflow,
            name=args.name,
            value=value,
            actor=output.actor(),
        )
    _done(args, tenant, "rotated")
    return 0


async def cmd_secrets_delete(args: argparse.Namespace, config: settings.Settings) -> int:
    """Delete a secret."""
    from appliance import vault

    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        await vault.delete_secret(
            db.pool,
            tenant_id=tenant,
            integration=args.integration,
            workflow=args.workflow,
            name=args.name,
            actor=output.actor(),
        )
    _done(args, tenant, "deleted")
    return 0


async def cmd_secrets_list(args: argparse.Namespace, config: settings.Settings) -> int:
    """A tenant's secrets: scope, key version, rotation (never the values)."""
    from appliance import vault

    tenant = args.tenant or config.default_tenant
    async with connection.open_database(config, pool_size=2) as db:
        found = await vault.list_secrets(db.pool, tenant_id=tenant)
        if not found:
            await validation.known_tenant(db.pool, tenant)
    if args.json:
        output.emit_json([output.fields(s) for s in found])
        return 0
    output.table(
        [(s.integration, s.workflow, s.name, s.key_version, s.rotated_at, s.due_at) for s in found],
        ("integration", "workflow", "name", "key", "rotated", "due"),
    )
    return 0


async def cmd_budgets_set(args: argparse.Namespace, config: settings.Settings) -> int:
    """Set a tenant's monthly budget or a task's budget; waiting tasks resume if it allows."""
    from appliance.agents import costs

    usd = args.usd
    tenant = args.tenant or config.default_tenant
    scope: Literal["month", "task"] = "task" if args.task is not None or args.per_task else "month"
    async with connection.open_database(config, pool_size=2) as db:
        budget = await costs.set_budget(
            db.pool,
            tenant_id=tenant,
            scope=scope,
            usd_limit=usd,
            actor=output.actor(),
            task_id=args.task,
        )
        resumed = await dbtasks.resume_waiting(
            db.pool, tenant_id=tenant, reason_prefix="budget:", actor=output.actor()
        )
    if args.json:
        output.emit_json({**output.fields(budget), "resumed_tasks": resumed})
    else:
        which = (
            f"task {args.task}"
            if args.task is not None
            else ("each task" if scope == "task" else "each month")
        )
        output.out(f"tenant {tenant}: ${usd} for {which}; {resumed} waiting task(s) resumed")
    return 0


def add_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """agents, prices, cost, budgets, docs."""
    agents = sub.add_parser("agents", help="agent definitions").add_subparsers(
        dest="agents_command", required=True, parser_class=parser_class
    )
    apply = add("apply", cmd_agents_apply, "store an agent file as its next version", agents)
    apply.add_argument("file", type=Path)
    apply.add_argument("--tenant")
    agents_list = add("list", cmd_agents_list, "a tenant's agents", agents)
    agents_list.add_argument("--tenant")
    show = add("show", cmd_agents_show, "one version of an agent", agents)
    show.add_argument("name")
    show.add_argument("--version", type=arguments.version)
    show.add_argument("--tenant")

    prices = sub.add_parser("prices", help="model prices").add_subparsers(
        dest="prices_command", required=True, parser_class=parser_class
    )
    price_set = add("set", cmd_prices_set, "add a price from a date on", prices)
    price_set.add_argument("model")
    price_set.add_argument(
        "category", choices=["input", "cache_write_5m", "cache_write_1h", "cache_read", "output"]
    )
    price_set.add_argument("usd_per_mtok", type=arguments.usd, help="USD per million tokens")
    price_set.add_argument("--from", dest="effective_from", type=arguments.day)
    price_list = add("list", cmd_prices_list, "price rows, history included", prices)
    price_list.add_argument("--model")

    cost = add("cost", cmd_cost, "the cost ledger, summed, with the cache saving")
    cost.add_argument(
        "--by", choices=["tenant", "agent", "model", "day", "task", "all"], default="tenant"
    )
    cost.add_argument("--since", type=arguments.day, help="from this UTC date on")
    cost.add_argument("--tenant")

    budgets = sub.add_parser("budgets", help="budgets").add_subparsers(
        dest="budgets_command", required=True, parser_class=parser_class
    )
    budget_set = add("set", cmd_budgets_set, "set a budget (monthly by default)", budgets)
    budget_set.add_argument("usd", type=arguments.usd, help="USD")
    budget_set.add_argument("--tenant")
    budget_set.add_argument("--task", type=arguments.identifier, help="a budget for this task")
    budget_set.add_argument("--per-task", action="store_true", help="a budget for each task")

    policy = sub.add_parser("policy", help="what agents may do alone").add_subparsers(
        dest="policy_command", required=True, parser_class=parser_class
    )
    policy_apply = add("apply", cmd_policy_apply, "store a policy file as a new version", policy)
    policy_apply.add_argument("file", type=Path)
    policy_apply.add_argument("--tenant")
    policy_show = add("show", cmd_policy_show, "a version of the policy", policy)
    policy_show.add_argument("--version", type=arguments.version)
    policy_show.add_argument("--tenant")
    policy_diff = add("diff", cmd_policy_diff, "what changed between two versions", policy)
    policy_diff.add_argument("a", type=arguments.version)
    policy_diff.add_argument("b", type=arguments.version)
    policy_diff.add_argument("--tenant")

    _add_secret_commands(sub, add, parser_class)

    docs = sub.add_parser("docs", help="documents for retrieval").add_subparsers(
        dest="docs_command", required=True, parser_class=parser_class
    )
    docs_add = add("add", cmd_docs_add, "ingest files and folders into a collection", docs)
    docs_add.add_argument("paths", nargs="+", type=Path)
    docs_add.add_argument("--collection", default="default")
    docs_add.add_argument("--tenant")


def _add_secret_commands(
    sub: Any, add: Callable[..., Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """secrets set|rotate|delete|list."""
    secrets = sub.add_parser("secrets", help="the encrypted vault").add_subparsers(
        dest="secrets_command", required=True, parser_class=parser_class
    )
    for name, handler, text in (
        ("set", cmd_secrets_set, "store a secret (value from stdin or --from-file)"),
        ("rotate", cmd_secrets_rotate, "give a secret a new value"),
        ("delete", cmd_secrets_delete, "delete a secret"),
    ):
        command = add(name, handler, text, secrets)
        command.add_argument("integration")
        command.add_argument("name")
        command.add_argument("--workflow", default="*", help="one workflow, or * (default)")
        command.add_argument("--tenant")
        if name != "delete":
            command.add_argument("--from-file", type=Path, help="read the value from this file")
        if name == "set":
            command.add_argument(
                "--rotate-every-days", type=arguments.days, help="rotation schedule"
            )
    secrets_list = add("list", cmd_secrets_list, "a tenant's secrets, never their values", secrets)
    secrets_list.add_argument("--tenant")
