"""The composition root: the order in which the daemon's subsystems start.

The console listener (health first: a console on an address outside the tailnet fails the boot
before the database is touched) → pool and schema → first-boot provisioning (a file consumed,
or a box that waits for one) → database watch, secret rotation → node name → relay, approval
sweep, worker → schedules → watched folders → the public webhook port and the exposure gate →
ready once the console is bound (on the tailnet, which may come up later).
Each subsystem is an async context manager (`subsystems`), entered into one `AsyncExitStack`:
whatever ends the daemon (SIGTERM or SIGINT, a subsystem failing, an error while starting),
everything entered stops in reverse order. On a signal, readiness goes red, the webhook port
closes, the worker stops claiming, running steps get the grace period to finish, unfinished
tasks are released to the queue, the relay ships what is due, the pool closes, the embedded
cluster stops, the console closes last (`/readyz` answers 503 "shutting down" while the worker
drains), and the process exits 0; after a failure, the same teardown, then the failure's exit
code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from pathlib import Path

from appliance import health, lifecycle, plugins, settings, subsystems, systemd
from appliance.engine import registry, worker
from appliance.ingress import scheduler
from appliance.mesh import listeners

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
    plugins.load(config.engine.workflow_modules)
    subsystems.raise_open_files_limit()
    lifetime = lifecycle.Lifetime()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, lifetime.stop)
    readiness = health.Readiness()
    runs_tasks = config.mode != "ingress"
    exporter = subsystems.metrics_exporter(config)
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        console = backend = None
        host = listeners.health_host(config, local=options.local)
        if host is not None:  # a VPC worker listens on nothing unless given a private address
            app, backend = subsystems.listener_app(config, readiness, exporter, host)
            console = await enter(subsystems.console(lifetime, config, app, host=host))
        db = await enter(subsystems.database(config, readiness, migrate=options.migrate))
        await enter(exporter.reading(db.pool))
        if backend is not None:
            backend.attach(subsystems.console_services(config, db))
        await enter(subsystems.provisioning_watch(lifetime, config, db, console, host))
        verifiers = await subsystems.verifiers(config, db)
        engine_health = worker.Health()
        await enter(subsystems.database_watch(lifetime, config, db, readiness, engine_health))
        await enter(subsystems.secret_rotation(lifetime, config, db))
        work = None
        if runs_tasks:
            node = await enter(subsystems.node_name(config, db))
            await enter(subsystems.relay(lifetime, config, db))
            await enter(subsystems.approval_sweep(lifetime, config, db))
            work = await enter(
                subsystems.task_worker(
                    lifetime, config, db, engine_health, node, config_file=options.config_file
                )
            )
        # Every node fires the schedules (exactly once per slot by Postgres, whatever the count).
        await enter(
            scheduler.Scheduler(
                db.pool,
                registry.registry,
                config.engine,
                config.scheduler,
                definitions=config.schedules,
            )
        )
        if config.watches and config.mode == "edge":
            await enter(subsystems.watches(config, db))
        ingress = await enter(subsystems.ingress(config, db, verifiers, console))
        # Readiness waits for the console's listener (the tailnet may come up later).
        if console is None or await lifetime.until(console.bound):
            if console is not None and config.mode != "worker":  # a VPC host is not the box
                await enter(subsystems.exposure_recheck(lifetime, config, db, readiness, console))
            log.info(
                "ready: %s mode, node %s, health on %s",
                config.mode,
                config.engine.node_name,
                ", ".join(f"http://{a}/readyz" for a in console.addresses) if console else "(none)",
                extra={
                    "event": "daemon.ready",
                    "health_port": console.port if console else 0,
                    "ingress_port": ingress.port,
                    "worker": work.worker_id if work else None,
                },
            )
            systemd.ready(f"ready: {config.mode} mode, node {config.engine.node_name}")
            if options.demo_folder is not None:
                await enter(subsystems.demo_task(lifetime, config, db, options.demo_folder))
            if options.until_idle:
                await enter(subsystems.until_idle(lifetime, db))
            await lifetime.wait()
            systemd.stopping()
            log.info("stopping", extra={"event": "daemon.stopping"})
            readiness.draining = True
    log.info("stopped", extra={"event": "daemon.stopped"})
    lifetime.raise_failure()  # the gate's ExposureError, a lost node name: exit 78 after the drain
    return 0
