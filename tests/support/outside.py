"""The outside service the test tools write to: a local HTTP server that records requests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


class Service:
    """The outside service tools write to: records each request with its headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization", ""),
                "idempotency_key": request.headers.get("Idempotency-Key", ""),
                "body": body,
            }
        )
        return web.json_response({"done": request.path, "n": len(self.requests)})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Service]:
        app = web.Application()
        app.router.add_post("/{what}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        try:
            yield self
        finally:
            await runner.cleanup()
