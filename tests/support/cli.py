"""A world for tests of the `appliance` command: the emptied session database with an
initialised vault, a folder for the command's files, and makers of the things commands name
(tasks, a task that ran, an approval request, a secret), made through the real code paths."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from appliance import approvals, settings, vault
from appliance.db import pool as dbpool
from appliance.engine import registry
from appliance.ingress import schedules
from tests.support import daemon, workflows
from tests.support import engine as support


@dataclasses.dataclass(frozen=True)
class World:
    """The emptied session database with an initialised vault, and a folder for the CLI."""

    db: dbpool.Pool
    dsn: str
    folder: Path
    key_file: Path
    stack: contextlib.AsyncExitStack  # closed by the fixture: what the world started ends
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    async def cli(self, *args: str) -> daemon.Result:
        return await daemon.cli(*args, folder=self.folder, dsn=self.dsn, overrides=self.overrides)

    async def ready_daemon(self) -> daemon.Daemon:
        """A daemon on this world's settings, ready, its health listener at a fixed port (the
        one the world's commands then ask); killed when the world ends."""
        self.overrides["health.port"] = daemon.free_port()
        return await self.stack.enter_async_context(
            daemon.running(self.dsn, self.folder, overrides=self.overrides)
        )

    async def task(self, workflow: str = workflows.COUNTED, task_input: Any = None) -> int:
        return await support.submit(
            self.db,
            registry.registry,
            support.engine_settings(),
            workflow=workflow,
            task_input=task_input,
        )

    async def ran_task(self) -> int:
        """A task run to its end by a worker: it has a step and an attempt."""
        task_id = await self.task(workflows.SLEEPY, {"seconds": 0})
        config = support.engine_settings()
        async with support.running_worker(self.db, self.dsn, config, registry.registry) as run:
            await support.wait_for_state(self.db, task_id, workers=[run])
        return task_id

    async def approval(self) -> int:
        request = await approvals.request(
            self.db,
            tenant_id="default",
            task_id=await self.task(),
            step_key="tool:0:send_email",
            tool="send_email",
            action_class="customer_facing",
            arguments={"to": "someone@example.com"},
            reason="rules[0] (policy version 1)",
            policy_version=1,
            approvers=1,
            timeout=dt.timedelta(hours=1),
        )
        return request.approval_id

    async def schedule(self, name: str = "nightly") -> str:
        """A schedule of the counted workflow, 02:30 in Berlin; returns its name."""
        definition = settings.Schedule(
            name=name,
            cron="30 2 * * *",
            timezone="Europe/Berlin",
            workflow=workflows.COUNTED,
            input={"hold": 0},
        )
        await schedules.add(
            self.db, registry.registry, definition, now=dt.datetime.now(dt.UTC), actor="test"
        )
        return name

    async def secret(self) -> None:
        opened = await vault.open_vault(self.db, self.key_file.read_bytes())
        await vault.set_secret(
            self.db,
            opened,
            tenant_id="default",
            integration="shop",
            workflow="*",
            name="token",
            value=b"s3cret-value",
            actor="test",
        )

    def file(self, name: str, text: str) -> str:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)


@contextlib.asynccontextmanager
async def make(db: dbpool.Pool, dsn: str, folder: Path) -> AsyncIterator[World]:
    """A world on the emptied database: its vault initialised with a new key file in `folder`."""
    key_file = folder / "vault.key"
    await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
    await workflows.create_step_runs(db)
    overrides = {"vault.key_file": str(key_file), "health.port": 0, "health.host": "127.0.0.1"}
    async with contextlib.AsyncExitStack() as stack:
        yield World(db, dsn, folder, key_file, stack, overrides)
