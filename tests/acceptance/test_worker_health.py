"""A VPC worker's health: its listener on a private address, and `appliance health`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance import health
from tests.support import daemon

# `db` empties the session database: a daemon starts on it with a vault of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90), pytest.mark.usefixtures("db")]

WILDCARD = "0.0.0.0"  # noqa: S104 - refused before anything is bound


def worker(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"mode": "worker", "health.host": host, "health.port": port}


def error_lines(result: daemon.Result) -> list[str]:
    """What stderr says besides JSON log lines."""
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


def private_address() -> str | None:
    """A private IPv4 address of this machine that is not loopback (a VPC address's stand-in)."""
    try:
        listed = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "scope", "global"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for interface in json.loads(listed):
        for entry in interface.get("addr_info", ()):
            if ipaddress.ip_address(entry["local"]).is_private:
                return str(entry["local"])
    return None


@contextlib.asynccontextmanager
async def health_app(readiness: health.Readiness) -> AsyncIterator[int]:
    """The daemon's own health app, served on 127.0.0.1 at a fresh port, for the block."""
    app = web.Application(middlewares=[health.retry_after])
    health.add_routes(app, readiness)
    runner = web.AppRunner(app)
    await runner.setup()
    port = daemon.free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield port
    finally:
        await runner.cleanup()


class TestHealthCommand:
    async def test_a_ready_worker_answers_zero(self, database_dsn: str, tmp_path: Path) -> None:
        """`appliance health` exits 0 against a ready worker, and says so in JSON too."""
        settings = worker(daemon.free_port())
        async with daemon.running(database_dsn, tmp_path, overrides=settings):
            said = await daemon.cli("health", folder=tmp_path, overrides=settings)
            machine = await daemon.cli("--json", "health", folder=tmp_path, overrides=settings)

        assert (said.code, machine.code) == (0, 0), said.stderr + machine.stderr
        assert said.stdout.startswith(f"ready (http://127.0.0.1:{settings['health.port']}/readyz")
        assert machine.json()["ready"] is True

    async def test_a_daemon_that_is_not_ready_is_one_line_and_exit_1(self, tmp_path: Path) -> None:
        """The daemon's health app while Postgres is away: exit 1, its reasons on one line."""
        readiness = health.Readiness(database_reason="Postgres cannot be reached")
        async with health_app(readiness) as port:
            said = await daemon.cli("health", folder=tmp_path, overrides=worker(port))
            machine = await daemon.cli("--json", "health", folder=tmp_path, overrides=worker(port))

        assert (said.code, machine.code) == (1, 1)
        [line] = error_lines(said)
        assert line == (
            f"appliance: error: not ready (http://127.0.0.1:{port}/readyz): "
            "database: Postgres cannot be reached; schema: not current"
        )
        assert machine.json()["reasons"] == [
            "database: Postgres cannot be reached",
            "schema: not current",
        ]

    async def test_nothing_listening_is_exit_69(self, tmp_path: Path) -> None:
        """No daemon at the address: exit 69, one line naming where it asked."""
        port = daemon.free_port()

        result = await daemon.cli("health", folder=tmp_path, overrides=worker(port))

        assert result.code == 69
        [line] = error_lines(result)
        assert f"no daemon answers at http://127.0.0.1:{port}/readyz" in line

    async def test_a_worker_without_an_address_cannot_be_asked(self, tmp_path: Path) -> None:
        """A worker left at health.host = 'tailnet' listens on nothing: exit 78 saying so."""
        result = await daemon.cli(
            "health", folder=tmp_path, overrides={"mode": "worker", "health.port": 8470}
        )

        assert result.code == 78
        [line] = error_lines(result)
        assert "this worker has no health listener" in line


class TestWorkerListener:
    async def test_a_worker_listens_on_nothing_by_default(
        self, database_dsn: str, tmp_path: Path
    ) -> None:
        """health.host left at 'tailnet': the worker gets ready with no listener at all."""
        settings = {"mode": "worker", "health.host": "tailnet"}
        async with daemon.running(database_dsn, tmp_path, overrides=settings) as run:
            assert run.ready["health_port"] == 0
            assert await run.terminate() == 0

    async def test_a_private_address_serves_readiness(
        self, database_dsn: str, tmp_path: Path
    ) -> None:
        """On a private address of the box (not loopback) the gate passes and /readyz answers."""
        address = private_address()
        if address is None:
            pytest.skip("this machine has no private address besides loopback")
        settings = worker(daemon.free_port(address), host=address)
        async with daemon.running(database_dsn, tmp_path, overrides=settings) as run:
            said = await daemon.cli("health", folder=tmp_path, overrides=settings)
            assert await run.terminate() == 0

        assert said.code == 0, said.stderr
        assert said.stdout.startswith(f"ready (http://{address}:")

    async def test_a_wildcard_address_is_refused(self, database_dsn: str, tmp_path: Path) -> None:
        """health.host = 0.0.0.0 in a worker would listen on every interface: exit 78."""
        result = await daemon.cli(
            "run", folder=tmp_path, dsn=database_dsn, overrides=worker(8470, host=WILDCARD)
        )

        assert result.code == 78
        assert "health.host of a worker: 0.0.0.0 listens on every interface" in result.stderr
