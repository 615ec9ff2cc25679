"""The local health listener: `/healthz` (the process is alive) and `/readyz` (it can work).

Readiness is red while Postgres does not answer or the schema is not current, with the reason
in the body. The listener binds 127.0.0.1 by default (the tailnet address in a later issue).
"""

from __future__ import annotations

import dataclasses

from aiohttp import web


@dataclasses.dataclass
class Readiness:
    """What readiness depends on; the daemon keeps it current."""

    database: bool = False
    database_reason: str = "starting"
    schema_current: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.database and self.schema_current and not self.draining

    def reasons(self) -> list[str]:
        found = []
        if not self.database:
            found.append(f"database: {self.database_reason}")
        if not self.schema_current:
            found.append("schema: not current")
        if self.draining:
            found.append("shutting down")
        return found


READINESS = web.AppKey("readiness", Readiness)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready", "reasons": readiness.reasons()}, status=503)


def build_app(readiness: Readiness) -> web.Application:
    """The app (built, never run here)."""
    app = web.Application()
    app[READINESS] = readiness
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
