"""The composition root: config → database → schema → engine, relay → health → ready.

On SIGTERM (or SIGINT): readiness goes red, the worker stops claiming, running steps get the
grace period to finish, unfinished tasks are released to the queue, the relay stops, the pool
closes, the embedded cluster stops, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from appliance import (
    approvals,
    demo,
    errors,
    health,
    leases,
    master_key,
    outbox,
    settings,
    systemd,
    vault,
)
from appliance.agents import actions, loop
from appliance.agents import client as agent_client
from appliance.db import connection, migrations
from appliance.db import health as dbhealth
from appliance.db import tasks as dbtasks
from appliance.engine import nodes, registry, submission, worker
from appliance.ingress import credentials, guard, public, scheduler, watch, webhooks
from appliance.ingress import intake as ingress_intake
from appliance.isolation import steps, supervisor
from appliance.mesh import exposure, listeners, recheck, tailscale

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options:
    migrate: bool = True
    demo_folder: Path | None = None
    until_idle: bool = False
    local: bool = False
    config_file: Path | None = None  # the file the settings were read from, hidden from tools


async def run(config: settings.Settings, options: Options) -> int:
    """Run the daemon until a signal (or, with until_idle, until no work is left)."""
    async with systemd.watchdog():
        return await _run(config, options)


async def _run(config: settings.Settings, options: Options) -> int:
    registry.import_modules(config.engine.workflow_modules)
    soft, hard = guard.raise_open_files_limit()
    log.info(
        "open files: %d (hard limit %d)",
        soft,
        hard,
        extra={"event": "daemon.open_files", "soft": soft, "hard": hard},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    readiness = health.Readiness()
    host = "127.0.0.1" if options.local else config.health.host
    mesh = tailscale.Tailscale(config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds)
    console = None
    if config.mode != "worker":  # a VPC worker listens on nothing
        console = listeners.Console(
            health.build_app(readiness),
            host=host,
            port=config.health.port,
            policy=listeners.policy_of(config),
            mesh=mesh,
            on_waiting=systemd.status,
        )
        await console.start()
    try:
        async with connection.open_database(config, create_cluster=True) as db:
            await _prepare_schema(db, options, readiness)
            await master_key.check_at_start(db.pool, config)  # a recorded key must be there
            # The signing secrets in the vault, before any work starts: a missing one is exit 78.
            verifiers = await credentials.read_verifiers(db.pool, config)
            async with (
                _node_name(config, db) as node,
                scheduler.Scheduler(
                    db.pool,
                    registry.registry,
                    config.engine,
                    config.scheduler,
                    definitions=config.schedules,
                ),
            ):
                return await _serve(
                    config=config,
                    options=options,
                    db=db,
                    readiness=readiness,
                    stop=stop,
                    console=console,
                    verifiers=verifiers,
                    node=node,
                )
    finally:
        if console is not None:
            await console.close()


@contextlib.asynccontextmanager
async def _node_name(
    config: settings.Settings, db: connection.Database
) -> AsyncIterator[nodes.NodeHold | None]:
    """The node name, held while the worker runs; exit 78 naming the live process holding it."""
    if config.mode == "ingress":  # no worker: nothing to take back, no name to hold
        yield None
        return
    async with nodes.held(
        db.dsn, config.engine.node_name, lease_seconds=config.engine.lease_seconds
    ) as hold:
        yield hold


async def _until_bound(console: listeners.Console | None, stop: asyncio.Event) -> None:
    """Readiness waits for the console's listener (the tailnet may come up later)."""
    if console is None:
        return
    bound = asyncio.create_task(console.bound.wait())
    stopped = asyncio.create_task(stop.wait())
    waits: list[asyncio.Future[Any]] = [bound, stopped, console.failed]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        bound.cancel()
        stopped.cancel()
    if console.failed.done():
        console.failed.result()


def _recheck_exposure(
    config: settings.Settings,
    db: connection.Database,
    readiness: health.Readiness,
    console: listeners.Console | None,
) -> list[asyncio.Task[None]]:
    """The box's listening sockets re-checked on a timer, once every listener is bound."""
    if console is None:
        return []
    box = recheck.Recheck.of_daemon(config, db.pool, readiness, console.current_policy)
    return [asyncio.create_task(box.run(), name="exposure.recheck")]


async def _prepare_schema(
    db: connection.Database, options: Options, readiness: health.Readiness
) -> None:
    async with db.pool.acquire() as conn:
        if options.migrate:
            await migrations.migrate(conn)
        status = await migrations.status(conn)
    if not status.current:
        names = ", ".join(m.filename for m in status.pending)
        raise errors.SchemaError(
            f"the database lacks migrations {names}; run `appliance migrate` "
            "(or start without --no-migrate)"
        )
    readiness.schema_current = True
    readiness.database = True
    readiness.database_reason = ""


async def _serve(
    *,
    config: settings.Settings,
    options: Options,
    db: connection.Database,
    readiness: health.Readiness,
    stop: asyncio.Event,
    console: listeners.Console | None,
    verifiers: credentials.Verifiers,
    node: nodes.NodeHold | None,
) -> int:
    # The vault before any work starts: a wrong master key is exit 78, not a half-started daemon.
    isolation = await _isolation(config, db, options) if config.mode != "ingress" else None
    model = agent_client.ModelClient(config.model) if config.model.api_key else None
    engine_health = worker.Health()
    background = [
        asyncio.create_task(_watch_database(config, db, readiness, engine_health), name="db.watch"),
        asyncio.create_task(_watch_secret_rotation(config, db), name="vault.overdue"),
    ]
    work: worker.Worker | None = None
    relay: outbox.Relay | None = None
    if isolation is not None:
        work = _worker(config, db, model, engine_health, isolation, node=node)
        relay = outbox.Relay(db.pool, db.dsn, config.outbox, outbox.build_sinks(config.outbox))
        background.append(asyncio.create_task(work.run(), name="engine.worker"))
        background.append(asyncio.create_task(relay.run(), name="outbox.relay"))
        sweep = approvals.sweep(db.pool, every=config.approvals.sweep_seconds, stop=stop)
        background.append(asyncio.create_task(sweep, name="approvals.sweep"))
        await work.started.wait()
    watcher: watch.Watcher | None = None
    if config.watches and config.mode == "edge":
        watcher = watch.Watcher(db.pool, registry.registry, config.engine, config.watches)
        await watcher.start()
    public = await _start_ingress(config, db, console, verifiers)
    await _until_bound(console, stop)
    background.extend(_recheck_exposure(config, db, readiness, console))
    log.info(
        "ready: %s mode, node %s, health on %s",
        config.mode,
        config.engine.node_name,
        ", ".join(f"http://{a}/readyz" for a in console.addresses) if console else "(none)",
        extra={
            "event": "daemon.ready",
            "health_port": console.port if console else 0,
            "ingress_port": public.port if public else 0,
            "worker": work.worker_id if work else None,
        },
    )
    systemd.ready(f"ready: {config.mode} mode, node {config.engine.node_name}")
    if options.demo_folder is not None:
        demo_task = await _submit_demo(db, config, options.demo_folder)
        background.append(asyncio.create_task(_report_demo(db, demo_task, stop)))
    if options.until_idle:
        background.append(asyncio.create_task(_stop_when_idle(db, stop)))
    await _until_stopped(stop, console, node)
    systemd.stopping()
    log.info("stopping", extra={"event": "daemon.stopping"})
    readiness.draining = True
    if public is not None:
        await public.close()
    if watcher is not None:
        await watcher.stop()
    if work is not None and relay is not None:
        await work.stop(config.engine.shutdown_grace_seconds)
        await relay.stop()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if model is not None:
        await model.close()
    log.info("stopped", extra={"event": "daemon.stopped"})
    _raise_why_stopped(console, node)
    return 0


async def _until_stopped(
    stop: asyncio.Event, console: listeners.Console | None, node: nodes.NodeHold | None
) -> None:
    """Until a signal, the exposure gate failing, or another process taking the node name."""
    waits = [asyncio.create_task(stop.wait())]
    if node is not None:
        waits.append(asyncio.create_task(node.lost.wait()))
    ends: list[asyncio.Future[Any]] = [*waits]
    if console is not None:
        ends.append(console.failed)
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()


def _raise_why_stopped(console: listeners.Console | None, node: nodes.NodeHold | None) -> None:
    """Exit 78 after the drain when the daemon stopped for the gate or its node name."""
    if console is not None and console.failed.done():
        console.failed.result()  # the gate's ExposureError
    if node is not None and node.loss is not None:
        raise node.loss


async def _isolation(
    config: settings.Settings, db: connection.Database, options: Options
) -> supervisor.Supervisor:
    """Tool calls and isolated steps, each in its own confined process with leases from the
    vault; without a vault (not initialised, no key yet) they run but cannot lease secrets."""
    opened: vault.Vault | None
    try:
        opened = await vault.open_vault(db.pool, vault.configured_key(config))
    except (vault.VaultNotInitialisedError, vault.MasterKeyMissingError) as exc:
        log.warning("tools get no secrets: %s", exc, extra={"event": "isolation.no_vault"})
        opened = None
    grants = leases.Leases(db.pool, opened, ttl_seconds=config.isolation.lease_ttl_seconds)
    hidden = supervisor.private_paths(config, options.config_file, os.environ)
    return supervisor.Supervisor(db.pool, grants, config.isolation, hidden_paths=hidden)


def _worker(
    config: settings.Settings,
    db: connection.Database,
    model: agent_client.ModelClient | None,
    engine_health: worker.Health,
    isolation: supervisor.Supervisor,
    *,
    node: nodes.NodeHold | None,
) -> worker.Worker:
    """The engine's worker; agent tasks only where a model key is configured."""
    services: dict[str, Any] = {steps.SERVICE: isolation}
    workflows = registry.registry
    if model is not None:
        tool_actions = actions.Actions(db.pool, isolation, config.approvals)
        services[loop.SERVICE] = loop.Runtime(db.pool, model, config.model, tool_actions)
    else:
        workflows = workflows.without([loop.WORKFLOW])
        log.info(
            "model.api_key is not set: agent tasks stay queued for a daemon that has one",
            extra={"event": "agents.disabled"},
        )
    return worker.Worker(
        db.pool,
        db.dsn,
        config.engine,
        workflows,
        health=engine_health,
        services=services,
        node=node,
    )


@dataclasses.dataclass
class _Public:
    """The public webhook listener and the intake behind it."""

    listener: public.Listener
    intake: ingress_intake.DurableIntake

    @property
    def port(self) -> int:
        return self.listener.port

    async def close(self) -> None:
        await self.listener.close()
        await self.intake.close()


async def _start_ingress(
    config: settings.Settings,
    db: connection.Database,
    console: listeners.Console | None,
    verifiers: credentials.Verifiers,
) -> _Public | None:
    """The one public port, then the exposure gate over everything this process listens on."""
    if not config.ingress.enabled:
        if config.mode == "ingress":
            raise errors.ConfigError(
                "mode = 'ingress' serves only the webhook port: set ingress.enabled and sources"
            )
        exposure.gate_own_sockets(listeners.policy_of(config))
        return None
    intake = ingress_intake.DurableIntake(db.pool, registry.registry, config.engine)
    intake.check(config.ingress.sources)
    limits = _public_limits(config)
    endpoint = webhooks.Endpoint(config.ingress, intake, verifiers=verifiers)
    try:
        listener = await public.listen(
            endpoint, host=config.ingress.host, port=config.ingress.port, limits=limits
        )
    except OSError as exc:
        await intake.close()
        raise errors.ConfigError(
            f"ingress: cannot listen on {config.ingress.host}:{config.ingress.port}: {exc.strerror}"
        ) from exc
    public_port = _Public(listener, intake)
    public_sockets = listeners.own_public_sockets(listener.addresses)
    policy = listeners.policy_of(config, public_sockets)
    if console is not None:
        console.policy = policy
    try:
        exposure.gate_own_sockets(policy)
    except errors.ConfigError:
        await public_port.close()
        raise
    listeners.record_public_sockets(config.state_dir, public_sockets)
    log.info(
        "webhooks on %s:%d (%d source(s), at most %d connections, %d per address)",
        config.ingress.host,
        public_port.port,
        len(config.ingress.sources),
        limits.connections,
        limits.per_address,
        extra={
            "event": "ingress.listening",
            "port": public_port.port,
            "max_connections": limits.connections,
            "max_connections_per_address": limits.per_address,
        },
    )
    return public_port


def _public_limits(config: settings.Settings) -> public.Limits:
    """The public port's limits, its connection cap fitted under the open-files limit."""
    configured = config.ingress.max_connections
    cap, limit = guard.fitted_connection_cap(configured, pool_max=config.database.pool_max)
    if cap < guard.MINIMUM_CONNECTIONS:
        raise errors.ConfigError(
            f"ingress: the open-files limit ({limit}) leaves room for {cap} public connections; "
            "raise it (LimitNOFILE= in the unit, or ulimit -n)"
        )
    if cap < configured:
        log.warning(
            "ingress.max_connections lowered from %d to %d to fit the open-files limit (%d)",
            configured,
            cap,
            limit,
            extra={"event": "ingress.connections_lowered", "max_connections": cap},
        )
    return public.Limits.of(config.ingress, connections=cap)


async def _watch_database(
    config: settings.Settings,
    db: connection.Database,
    readiness: health.Readiness,
    engine_health: worker.Health,
) -> None:
    """Readiness follows Postgres within a second; an outage is logged once, so is recovery."""
    interval = config.health.db_check_seconds
    down_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout(max(0.5, interval * 2)):
                await dbhealth.ping(db.pool)
        except (errors.ApplianceError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, errors.ApplianceError) else "ping timed out"
            if down_since is None:
                down_since = loop.time()
                log.error(
                    "database unavailable, work paused: %s",
                    reason,
                    extra={"event": "db.unavailable"},
                )
            readiness.database, readiness.database_reason = False, reason
            engine_health.set(False, reason)
            if db.cluster is not None and loop.time() - down_since > 2:
                with contextlib.suppress(errors.ApplianceError):
                    await db.cluster.start()
        else:
            if down_since is not None:
                log.info(
                    "database back after %.1fs, work resumed",
                    loop.time() - down_since,
                    extra={"event": "db.recovered"},
                )
                down_since = None
            readiness.database, readiness.database_reason = True, ""
            engine_health.set(True)
        await asyncio.sleep(interval)


async def _watch_secret_rotation(config: settings.Settings, db: connection.Database) -> None:
    """Announce each secret overdue for rotation once per period (outbox event secret.overdue)."""
    while True:
        try:
            await vault.announce_overdue_secrets(db.pool)
        except errors.DatabaseUnavailableError:
            pass  # the outage is logged once, by the db watch; the next round catches up
        except errors.ApplianceError as exc:
            log.warning(
                "overdue secrets not checked: %s", exc, extra={"event": "vault.overdue_unchecked"}
            )
        await asyncio.sleep(config.vault.overdue_check_seconds)


async def _submit_demo(db: connection.Database, config: settings.Settings, folder: Path) -> int:
    """Submit the demo task, once per folder content (the same content gives the same task)."""
    folder = folder.resolve()
    listing = demo.list_files(str(folder))
    key = "demo:" + hashlib.sha256(repr((str(folder), listing)).encode()).hexdigest()[:16]
    submitted = await submission.submit(
        db.pool,
        registry.registry,
        config.engine,
        tenant_id=config.default_tenant,
        workflow=demo.WORKFLOW,
        task_input={"folder": str(folder)},
        idempotency_key=key,
        actor="daemon:demo",
    )
    log.info(
        "demo task %d %s for %s",
        submitted.task_id,
        "submitted" if submitted.created else "already known",
        folder,
        extra={"event": "demo.submitted", "task_id": submitted.task_id},
    )
    return submitted.task_id


async def _report_demo(db: connection.Database, task_id: int, stop: asyncio.Event) -> None:
    """Log the demo task's result and step timeline once it ends."""
    while not stop.is_set():
        task = await dbtasks.get_task(db.pool, task_id)
        if task is not None and task.state in ("succeeded", "failed", "cancelled"):
            steps = await dbtasks.list_steps(db.pool, task.task_id)
            timeline = ", ".join(f"{s.name} {s.duration_ms:.1f} ms" for s in steps)
            log.info(
                "demo task %d %s (%s): %s",
                task.task_id,
                task.state,
                timeline,
                json.dumps(task.output) if task.state == "succeeded" else task.error,
                extra={
                    "event": "demo.finished",
                    "task_id": task.task_id,
                    "state": task.state,
                    "steps": [f"{s.name} {s.duration_ms:.1f} ms" for s in steps],
                },
            )
            return
        await asyncio.sleep(0.1)


async def _stop_when_idle(db: connection.Database, stop: asyncio.Event) -> None:
    """--until-idle: stop once no task is ready or running."""
    while not stop.is_set():
        await asyncio.sleep(0.2)
        with contextlib.suppress(errors.DatabaseUnavailableError):
            if await dbhealth.count_pending_work(db.pool) == 0:
                log.info("no work left", extra={"event": "daemon.idle"})
                stop.set()
