"""TLS with a real Postgres: verify-full connects with the right CA and host, refuses the rest.

The server accepts clients with TLS and without, so a client that fell back to the clear would
connect: every refusal here is the client's own.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from appliance import settings
from appliance.db import connection, tls
from appliance.db import pool as dbpool
from tests.support import tls as tls_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ENCRYPTED = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def server() -> AsyncIterator[tls_server.TlsServer]:
    async with tls_server.running() as running:
        yield running


def worker(url: str, **database: Any) -> settings.Settings:
    """Settings of a VPC worker on `url`."""
    return settings.Settings.model_validate(
        {"mode": "worker", "database": {"url": url, "pool_min": 1, **database}}
    )


async def refusal(config: settings.Settings) -> tls.DatabaseTlsError:
    """The error opening the database raises."""
    with pytest.raises(tls.DatabaseTlsError) as caught:
        async with connection.open_database(config):
            pass
    return caught.value


class TestVerifyFull:
    async def test_the_right_ca_and_host_connect_over_tls(
        self, server: tls_server.TlsServer
    ) -> None:
        """The pool's sessions and a dedicated one (node hold, LISTEN) are both encrypted."""
        config = worker(server.url(), sslmode="verify-full", sslrootcert=str(server.ca))

        async with connection.open_database(config) as db:
            pooled = await db.pool.fetchval(ENCRYPTED)
            dedicated = await dbpool.connect(db.dsn)
            try:
                alone = await dedicated.fetchval(ENCRYPTED)
            finally:
                await dedicated.close()

        assert (pooled, alone) == (True, True)

    async def test_the_urls_parameters_alone_do_it(self, server: tls_server.TlsServer) -> None:
        """sslmode and sslrootcert written in database.url work without the settings."""
        url = server.url(sslmode="verify-full", sslrootcert=str(server.ca))

        async with connection.open_database(worker(url)) as db:
            assert await db.pool.fetchval(ENCRYPTED) is True

    async def test_a_wrong_ca_is_refused(self, server: tls_server.TlsServer) -> None:
        """A certificate another CA signed: exit 78, one line naming the CA file."""
        config = worker(server.url(), sslmode="verify-full", sslrootcert=str(server.impostor))

        refused = await refusal(config)

        assert refused.exit_code == 78
        assert len(str(refused).splitlines()) == 1
        assert f"its certificate is not signed by the CA in {server.impostor}" in str(refused)

    async def test_a_host_the_certificate_does_not_name_is_refused(
        self, server: tls_server.TlsServer
    ) -> None:
        """The right CA, reached as 127.0.0.1, which the certificate does not carry: refused."""
        url = server.url(host=tls_server.OTHER_HOST)
        config = worker(url, sslmode="verify-full", sslrootcert=str(server.ca))

        refused = await refusal(config)

        assert refused.exit_code == 78
        assert "its certificate does not name the host it was reached by" in str(refused)
        assert "'127.0.0.1'" in str(refused)

    async def test_verify_ca_takes_any_name_the_ca_signed(
        self, server: tls_server.TlsServer
    ) -> None:
        """verify-ca checks the chain only: the same address connects (doctor warns of it)."""
        url = server.url(host=tls_server.OTHER_HOST)
        config = worker(url, sslmode="verify-ca", sslrootcert=str(server.ca))

        async with connection.open_database(config) as db:
            assert await db.pool.fetchval(ENCRYPTED) is True

    async def test_no_ca_file_at_all_is_refused(
        self, server: tls_server.TlsServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
    ) -> None:
        """verify-full with no CA named and none in ~/.postgresql: refused, not unverified."""
        monkeypatch.setenv("HOME", str(tmp_path))

        refused = await refusal(worker(server.url(), sslmode="verify-full"))

        assert "root certificate file" in str(refused)
        assert "set database.sslrootcert" in str(refused)

    async def test_a_server_without_tls_is_refused(
        self, server: tls_server.TlsServer, server_dsn: str
    ) -> None:
        """verify-full against the session's server (ssl off): refused, never in the clear."""
        parts = urllib.parse.urlsplit(server_dsn)
        if not parts.hostname:
            pytest.skip("the session's server is reached over a unix socket")
        if await _has_tls(server_dsn):
            pytest.skip("the session's server speaks TLS")
        config = worker(server_dsn, sslmode="verify-full", sslrootcert=str(server.ca))

        refused = await refusal(config)

        assert "offers no TLS" in str(refused)


async def _has_tls(dsn: str) -> bool:
    conn = await dbpool.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT current_setting('ssl') = 'on'"))
    finally:
        await conn.close()
