"""A real HTTP endpoint for outgoing webhooks: an aiohttp server on 127.0.0.1 that checks
every request's signature with the `standardwebhooks` library (the reference implementation),
as a receiver following the spec would, and records what it got."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import standardwebhooks
from aiohttp import web


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclasses.dataclass
class Receiver:
    """What the endpoint got. `answers` are statuses given, one per request, before it answers
    204; a 3xx carries `Location: redirect_to`."""

    secret: str
    answers: list[int] = dataclasses.field(default_factory=list)
    redirect_to: str = ""
    url: str = ""
    accepted: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # verified, 204
    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # verified, any answer
    unverified: int = 0
    ids: list[str] = dataclasses.field(default_factory=list)  # webhook-id of accepted ones

    @property
    def types(self) -> list[str]:
        return [p["type"] for p in self.accepted]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            payload = standardwebhooks.Webhook(self.secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            self.unverified += 1
            return web.Response(status=401)
        self.requests.append(payload)
        if self.answers:
            status = self.answers.pop(0)
            location = {"Location": self.redirect_to} if 300 <= status < 400 else {}
            return web.Response(status=status, headers=location)
        self.accepted.append(payload)
        self.ids.append(headers["webhook-id"])
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiving(secret: str, **options: Any) -> AsyncIterator[Receiver]:
    """A receiver listening on a free port of 127.0.0.1 for the block."""
    receiver = Receiver(secret, **options)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
