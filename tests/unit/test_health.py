"""Readiness: its reasons, and the Retry-After every 503 of the console app carries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import test_utils, web

from appliance import health

VIOLATION = "tcp 192.168.50.2:9000, pid 42 (appliance)"


def ready() -> health.Readiness:
    return health.Readiness(database=True, database_reason="", schema_current=True)


@pytest.fixture
def readiness() -> health.Readiness:
    return ready()


@pytest_asyncio.fixture
async def client(
    readiness: health.Readiness,
) -> AsyncIterator[test_utils.TestClient[web.Request, web.Application]]:
    """The health routes on a loopback port, with a route that answers 503 by itself."""
    app = web.Application(middlewares=[health.retry_after])
    health.add_routes(app, readiness)

    async def busy(_: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable(text="the database is away")

    async def plain(_: web.Request) -> web.Response:
        return web.Response(status=503, text="away")

    app.router.add_get("/busy", busy)
    app.router.add_get("/plain", plain)
    async with test_utils.TestClient(test_utils.TestServer(app)) as running:
        yield running


class TestReadiness:
    def test_an_exposure_violation_makes_it_red_with_the_socket(self) -> None:
        """The daemon's own violation is a reason naming the socket and its holder."""
        state = ready()
        state.exposure = (VIOLATION,)
        assert not state.ready
        assert state.reasons() == [f"exposure: {VIOLATION} faces outside the tailnet"]

    @pytest.mark.parametrize(("recheck", "expected"), [(0.2, 1), (10.0, 10), (2.5, 3)])
    def test_retry_after_waits_for_the_next_recheck(self, recheck: float, expected: int) -> None:
        """While a violation stands, Retry-After is the recheck period, in whole seconds."""
        state = ready()
        state.exposure, state.exposure_recheck_seconds = (VIOLATION,), recheck
        assert state.retry_after() == expected

    def test_retry_after_is_a_second_while_the_database_is_away(self) -> None:
        """Readiness follows Postgres within `health.db_check_seconds`."""
        state = ready()
        state.database, state.database_reason = False, "connection refused"
        state.exposure_recheck_seconds = 10.0
        assert state.retry_after() == 1


class TestRetryAfter:
    async def test_readyz_503_during_an_outage_carries_retry_after(
        self,
        client: test_utils.TestClient[web.Request, web.Application],
        readiness: health.Readiness,
    ) -> None:
        """Postgres away: 503 with the reason and Retry-After: 1; back: 200 without it."""
        readiness.database, readiness.database_reason = False, "connection refused"
        response = await client.get("/readyz")
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert await response.json() == {
            "status": "not ready",
            "reasons": ["database: connection refused"],
        }
        readiness.database = True
        response = await client.get("/readyz")
        assert response.status == 200
        assert "Retry-After" not in response.headers

    async def test_readyz_503_for_a_violation_carries_the_recheck_period(
        self,
        client: test_utils.TestClient[web.Request, web.Application],
        readiness: health.Readiness,
    ) -> None:
        """The daemon's own violation: 503 naming the socket, Retry-After the recheck period."""
        readiness.exposure, readiness.exposure_recheck_seconds = (VIOLATION,), 5.0
        response = await client.get("/readyz")
        assert (response.status, response.headers["Retry-After"]) == (503, "5")
        assert VIOLATION in (await response.json())["reasons"][0]

    @pytest.mark.parametrize("path", ["/busy", "/plain"])
    async def test_any_503_of_the_app_carries_retry_after(
        self,
        client: test_utils.TestClient[web.Request, web.Application],
        readiness: health.Readiness,
        path: str,
    ) -> None:
        """A route raising HTTPServiceUnavailable or returning 503 gets one too."""
        readiness.database = False
        response = await client.get(path)
        assert (response.status, response.headers.get("Retry-After")) == (503, "1")
