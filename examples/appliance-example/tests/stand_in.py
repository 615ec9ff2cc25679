"""The issue tracker's stand-in: a local HTTP server speaking the part of its API the package
uses, and recording every request.

    POST /api/tickets                 {"title", "body", "severity"} -> 201 {"id", "url"}
    POST /api/tickets/{id}/comments   {"text"} -> 201 {"id"}

A request without the right bearer token is 401. A request whose `Idempotency-Key` was seen
before gets the first answer again and changes nothing, as the real tracker does. `fail_next`
makes the next requests to a path answer 503.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    authorization: str
    idempotency_key: str
    body: Any


class Tracker:
    def __init__(self) -> None:
        self.token = "trk-" + secrets.token_hex(16)
        self.requests: list[Request] = []
        self.tickets: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[str]] = collections.defaultdict(list)
        self.fail_next: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def requests_to(self, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    async def _answer(self, request: web.Request, make: Any) -> web.Response:
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(
            Request(request.path, request.headers.get("Authorization", ""), key, body)
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        kind = "comments" if request.path.endswith("/comments") else "tickets"
        if self.fail_next[kind]:
            self.fail_next[kind] -= 1
            return web.json_response({"error": "try again"}, status=503)
        if key not in self._answers:
            self._answers[key] = (201, make(request, body))
        status, answer = self._answers[key]
        return web.json_response(answer, status=status)

    async def _ticket(self, request: web.Request) -> web.Response:
        def make(_: web.Request, body: Any) -> dict[str, Any]:
            ticket_id = f"HD-{len(self.tickets) + 1}"
            self.tickets[ticket_id] = body
            return {"id": ticket_id, "url": f"https://tracker.example/{ticket_id}"}

        return await self._answer(request, make)

    async def _comment(self, request: web.Request) -> web.Response:
        def make(request: web.Request, body: Any) -> dict[str, Any]:
            ticket_id = request.match_info["ticket"]
            self.comments[ticket_id].append(body["text"])
            return {"id": len(self.comments[ticket_id])}

        return await self._answer(request, make)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Tracker]:
        app = web.Application()
        app.router.add_post("/api/tickets", self._ticket)
        app.router.add_post("/api/tickets/{ticket}/comments", self._comment)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        try:
            yield self
        finally:
            await runner.cleanup()
