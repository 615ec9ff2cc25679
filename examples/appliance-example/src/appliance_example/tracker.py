"""The issue tracker's HTTP API, as this package's tool and steps call it from their confined
process: the standard library only, since every tool process imports this module.

Where the tracker is and how to sign in both come from the vault, as secrets of the integration
`tracker` leased for the one call (`appliance secrets set tracker endpoint`, `... token`): each
tenant has its own tracker, and neither the model nor the task input can point a call
elsewhere. Every request carries the call's idempotency key (the same on every attempt of the
step), so the tracker opens one ticket however often a step is tried. Redirects are not
followed (a redirect to another host would take the token with it); plain HTTP is refused but
to this machine (a stand-in in tests).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
from typing import Any

from appliance.agents import tools

INTEGRATION = "tracker"
ENDPOINT = "endpoint"  # the API's base address, e.g. https://tracker.example.com/api
TOKEN = "token"  # noqa: S105 - the name of the secret (an API token), not its value
TIMEOUT_SECONDS = 10.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")
ERROR_TEXT = 300  # characters of a refusal's body kept in the error


class TrackerError(Exception):
    """The tracker refused a request, or could not be reached."""


async def post(call: tools.Call, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` as JSON to the tracker's `path`; its JSON answer."""
    endpoint = await call.services.secret(ENDPOINT)
    token = await call.services.secret(TOKEN)
    return await asyncio.to_thread(_post, endpoint, path, body, token, call.idempotency_key)


def _connection(endpoint: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the tracker, and the path its API lives under."""
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme == "https":
        return http.client.HTTPSConnection(url.netloc, timeout=TIMEOUT_SECONDS), url.path
    if url.scheme == "http" and url.hostname in LOOPBACK:
        return http.client.HTTPConnection(url.netloc, timeout=TIMEOUT_SECONDS), url.path
    raise TrackerError(f"the tracker's endpoint must be an https:// address, not {endpoint!r}")


def _post(endpoint: str, path: str, body: dict[str, Any], token: str, key: str) -> dict[str, Any]:
    connection, base = _connection(endpoint)
    try:
        connection.request(
            "POST",
            base.rstrip("/") + path,
            body=json.dumps(body),
            headers={
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": key,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        raise TrackerError(f"the tracker cannot be reached: {exc}") from None
    finally:
        connection.close()
    if response.status >= 300:
        raise TrackerError(f"the tracker answered {response.status} to {path}: {text[:ERROR_TEXT]}")
    answer: dict[str, Any] = json.loads(text)
    return answer


async def add_comment(call: tools.Call, argument: dict[str, Any]) -> dict[str, Any]:
    """A workflow's step: comment on a ticket (`{"ticket": ID, "text": ...}`)."""
    ticket = urllib.parse.quote(str(argument["ticket"]), safe="")
    return await post(call, f"/tickets/{ticket}/comments", {"text": str(argument["text"])})
