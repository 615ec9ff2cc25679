"""The local health listener: `/healthz` (the process is alive) and `/readyz` (it can work).

Readiness is red while Postgres does not answer, the schema is not current, the daemon is
shutting down, or a socket the daemon holds (or one of its processes holds) faces outside the
tailnet; the body gives the reasons. Every 503 this app answers (readiness, and whatever
route a later part of the console adds that answers 503 while Postgres is away) carries
`Retry-After`: 1 s while the database is what is missing (readiness re-checks it every
`health.db_check_seconds`), the recheck period while an exposure violation stands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

RETRY_SECONDS = 1


@dataclasses.dataclass
class Readiness:
    """What readiness depends on; the daemon keeps it current."""

    database: bool = False
    database_reason: str = "starting"
    schema_current: bool = False
    draining: bool = False
    exposure: tuple[str, ...] = ()  # the daemon's own sockets that face outside the tailnet
    exposure_recheck_seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return self.database and self.schema_current and not self.draining and not self.exposure

    def reasons(self) -> list[str]:
        found = []
        if not self.database:
            found.append(f"database: {self.database_reason}")
        if not self.schema_current:
            found.append("schema: not current")
        if self.draining:
            found.append("shutting down")
        found.extend(f"exposure: {item} faces outside the tailnet" for item in self.exposure)
        return found

    def retry_after(self) -> int:
        """Whole seconds a client should wait before asking again (a 503's Retry-After)."""
        wait = float(RETRY_SECONDS)
        if self.exposure:
            wait = max(wait, self.exposure_recheck_seconds)
        return max(1, math.ceil(wait))


READINESS = web.AppKey("readiness", Readiness)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def retry_after(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every 503 of this app a Retry-After, whichever route answered it."""
    try:
        response = await handler(request)
    except web.HTTPServiceUnavailable as exc:
        exc.headers.setdefault("Retry-After", str(request.app[READINESS].retry_after()))
        raise
    if response.status == 503 and not response.prepared:
        response.headers.setdefault("Retry-After", str(request.app[READINESS].retry_after()))
    return response


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready", "reasons": readiness.reasons()}, status=503)


def add_routes(app: web.Application, readiness: Readiness) -> None:
    """/healthz and /readyz on `app` (whose middlewares include `retry_after`)."""
    app[READINESS] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
