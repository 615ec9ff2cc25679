"""The edge: the exposure gate at boot, the public webhook port, the console on the tailnet only."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.ingress import signatures
from tests.support import daemon, netns, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STAND_IN_BIN = Path(__file__).resolve().parents[1] / "support" / "bin"
TAILNET_V4 = "100.104.58.51"  # the stand-in's Self address when Running
TAILNET_V6 = "fd7a:115c:a1e0::ef01:3a34"
CONSOLE_PORT = 8470
INGRESS_PORT = 8471


def ingress_overrides(host: str, port: int) -> dict[str, object]:
    """A public webhook port with one Standard Webhooks source starting test.counted."""
    return {
        "ingress.enabled": True,
        "ingress.host": host,
        "ingress.port": port,
        "ingress.sources": [
            {
                "tenant": "default",
                "name": "shop",
                "secrets": [SECRET],
                "workflow": workflows.COUNTED,
            }
        ],
    }


def signed(body: bytes, delivery_id: str) -> dict[str, str]:
    """Standard Webhooks headers for `body`."""
    now = int(time.time())
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signatures.sign_standard(SECRET, delivery_id, now, body),
        "content-type": "application/json",
    }


class TestGateAtBoot:
    async def test_a_wildcard_console_fails_the_boot_with_78(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A console configured on 0.0.0.0 is refused before ready, naming address and port."""
        result = await daemon.cli(
            "run",
            folder=tmp_path,
            dsn=database_dsn,
            overrides={
                "health.host": "0.0.0.0",  # noqa: S104 - the wildcard the gate must refuse
                "health.port": 0,
                "log.level": "WARNING",
            },
        )

        assert result.code == 78
        assert "0.0.0.0:" in result.stderr
        assert "Traceback" not in result.stderr


class TestWebhookPort:
    async def test_a_signed_delivery_starts_a_task_and_a_forged_one_does_not(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """202 with the task for a signed delivery; 401 and nothing enqueued for a forged one."""
        await workflows.create_step_runs(db)
        overrides = ingress_overrides("127.0.0.1", 0)
        async with daemon.running(database_dsn, tmp_path, name="edge", overrides=overrides) as edge:
            port = int(edge.ready["ingress_port"])
            url = f"http://127.0.0.1:{port}/hooks/default/shop"
            body = json.dumps({"order": 42}).encode()
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=body, headers=signed(body, "msg_1")) as answer:
                    assert answer.status == 202
                    task_id = (await answer.json())["task_id"]
                forged = signed(body, "msg_2") | {"webhook-signature": "v1,Zm9yZ2Vk"}
                async with http.post(url, data=body, headers=forged) as answer:
                    assert answer.status == 401
                    assert "Traceback" not in await answer.text()

            async def finished() -> bool:
                task = await dbtasks.get_task(db, task_id)
                return task is not None and task.state == "succeeded"

            await daemon.wait_until(finished, what="the webhook's task", daemons=[edge])

        assert [t.task_id for t in await dbtasks.list_tasks(db)] == [task_id]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short, world-traversable state dir for an embedded cluster run as `nobody`."""
    folder = Path(tempfile.mkdtemp(prefix="ape"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TestTailnetOnly:
    async def test_in_its_own_namespace_the_console_binds_the_tailnet_address_only(
        self, state_dir: Path, tmp_path: Path
    ) -> None:
        """In a namespace whose tailscale0 holds the node's address, only it and the
        declared webhook port listen, and the box-wide gate passes."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("network namespaces need root and iproute2")
        try:
            space = netns.namespace(f"{TAILNET_V4}/24")
            created = space.__enter__()
        except netns.NamespaceUnavailableError as exc:
            pytest.skip(f"no network namespace here: {exc}")
        try:
            netns.ip(
                "-n", created.name, "addr", "add", f"{TAILNET_V6}/128", "dev", "tailscale0", "nodad"
            )
            env = daemon.environment(
                None,
                tmp_path,
                {
                    "state_dir": str(state_dir),
                    "database.embedded_user": "nobody",
                    "engine.node_name": f"ns{uuid.uuid4().hex[:6]}",
                    "health.port": CONSOLE_PORT,
                    "log.format": "json",
                    "outbox.sinks": ["file"],
                    "outbox.file_path": str(tmp_path / "events.jsonl"),
                    **ingress_overrides("0.0.0.0", INGRESS_PORT),  # noqa: S104 - the public port
                },
            )
            env["PATH"] = f"{STAND_IN_BIN}:{env['PATH']}"
            env["FAKE_TAILSCALE_STATE"] = "Running"
            config = daemon.config_file(tmp_path)
            inside = [
                "ip",
                "netns",
                "exec",
                created.name,
                *daemon.command(),
                "--config",
                str(config),
            ]
            process = await asyncio.create_subprocess_exec(
                *inside,
                "run",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                limit=1 << 20,
            )
            edge = daemon.Daemon(process, "netns", tmp_path / "netns.log")
            try:
                edge.ready = await edge.wait_for_log("daemon.ready", timeout=60)
                check = await asyncio.create_subprocess_exec(
                    *inside,
                    "exposure-check",
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await check.communicate()
            finally:
                await edge.terminate()
        finally:
            space.__exit__(None, None, None)

        report = out.decode()
        assert check.returncode == 0, report + err.decode()
        console = [line for line in report.splitlines() if f":{CONSOLE_PORT} " in line]
        assert sorted(line.split()[2] for line in console) == sorted(
            [f"{TAILNET_V4}:{CONSOLE_PORT}", f"[{TAILNET_V6}]:{CONSOLE_PORT}"]
        )
        webhook = [line for line in report.splitlines() if f":{INGRESS_PORT} " in line]
        assert [line.split()[2] for line in webhook] == [f"0.0.0.0:{INGRESS_PORT}"]
        assert "declared public" in webhook[0]
        assert "127.0.0.1" not in report


class TestWatchedFolder:
    async def test_a_dropped_file_starts_one_task_across_a_restart(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A settled file starts one task; a restart adds none for it but catches up a new one."""
        await workflows.create_step_runs(db)
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        overrides = {
            "watches": [
                {
                    "path": str(inbox),
                    "patterns": ["*.csv"],
                    "workflow": workflows.COUNTED,
                    "settle_seconds": 0.2,
                }
            ]
        }

        async def tasks_for(name: str) -> list[int]:
            return [
                t.task_id
                for t in await dbtasks.list_tasks(db)
                if str(t.input.get("path", "")).endswith(name)
            ]

        async with daemon.running(
            database_dsn, tmp_path, name="first", overrides=overrides
        ) as first:
            (inbox / "a.csv").write_text("id,amount\n1,20\n")
            (inbox / "notes.txt").write_text("not a csv")

            async def one_task() -> bool:
                return len(await tasks_for("a.csv")) == 1

            await daemon.wait_until(one_task, what="a.csv's task", daemons=[first])
        (inbox / "b.csv").write_text("id,amount\n2,30\n")
        async with daemon.running(
            database_dsn, tmp_path, name="second", overrides=overrides
        ) as second:

            async def caught_up() -> bool:
                return len(await tasks_for("b.csv")) == 1

            await daemon.wait_until(caught_up, what="b.csv caught up", daemons=[second])
            await second.wait_for_log("watch.caught_up")

        assert len(await tasks_for("a.csv")) == 1
        assert await tasks_for("notes.txt") == []
