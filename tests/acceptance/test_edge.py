"""The edge: the exposure gate at boot, the public webhook port, the console on the tailnet only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance import settings
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import registry, submission
from appliance.ingress import signatures
from tests.support import daemon, listening, netns, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STAND_IN_BIN = Path(__file__).resolve().parents[1] / "support" / "bin"
TAILNET_V4 = "100.104.58.51"  # the stand-in's Self address when Running
TAILNET_V6 = "fd7a:115c:a1e0::ef01:3a34"
CONSOLE_PORT = 8470
INGRESS_PORT = 8471
ANY4 = "0.0.0.0"  # noqa: S104 - the public port's wildcard, bound only inside a namespace
RECHECK_SECONDS = 0.2


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


@pytest.fixture
def namespace() -> Iterator[netns.Namespace]:
    """A fresh namespace: `tailscale0` = 100.100.1.2/24, the box's LAN on `eth0`."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    try:
        with netns.namespace() as created:
            yield created
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(f"no network namespace here: {exc}")


async def run_inside(
    created: netns.Namespace, folder: Path, overrides: Mapping[str, Any], *args: str
) -> daemon.Result:
    """`appliance ARGS` run to its end inside the namespace."""
    env = daemon.environment(None, folder, overrides)
    process = await asyncio.create_subprocess_exec(
        *created.command(*daemon.command(), "--config", str(daemon.config_file(folder)), *args),
        env=env,
        cwd=str(folder),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(daemon.EXIT_SECONDS * 3):
        stdout, stderr = await process.communicate()
    return daemon.Result(await process.wait(), stdout.decode(), stderr.decode())


class TestGateAtBoot:
    @pytest.mark.parametrize(
        ("host", "named"),
        [
            (netns.LAN_V4, f"tcp {netns.LAN_V4}:{CONSOLE_PORT}"),
            (netns.LAN_V6, f"tcp6 [{netns.LAN_V6}]:{CONSOLE_PORT}"),
            ("::", f"tcp6 [::]:{CONSOLE_PORT} (IPv6 only)"),
        ],
        ids=["lan-ipv4", "lan-ipv6", "ipv6-wildcard"],
    )
    async def test_a_console_on_the_box_lan_address_fails_the_boot_with_78(
        self, namespace: netns.Namespace, tmp_path: Path, host: str, named: str
    ) -> None:
        """The console bound to one non-tailnet address of the box: exit 78 before ready."""
        overrides = {"health.host": host, "health.port": CONSOLE_PORT, "log.level": "WARNING"}
        result = await run_inside(namespace, tmp_path, overrides, "run")
        assert result.code == 78, result.stderr
        assert named in result.stderr
        assert "Traceback" not in result.stderr

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


def outside_overrides(folder: Path) -> dict[str, Any]:
    """A daemon inside a namespace: console on its loopback, the public port on 0.0.0.0,
    the box re-checked every 0.2 s, the listening workflow known."""
    (folder / "state").mkdir(exist_ok=True)
    return {
        "engine.node_name": f"ns{uuid.uuid4().hex[:6]}",
        "engine.workflow_modules": [daemon.WORKFLOW_MODULE, listening.__name__],
        "health.host": "127.0.0.1",
        "health.port": CONSOLE_PORT,
        "log.format": "json",
        "outbox.sinks": ["file"],
        "outbox.file_path": str(folder / "events.jsonl"),
        "mesh.recheck_seconds": RECHECK_SECONDS,
        **ingress_overrides(ANY4, INGRESS_PORT),
    }


@contextlib.asynccontextmanager
async def daemon_inside(
    created: netns.Namespace, folder: Path, dsn: str
) -> AsyncIterator[daemon.Daemon]:
    """`appliance run` inside the namespace, on the session's database; ready, then killed."""
    env = daemon.environment(dsn, folder, outside_overrides(folder))
    process = await asyncio.create_subprocess_exec(
        *created.command(*daemon.command(), "--config", str(daemon.config_file(folder)), "run"),
        env=env,
        cwd=str(folder),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    running = daemon.Daemon(process, "inside", folder / "inside.log")
    try:
        running.ready = await running.wait_for_log("daemon.ready", timeout=60)
        yield running
    finally:
        await running.kill()


async def readyz(created: netns.Namespace) -> dict[str, Any]:
    """GET /readyz of the daemon inside the namespace."""
    return await asyncio.to_thread(netns.get, created, f"http://127.0.0.1:{CONSOLE_PORT}/readyz")


async def exposure_events(pool: dbpool.Pool, event_type: str) -> list[dict[str, Any]]:
    """The payloads of the outbox events of `event_type`, oldest first."""
    rows = await pool.fetch(
        "SELECT payload FROM appliance.outbox_events WHERE type = $1 ORDER BY event_seq",
        event_type,
    )
    return [row["payload"] for row in rows]


@pytest.fixture
async def inside_dsn(db: dbpool.Pool, database_dsn: str) -> str:
    """The session database through Postgres's unix socket, which a namespace still reaches."""
    dsn = await netns.socket_dsn(db, database_dsn)
    if dsn is None:
        pytest.skip("Postgres has no unix socket to reach from inside a namespace")
    return dsn


class TestRecheck:
    async def test_the_daemon_own_listener_turns_readiness_red_until_it_closes(
        self, db: dbpool.Pool, namespace: netns.Namespace, inside_dsn: str, tmp_path: Path
    ) -> None:
        """Opened after ready by code in the daemon: 503 naming it (Retry-After), one event,
        a log line naming pid and process; green again, and resolved, once it closes."""
        gate = tmp_path / "gate"
        async with daemon_inside(namespace, tmp_path, inside_dsn) as edge:
            assert (await readyz(namespace))["status"] == 200
            await submission.submit(
                db,
                registry.registry,
                settings.EngineSettings(),
                tenant_id="default",
                workflow=listening.LISTEN,
                task_input={"address": netns.LAN_V4, "port": 9000, "gate": str(gate)},
                actor="test",
            )

            async def red() -> dict[str, Any] | None:
                answer = await readyz(namespace)
                return answer if answer["status"] == 503 else None

            answer = await daemon.wait_until(red, what="/readyz 503", daemons=[edge])
            [reason] = answer["body"]["reasons"]
            assert f"tcp {netns.LAN_V4}:9000, pid {edge.process.pid} (" in reason
            assert answer["headers"]["Retry-After"] == "1"
            logged = await edge.wait_for_log("exposure.violation")
            assert (logged["pid"], logged["daemon"]) == (edge.process.pid, True)
            assert logged["command"]
            [event] = await exposure_events(db, "exposure.violation")
            assert (event["endpoint"], event["pid"], event["daemon"]) == (
                f"{netns.LAN_V4}:9000",
                edge.process.pid,
                True,
            )
            gate.touch()

            async def green() -> bool:
                status: int = (await readyz(namespace))["status"]
                return status == 200

            await daemon.wait_until(green, what="/readyz 200 again", daemons=[edge])
            await edge.wait_for_log("exposure.resolved")

            async def resolved() -> list[dict[str, Any]] | None:
                return await exposure_events(db, "exposure.resolved") or None

            await daemon.wait_until(resolved, what="exposure.resolved", daemons=[edge])
        assert len(await exposure_events(db, "exposure.violation")) == 1

    async def test_another_process_violation_is_reported_and_doctor_fails(
        self, db: dbpool.Pool, namespace: netns.Namespace, inside_dsn: str, tmp_path: Path
    ) -> None:
        """Another process's LAN listener: the log line and the event name its pid and process,
        doctor and exposure-check fail on it alone, readiness stays green (documented)."""
        async with daemon_inside(namespace, tmp_path, inside_dsn) as edge:
            with netns.holding(namespace, netns.LAN_V4, port=9001) as held:
                logged = await edge.wait_for_log("exposure.violation")
                assert (logged["pid"], logged["daemon"]) == (held["pid"], False)
                assert str(logged["command"]).startswith("python")

                async def announced() -> list[dict[str, Any]] | None:
                    return await exposure_events(db, "exposure.violation") or None

                [event] = await daemon.wait_until(announced, what="the event", daemons=[edge])
                assert (event["endpoint"], event["pid"]) == (f"{netns.LAN_V4}:9001", held["pid"])
                assert (await readyz(namespace))["status"] == 200
                overrides = outside_overrides(tmp_path) | {"database.url": inside_dsn}
                doctor = await run_inside(namespace, tmp_path, overrides, "doctor", "--json")
                check = await run_inside(namespace, tmp_path, overrides, "exposure-check")
            await edge.wait_for_log("exposure.resolved")

        [exposure] = [row for row in json.loads(doctor.stdout) if row["name"] == "exposure"]
        assert exposure["ok"] is False
        assert f"tcp {netns.LAN_V4}:9001, pid {held['pid']} (python" in exposure["detail"]
        assert check.code == 78
        assert f"pid {held['pid']}" in check.stderr
        webhook = [line for line in check.stdout.splitlines() if f":{INGRESS_PORT} " in line]
        assert [line.split()[:4] for line in webhook] == [
            ["ok", "tcp", f"{ANY4}:{INGRESS_PORT}", "declared"]
        ]

    async def test_exposure_check_tells_the_ingress_from_an_ipv6_only_twin(
        self, db: dbpool.Pool, namespace: netns.Namespace, inside_dsn: str, tmp_path: Path
    ) -> None:
        """Another process's `[::]:8471` (IPv6 only) beside the daemon's IPv4 ingress on
        0.0.0.0:8471: the twin fails the gate, the ingress itself passes."""
        async with daemon_inside(namespace, tmp_path, inside_dsn):
            with netns.holding(namespace, "::", port=INGRESS_PORT, v6only=True) as held:
                overrides = outside_overrides(tmp_path) | {"database.url": inside_dsn}
                check = await run_inside(namespace, tmp_path, overrides, "exposure-check")
        assert check.code == 78
        lines = {line.split()[2]: line for line in check.stdout.splitlines()[:-1]}
        assert lines[f"{ANY4}:{INGRESS_PORT}"].split()[:4] == [
            "ok",
            "tcp",
            f"{ANY4}:{INGRESS_PORT}",
            "declared",
        ]
        twin = lines[f"[::]:{INGRESS_PORT}"]
        assert twin.startswith("FAIL  tcp6")
        assert "(IPv6 only)" in twin
        assert f"pid {held['pid']} (python" in twin


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
