"""The daemon's subsystems, each an async context manager: started on entry, stopped on exit.

`daemon.py` enters the ones its mode needs, in order, into one `AsyncExitStack`, so whatever
way the daemon ends (a signal, a subsystem failing, an error while starting) everything entered
is stopped in reverse order: the listeners close, the worker lets running steps finish within
the grace period and releases the rest of its claimed tasks, the relay ships what is due, the
node name is given up, the pool closes. A subsystem that fails while the daemon runs ends its
`Lifetime` with its error, which becomes the exit code once everything has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from appliance import (
    approvals,
    demo,
    errors,
    health,
    leases,
    lifecycle,
    master_key,
    metrics,
    operations,
    outbox,
    outgoing_webhooks,
    provisioning,
    settings,
    systemd,
    vault,
)
from appliance.agents import actions, loop
from appliance.agents import client as agent_client
from appliance.console import app as console_web
from appliance.console import identity, services
from appliance.db import connection, migrations
from appliance.db import health as dbhealth
from appliance.db import tasks as dbtasks
from appliance.engine import nodes, registry, submission, worker
from appliance.ingress import credentials, guard, port, watch
from appliance.isolation import steps, supervisor
from appliance.mesh import listeners, recheck, tailscale

log = logging.getLogger(__name__)


def raise_open_files_limit() -> None:
    """The soft open-files limit raised to the hard one (the public port's cap depends on it)."""
    soft, hard = guard.raise_open_files_limit()
    log.info(
        "open files: %d (hard limit %d)",
        soft,
        hard,
        extra={"event": "daemon.open_files", "soft": soft, "hard": hard},
    )


# ---- the database ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database(
    config: settings.Settings, readiness: health.Readiness, *, migrate: bool
) -> AsyncIterator[connection.Database]:
    """The pool on a current schema, the master key checked (a recorded key must be there)."""
    async with connection.open_database(config, create_cluster=True) as db:
        async with db.pool.acquire() as conn:
            if migrate:
                await migrations.migrate(conn)
            status = await migrations.status(conn)
        if not status.current:
            names = ", ".join(m.filename for m in status.to_apply)
            raise errors.SchemaError(
                f"the database lacks migrations {names}; run `appliance migrate` "
                "(or start without --no-migrate)"
            )
        readiness.schema_current = True
        readiness.database = True
        readiness.database_reason = ""
        await master_key.check_at_start(db.pool, config)
        yield db


async def verifiers(config: settings.Settings, db: connection.Database) -> credentials.Verifiers:
    """The webhook sources' signing secrets, read once before any work starts (exit 78 when
    one is missing)."""
    return await credentials.read_verifiers(db.pool, config)


@contextlib.asynccontextmanager
async def node_name(
    config: settings.Settings, db: connection.Database
) -> AsyncIterator[nodes.NodeHold]:
    """The node name, held while the worker runs; exit 78 naming the live process holding it."""
    async with nodes.held(
        db.dsn, config.engine.node_name, lease_seconds=config.engine.lease_seconds
    ) as hold:
        yield hold


def database_watch(
    lifetime: lifecycle.Lifetime,
    config: settings.Settings,
    db: connection.Database,
    readiness: health.Readiness,
    engine_health: worker.Health,
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """Readiness and the worker follow Postgres within a second."""
    return lifetime.background("db.watch", _watch_database(config, db, readiness, engine_health))


async def _watch_database(
    config: settings.Settings,
    db: connection.Database,
    readiness: health.Readiness,
    engine_health: worker.Health,
) -> None:
    """An outage is logged once, so is the recovery; the embedded cluster is restarted."""
    interval = config.health.db_check_seconds
    down_since: float | None = None
    clock = asyncio.get_running_loop()
    while True:
        try:
            async with asyncio.timeout(max(0.5, interval * 2)):
                await dbhealth.ping(db.pool)
        except (errors.ApplianceError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, errors.ApplianceError) else "ping timed out"
            if down_since is None:
                down_since = clock.time()
                log.error(
                    "database unavailable, work paused: %s",
                    reason,
                    extra={"event": "db.unavailable"},
                )
            readiness.database, readiness.database_reason = False, reason
            engine_health.set(False, reason)
            if db.cluster is not None and clock.time() - down_since > 2:
                with contextlib.suppress(errors.ApplianceError):
                    await db.cluster.start()
        else:
            if down_since is not None:
                log.info(
                    "database back after %.1fs, work resumed",
                    clock.time() - down_since,
                    extra={"event": "db.recovered"},
                )
                down_since = None
            readiness.database, readiness.database_reason = True, ""
            engine_health.set(True)
        await asyncio.sleep(interval)


def secret_rotation(
    lifetime: lifecycle.Lifetime, config: settings.Settings, db: connection.Database
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """Each secret overdue for rotation announced once per period (outbox `secret.overdue`)."""
    return lifetime.background("vault.overdue", _watch_secret_rotation(config, db))


async def _watch_secret_rotation(config: settings.Settings, db: connection.Database) -> None:
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


def provisioning_watch(
    lifetime: lifecycle.Lifetime,
    config: settings.Settings,
    db: connection.Database,
    console: listeners.Console | None,
    host: str | None,
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None] | None]:
    """First boot (README: First boot): an edge box whose console waits for the tailnet
    consumes a provisioning file, or says once that it waits for one; others have nothing."""
    if console is None or host != settings.TAILNET or config.mode != "edge":
        return contextlib.nullcontext()
    watcher = provisioning.Provisioner(config, db.pool, console, notify=systemd.status)
    return lifetime.background("provisioning", watcher.run())


# ---- work ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay(
    lifetime: lifecycle.Lifetime, config: settings.Settings, db: connection.Database
) -> AsyncIterator[outbox.Relay]:
    """The outbox relay, and the delivery of its outgoing webhooks while it ships (their
    secrets read from the vault first: one missing is exit 78); on exit it ships what is due
    and gives up the relay lock."""
    endpoints = await outgoing_webhooks.read_endpoints(db.pool, config)
    sinks = outbox.build_sinks(config.outbox)
    dispatcher = outgoing_webhooks.Dispatcher(
        db.pool, endpoints, config.outbox, leading=lambda: shipper.holds_lock
    )
    if endpoints:
        sinks.append(outgoing_webhooks.FanOut(db.pool, endpoints, dispatcher.wake))
    shipper = outbox.Relay(db.pool, db.dsn, config.outbox, sinks)
    async with (
        lifetime.background("outbox.relay", shipper.run()),
        lifetime.background("outbox.webhooks", dispatcher.run()),
    ):
        try:
            yield shipper
        finally:
            await shipper.stop()


def approval_sweep(
    lifetime: lifecycle.Lifetime, config: settings.Settings, db: connection.Database
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """Approval requests past their deadline expire (a timeout denies)."""
    return lifetime.background(
        "approvals.sweep", approvals.sweep(db.pool, every=config.approvals.sweep_seconds)
    )


@contextlib.asynccontextmanager
async def task_worker(
    lifetime: lifecycle.Lifetime,
    config: settings.Settings,
    db: connection.Database,
    engine_health: worker.Health,
    node: nodes.NodeHold,
    *,
    config_file: Path | None,
) -> AsyncIterator[worker.Worker]:
    """The engine's worker with its services, once it took back its node's tasks.

    On exit it stops claiming, gives running steps the grace period and releases the tasks it
    still holds, whatever ended the daemon.
    """
    # The vault before any work starts: a wrong master key is exit 78, not a half-started daemon.
    isolation = await _isolation(config, db, config_file)
    model = agent_client.ModelClient(config.model) if config.model.api_key else None
    try:
        work = _worker(config, db, model, engine_health, isolation, node=node)
        runner = asyncio.create_task(work.run(), name="engine.worker")
        lifetime.watch(runner)
        try:
            if not await lifetime.until(work.started):
                lifetime.raise_failure()
            yield work
        finally:
            await work.stop(config.engine.shutdown_grace_seconds)
            await asyncio.wait([runner])
    finally:
        if model is not None:
            await model.close()


async def _isolation(
    config: settings.Settings, db: connection.Database, config_file: Path | None
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
    hidden = supervisor.private_paths(config, config_file, os.environ)
    return supervisor.Supervisor(db.pool, grants, config.isolation, hidden_paths=hidden)


def _worker(
    config: settings.Settings,
    db: connection.Database,
    model: agent_client.ModelClient | None,
    engine_health: worker.Health,
    isolation: supervisor.Supervisor,
    *,
    node: nodes.NodeHold,
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


@contextlib.asynccontextmanager
async def watches(config: settings.Settings, db: connection.Database) -> AsyncIterator[None]:
    """The watched folders: a settled file starts a task."""
    watcher = watch.Watcher(db.pool, registry.registry, config.engine, config.watches)
    await watcher.start()
    try:
        yield
    finally:
        await watcher.stop()


# ---- listeners -------------------------------------------------------------------------------


def ingress(
    config: settings.Settings,
    db: connection.Database,
    verifiers: credentials.Verifiers,
    listener: listeners.Console | None,
) -> contextlib.AbstractAsyncContextManager[port.Ingress]:
    """The one public port (when enabled) and the exposure gate (`ingress.port`)."""
    return port.serving(config, db.pool, registry.registry, verifiers, listener)


def listener_app(
    config: settings.Settings, readiness: health.Readiness, exporter: metrics.Exporter, host: str
) -> tuple[web.Application, console_web.Backend | None]:
    """The app of the listener on `host`, and the holder the console's services are attached
    to once the pool is open (None for a VPC worker, whose listener is its probes' and its
    scraper's only: /healthz, /readyz and /metrics).

    On a loopback listener every console request is the box owner's; on the tailnet, the peer's
    `tailscale whois`; on `console.serve_socket`, the headers of `tailscale serve`. /metrics
    keeps its own rule (`metrics.readers`).
    """
    if config.mode == "worker":
        app = web.Application(middlewares=[health.retry_after])
        health.add_routes(app, readiness)
        app.add_routes(metrics.routes(exporter))
        return app, None
    backend = console_web.Backend()
    access = identity.Access.of(config.console, stored=backend)
    tcp: identity.Resolver
    if _is_loopback(host):
        tcp = identity.LoopbackOwner()
    else:
        tcp = identity.TailnetWhois(
            access, _mesh(config), cache_seconds=config.console.whois_cache_seconds
        )
    unix = identity.ServeHeaders(access) if config.console.serve_socket else None
    app = console_web.build(readiness, backend, console_web.Resolvers(tcp, unix))
    app.add_routes(metrics.routes(exporter))
    return app, backend


def metrics_exporter(config: settings.Settings) -> metrics.Exporter:
    """/metrics' exporter: it answers `appliance_postgres_up 0` until `exporter.reading`."""
    return metrics.Exporter(config.metrics, mesh=_mesh(config))


def console_services(config: settings.Settings, db: connection.Database) -> services.Services:
    """What the console reads and does, on the pool."""
    return operations.build(db.pool, config)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # 'tailnet', or a name
        return False


def _mesh(config: settings.Settings) -> tailscale.Tailscale:
    return tailscale.Tailscale(config.mesh.tailscale, timeout=config.mesh.command_timeout_seconds)


@contextlib.asynccontextmanager
async def console(
    lifetime: lifecycle.Lifetime, config: settings.Settings, app: web.Application, *, host: str
) -> AsyncIterator[listeners.Console]:
    """The console listener on `host` (listeners.health_host): the tailnet addresses (once the
    tailnet is up), 127.0.0.1 with `run --local`, a VPC worker's private address; and on
    `console.serve_socket` if set. A bind the gate refuses ends the lifetime (exit 78)."""
    listener = listeners.Console(
        app,
        host=host,
        port=config.health.port,
        policy=listeners.policy_of(config),
        mesh=_mesh(config),
        on_waiting=systemd.status,
        serve_socket=config.console.serve_socket if config.mode != "worker" else None,
    )
    listener.failed.add_done_callback(_failure_of(lifetime))
    try:
        await listener.start()
        yield listener
    finally:
        await listener.close()


def _failure_of(lifetime: lifecycle.Lifetime) -> Callable[[asyncio.Future[None]], None]:
    def failed(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            lifetime.fail(exc)

    return failed


def exposure_recheck(
    lifetime: lifecycle.Lifetime,
    config: settings.Settings,
    db: connection.Database,
    readiness: health.Readiness,
    listener: listeners.Console,
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """The box's listening sockets re-checked on a timer, once every listener is bound."""
    box = recheck.Recheck.of_daemon(config, db.pool, readiness, listener.current_policy)
    return lifetime.background("exposure.recheck", box.run())


# ---- the demo and --until-idle -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def demo_task(
    lifetime: lifecycle.Lifetime, config: settings.Settings, db: connection.Database, folder: Path
) -> AsyncIterator[int]:
    """The demo task submitted (once per folder content), its result logged when it ends."""
    task_id = await _submit_demo(db, config, folder)
    async with lifetime.background("demo.report", _report_demo(db, task_id)):
        yield task_id


async def _submit_demo(db: connection.Database, config: settings.Settings, folder: Path) -> int:
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


async def _report_demo(db: connection.Database, task_id: int) -> None:
    """Log the demo task's result and step timeline once it ends."""
    while True:
        try:
            task = await dbtasks.get_task(db.pool, task_id)
        except errors.DatabaseUnavailableError:
            task = None  # the outage is logged once, by the db watch
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


def until_idle(
    lifetime: lifecycle.Lifetime, db: connection.Database
) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """--until-idle: the lifetime ends once no task is ready or running."""
    return lifetime.background("daemon.until_idle", _stop_when_idle(lifetime, db))


async def _stop_when_idle(lifetime: lifecycle.Lifetime, db: connection.Database) -> None:
    while True:
        await asyncio.sleep(0.2)
        with contextlib.suppress(errors.DatabaseUnavailableError):
            if await dbhealth.count_pending_work(db.pool) == 0:
                log.info("no work left", extra={"event": "daemon.idle"})
                lifetime.stop()
                return
