"""`appliance run` as a VPC worker against a Postgres over TLS with sslmode=verify-full.

The server accepts clients with and without TLS (tests/support/tls.py), so a worker that fell
back to the clear would start: a refusal is the worker's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.support import daemon
from tests.support import tls as tls_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SESSIONS = """
SELECT a.application_name, s.ssl
  FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
 WHERE a.datname = $1 AND a.client_addr IS NOT NULL
"""


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def server() -> AsyncIterator[tls_server.TlsServer]:
    async with tls_server.running() as running:
        yield running


def worker(ca: Path) -> dict[str, Any]:
    return {
        "mode": "worker",
        "database.sslmode": "verify-full",
        "database.sslrootcert": str(ca),
        "database.pool_min": 1,
    }


def error_lines(result: daemon.Result) -> list[str]:
    """What stderr says besides the JSON log lines."""
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


class TestWorkerOverTls:
    async def test_the_right_ca_and_host_make_every_session_encrypted(
        self, server: tls_server.TlsServer, tmp_path: Path
    ) -> None:
        """The worker gets ready, and each of its sessions (pool, node hold) is over TLS."""
        async with daemon.running(server.url(), tmp_path, overrides=worker(server.ca)) as run:
            admin = await asyncpg.connect(server.admin_dsn())
            try:
                sessions = await admin.fetch(SESSIONS, tls_server.DATABASE)
            finally:
                await admin.close()
            assert await run.terminate() == 0

        names = {row["application_name"] for row in sessions}
        assert {"appliance", "appliance node n1"} <= names
        assert all(row["ssl"] for row in sessions), sessions

    async def test_a_wrong_ca_stops_it_with_one_line(
        self, server: tls_server.TlsServer, tmp_path: Path
    ) -> None:
        """A CA that did not sign the server's certificate: exit 78, one line, no traceback."""
        result = await daemon.cli(
            "run", folder=tmp_path, dsn=server.url(), overrides=worker(server.impostor)
        )

        assert result.code == 78, result.stderr
        [line] = error_lines(result)
        assert line.startswith(f"appliance: error: Postgres at localhost:{server.port} was refused")
        assert f"not signed by the CA in {server.impostor}" in line

    async def test_a_wrong_host_stops_it_with_one_line(
        self, server: tls_server.TlsServer, tmp_path: Path
    ) -> None:
        """The right CA, but a host the certificate does not name: exit 78, one line."""
        url = server.url(host=tls_server.OTHER_HOST)

        result = await daemon.cli("run", folder=tmp_path, dsn=url, overrides=worker(server.ca))

        assert result.code == 78, result.stderr
        [line] = error_lines(result)
        assert "its certificate does not name the host it was reached by" in line
