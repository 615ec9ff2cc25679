"""`appliance run` under a Type=notify unit: what systemd hears from it, on a real socket."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.db import pool as dbpool
from tests.support import daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1s: pings every 0.5 s


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """systemd's side: an abstract datagram socket with a name unique to this run."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0appliance-notify-{uuid.uuid4().hex}")
    sock.setblocking(False)
    with sock:
        yield sock


async def messages_until(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    """Every field received until one equals `wanted` (in order)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            datagram = await loop.sock_recv(sock, 4096)
            seen.extend(datagram.decode().split("\n"))
    return seen


class TestNotifyingDaemon:
    async def test_ready_watchdog_and_stopping(
        self,
        db: dbpool.Pool,
        database_dsn: str,
        tmp_path: Path,
        notify_socket: socket.socket,
    ) -> None:
        """READY=1 with a status once it serves, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
        address = "@" + notify_socket.getsockname()[1:].decode()
        env = daemon.environment(
            database_dsn,
            tmp_path,
            {"health.port": 0, "health.host": "127.0.0.1", "log.format": "json"},
        )
        env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        process = await asyncio.create_subprocess_exec(
            *daemon.command(),
            "--config",
            str(daemon.config_file(tmp_path)),
            "run",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        running = daemon.Daemon(process, "notify", tmp_path / "notify.log")
        try:
            before = await messages_until(notify_socket, "READY=1")
            assert f"EXTEND_TIMEOUT_USEC={WATCHDOG_USEC}" in before  # the start was kept alive
            ready = before.index("READY=1")
            assert before[ready + 1].startswith("STATUS=ready: edge mode")
            after = await messages_until(notify_socket, "WATCHDOG=1")
            assert "WATCHDOG=1" in after
            assert await running.terminate() == 0
            stopped = await messages_until(notify_socket, "STOPPING=1")
            assert "STOPPING=1" in stopped
        finally:
            await running.kill()
