"""The public webhook endpoint: `POST /hooks/{tenant}/{source}`, the one public port.

A delivery is checked in this order, each failure answered with a short JSON `{"error": ...}`
that names no internal detail (the detail goes to the log, event `ingress.rejected`):

1. the tenant has a configured source of that name, else 404 (the same 404 as any other path or
   method: this port serves nothing else, no health, no metrics, no console);
2. the body fits the source's `max_body_bytes`: a larger Content-Length is refused before
   reading, and the limit is enforced while reading (chunked bodies too), else 413;
3. the source's scheme verifies it (`signatures`): malformed headers or body 400, a missing or
   wrong signature or a timestamp outside the window 401;
4. the source's rate limit, counted over verified deliveries only (so a flood of forgeries
   cannot use up a sender's allowance), else 429 with `retry-after`;
5. the delivery is enqueued durably as a task of the source's workflow with the idempotency key
   `hook:<source>:<delivery id>`: 202 `{"task_id": N}` once committed. A delivery id seen before
   (in Postgres: any process, any restart) is answered 200 `{"task_id": N, "duplicate": true}`
   with the first task, so the sender stops retrying and no second task is made. Postgres down
   (or not answering within `enqueue_timeout_seconds`) is 503, and the sender retries.

The task input is `{"source", "delivery_id", "headers", "body"}`: `headers` holds only
`FORWARDED_HEADERS` that are present (never a signature or a timestamp, so a retry that the
sender signs again is the same input); `body` is the decoded JSON when the body parses as JSON,
else its text, else (not UTF-8) null with the bytes in `body_base64`.

Rate limits are per process (a token bucket per source that refills `rate_limit_per_minute`
each minute); replay protection is not (it lives in Postgres).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from appliance import errors, models, settings
from appliance.ingress import signatures

log = logging.getLogger(__name__)

FORWARDED_HEADERS = (
    "content-type",
    "user-agent",
    "webhook-id",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
)
_READ_CHUNK = 64 * 1024
_REASONS = {
    400: "bad request",
    401: "unauthorized",
    404: "not found",
    413: "payload too large",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}


class Intake(Protocol):
    """Where verified deliveries go: durably, idempotent per tenant and key."""

    async def enqueue(
        self,
        *,
        tenant_id: str,
        source: str,
        workflow: str,
        delivery_id: str,
        task_input: Any,
    ) -> models.Submitted:
        """The task of this delivery (created False: an earlier delivery with its id made it)."""
        ...


class TokenBucket:
    """`per_minute` takes a minute, refilled continuously; a full bucket allows a burst."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._tokens = self._capacity
        self._clock = clock
        self._at = clock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """A configured source with its verifier and its rate limit."""

    source: settings.Source
    verifier: signatures.Scheme
    bucket: TokenBucket


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """How the endpoint behaves beyond its sources."""

    clock: Callable[[], float] = time.time
    enqueue_timeout_seconds: float = 10.0
    verify: bool = True


ROUTES = web.AppKey("ingress.routes", dict[tuple[str, str], Route])
INTAKE: web.AppKey[Intake] = web.AppKey("ingress.intake")
OPTIONS = web.AppKey("ingress.options", Options)


class _Rejected(Exception):  # noqa: N818 - an answer, not an error of ours
    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def _answer(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": _REASONS.get(status, "error")}, status=status, headers=headers
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise _Rejected(413, f"Content-Length {length} is over the limit of {limit} bytes")
    body = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        body.extend(chunk)
        if len(body) > limit:
            raise _Rejected(413, f"the body is over the limit of {limit} bytes")
    return bytes(body)


def _scheme_headers(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The scheme's headers, by lower-case name; a header sent twice is malformed."""
    picked: dict[str, str] = {}
    for name in names:
        values = request.headers.getall(name, [])
        if len(values) > 1:
            raise _Rejected(400, f"the {name} header is sent {len(values)} times")
        if values:
            picked[name] = values[0]
    return picked


def _task_input(request: web.Request, source: str, delivery_id: str, body: bytes) -> Any:
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    task_input: dict[str, Any] = {
        "source": source,
        "delivery_id": delivery_id,
        "headers": headers,
    }
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        task_input["body"] = None
        task_input["body_base64"] = base64.b64encode(body).decode("ascii")
        return task_input
    try:
        task_input["body"] = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        task_input["body"] = text
    return task_input


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON that Postgres stores")


async def _accept(request: web.Request) -> web.Response:
    tenant, name = request.match_info["tenant"], request.match_info["source"]
    route = request.app[ROUTES].get((tenant, name))
    if route is None:
        raise _Rejected(404, "no such source")
    source = route.source
    options = request.app[OPTIONS]
    body = await _read_body(request, source.max_body_bytes)
    headers = _scheme_headers(request, route.verifier.headers)
    try:
        if options.verify:
            delivery_id = route.verifier.verify(headers, body, now=options.clock())
        else:
            delivery_id = route.verifier.delivery_id(headers, body)
    except (signatures.MalformedDeliveryError, signatures.SignatureError) as exc:
        raise _Rejected(exc.http_status, exc.message) from exc
    wait = route.bucket.take()
    if wait:
        retry_after = str(max(1, math.ceil(wait)))
        raise _Rejected(429, "over the rate limit", {"Retry-After": retry_after})
    task_input = _task_input(request, name, delivery_id, body)
    try:
        async with asyncio.timeout(options.enqueue_timeout_seconds):
            submitted = await request.app[INTAKE].enqueue(
                tenant_id=tenant,
                source=name,
                workflow=source.workflow,
                delivery_id=delivery_id,
                task_input=task_input,
            )
    except TimeoutError as exc:
        raise _Rejected(503, "Postgres did not take the delivery in time") from exc
    except (errors.DependencyError, errors.LockedError) as exc:
        raise _Rejected(503, exc.message) from exc
    except errors.UnknownTenantError as exc:
        raise _Rejected(404, exc.message) from exc
    if not submitted.created:
        log.info(
            "duplicate delivery %s of %s/%s: task %d",
            delivery_id,
            tenant,
            name,
            submitted.task_id,
            extra={"event": "ingress.duplicate", "task_id": submitted.task_id},
        )
        return web.json_response({"task_id": submitted.task_id, "duplicate": True}, status=200)
    return web.json_response({"task_id": submitted.task_id}, status=202)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is short JSON; the reason of a refusal goes to the log only."""
    where = {"method": request.method, "path": request.path}
    try:
        return await handler(request)
    except _Rejected as rejected:
        log.log(
            logging.WARNING if rejected.status >= 500 else logging.INFO,
            "refused %s %s: %d %s",
            request.method,
            request.path,
            rejected.status,
            rejected.detail,
            extra={"event": "ingress.rejected", "status": rejected.status, **where},
        )
        return _answer(rejected.status, rejected.headers)
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            log.info(
                "refused %s %s: %d (%s)",
                request.method,
                request.path,
                exc.status,
                exc.reason,
                extra={"event": "ingress.rejected", "status": exc.status, **where},
            )
            return _answer(exc.status)
        return _answer(404)
    except Exception:
        log.exception(
            "delivery failed: %s %s",
            request.method,
            request.path,
            extra={"event": "ingress.failed", **where},
        )
        return _answer(500)


async def _without_server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def build_app(
    config: settings.IngressSettings,
    intake: Intake,
    *,
    verifiers: Mapping[tuple[str, str], signatures.Scheme] | None = None,
    clock: Callable[[], float] = time.time,
    skip_verification_for_bench: bool = False,
) -> web.Application:
    """The app (built, never run here). `verifiers` holds, by (tenant, source), the verifier
    of each source whose secret is in the vault (`credentials.read_verifiers`); the others use
    the secrets of the config file. `clock` is the wall clock of the timestamp window;
    `skip_verification_for_bench` accepts unsigned deliveries and exists only for
    `bench/ingress.py` to measure what verification costs: never set it anywhere else."""
    if skip_verification_for_bench:
        log.warning(
            "webhook signatures are NOT verified (benchmark mode)",
            extra={"event": "ingress.unverified"},
        )
    largest = max((s.max_body_bytes for s in config.sources), default=settings.MEBIBYTE)
    app = web.Application(client_max_size=largest, middlewares=[_answers])
    from_vault = verifiers or {}
    app[ROUTES] = {
        (s.tenant, s.name): Route(
            s,
            from_vault.get((s.tenant, s.name)) or s.verifier(),
            TokenBucket(s.rate_limit_per_minute),
        )
        for s in config.sources
    }
    app[INTAKE] = intake
    app[OPTIONS] = Options(
        clock=clock,
        enqueue_timeout_seconds=config.enqueue_timeout_seconds,
        verify=not skip_verification_for_bench,
    )
    app.router.add_post("/hooks/{tenant}/{source}", _accept)
    app.on_response_prepare.append(_without_server_header)
    return app
