"""The public webhook endpoint: `POST /hooks/{tenant}/{source}`, the one public port.

`Endpoint` is the request handler that `public.listen` serves (the connection caps, deadlines
and protocol errors are `public`'s). A delivery is checked in this order, each failure answered
with a short JSON `{"error": ...}` (plus `"reason"`, one line, where the sender can fix it:
400, 408, 413) that quotes nothing of the request; the detail goes to the log, event
`ingress.rejected`, one line per status per period at most:

1. the tenant has a configured source of that name, else 404 (the same 404 as any other path or
   method: this port serves nothing else, no health, no metrics, no console);
2. the body fits the source's `max_body_bytes`: a larger Content-Length is refused before
   reading (and before `100 Continue`), and the limit is enforced while reading (chunked bodies
   too), else 413;
3. the body fits the body budget (`ingress.body_budget_bytes`, bytes of bodies in flight across
   every connection; a declared length is counted whole before reading), else 503 with
   `Retry-After`; it arrives within `ingress.body_timeout_seconds`, else 408;
4. the source's scheme verifies it (`signatures`): malformed headers or body 400, a missing or
   wrong signature or a timestamp outside the window 401;
5. the source's rate limit, counted over verified deliveries only (so a flood of forgeries
   cannot use up a sender's allowance), else 429 with `retry-after`;
6. the task input can hold it as sent (`payload`), else 400 with the reason;
7. the delivery is enqueued durably as a task of the source's workflow with the idempotency key
   `hook:<source>:<delivery id>`: 202 `{"task_id": N}` once committed. A delivery id seen before
   (in Postgres: any process, any restart) is answered 200 `{"task_id": N, "duplicate": true}`
   with the first task, so the sender stops retrying and no second task is made; so is, for a
   scheme that signs the body only (GitHub), a body the source delivered before under another
   id. Postgres down (or not answering within `enqueue_timeout_seconds`) is 503 with
   `Retry-After`, and the sender retries.

Rate limits and the body budget are per process; replay protection is not (it lives in
Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from aiohttp import hdrs, web

from appliance import errors, metrics, models, settings, triggers
from appliance.ingress import guard, payload, signatures

log = logging.getLogger(__name__)

_PATH = re.compile(r"/hooks/([^/]+)/([^/]+)")
_READ_CHUNK = 64 * 1024
_REASONS = {
    400: "bad request",
    401: "unauthorized",
    404: "not found",
    408: "request timeout",
    413: "payload too large",
    409: "conflict",
    417: "expectation failed",
    422: "unprocessable content",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}
_EXPLAINED = frozenset({400, 408, 413, 417, 422})
"""Statuses whose answer carries the one-line reason: the sender can fix what they name."""
RETRY_AFTER_SECONDS = 5


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
        body_sha256: bytes | None = None,
    ) -> models.Submitted:
        """The task of this delivery (created False: an earlier delivery with its id, or with
        the body of `body_sha256` when given, made it)."""
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


class _Rejected(Exception):  # noqa: N818 - an answer, not an error of ours
    def __init__(
        self,
        status: int,
        detail: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.close = close  # the body was not read to its end: the connection cannot go on


def _answer(
    status: int, reason: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    answer = {"error": _REASONS.get(status, "error")}
    if reason is not None and status in _EXPLAINED:
        answer["reason"] = reason
    return web.json_response(answer, status=status, headers=headers)


class _Held:
    """The bytes of one request's body counted in the budget, given back when it is answered."""

    def __init__(self, budget: guard.BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> bool:
        if not self._budget.take(size):
            return False
        self.size += size
        return True


class Endpoint:
    """The handler of the public port (served by `public.listen`, built, never run here).

    `verifiers` holds, by (tenant, source), the verifier of each source whose secret is in the
    vault (`credentials.read_verifiers`); the others use the secrets of the config file. `clock`
    is the wall clock of the timestamp window; `skip_verification_for_bench` accepts unsigned
    deliveries and exists only for `bench/ingress.py` to measure what verification costs: never
    set it anywhere else."""

    def __init__(
        self,
        config: settings.IngressSettings,
        intake: Intake,
        *,
        verifiers: Mapping[tuple[str, str], signatures.Scheme] | None = None,
        clock: Callable[[], float] = time.time,
        skip_verification_for_bench: bool = False,
    ) -> None:
        if skip_verification_for_bench:
            log.warning(
                "webhook signatures are NOT verified (benchmark mode)",
                extra={"event": "ingress.unverified"},
            )
        from_vault = verifiers or {}
        self._routes = {
            (s.tenant, s.name): Route(
                s,
                from_vault.get((s.tenant, s.name)) or s.verifier(),
                TokenBucket(s.rate_limit_per_minute),
            )
            for s in config.sources
        }
        self._intake = intake
        self._clock = clock
        self._verify = not skip_verification_for_bench
        self._enqueue_timeout = config.enqueue_timeout_seconds
        self._body_timeout = config.body_timeout_seconds
        self.budget = guard.BodyBudget(config.body_budget_bytes)
        self._trimmer = guard.Trimmer(self.budget)
        self._throttle = guard.Throttle()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every answer is short JSON, counted by status; the reason of a refusal goes to the
        log, throttled."""
        response = await self._respond(request)
        metrics.WEBHOOK_REQUESTS.labels(str(response.status)).inc()
        return response

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            with self._holding() as held:
                return await self._accept(request, held)
        except _Rejected as rejected:
            self._log_refusal(request, rejected)
            response = _answer(rejected.status, rejected.detail, rejected.headers)
            if rejected.close:
                response.force_close()
            return response
        except Exception:
            left_out = self._throttle.admit("ingress.failed")
            if left_out is not None:
                log.exception(
                    "delivery failed: %s %s%s",
                    request.method,
                    request.path,
                    _left_out(left_out),
                    extra={"event": "ingress.failed", "left_out": left_out},
                )
            response = _answer(500)
            response.force_close()
            return response

    @contextlib.contextmanager
    def _holding(self) -> Iterator[_Held]:
        held = _Held(self.budget)
        try:
            yield held
        finally:
            self.budget.give_back(held.size)
            if held.size >= _READ_CHUNK and self.budget.used == 0:
                self._trimmer.emptied(asyncio.get_running_loop())

    def _log_refusal(self, request: web.BaseRequest, rejected: _Rejected) -> None:
        kind = f"ingress.rejected.{rejected.status}"
        left_out = self._throttle.admit(kind)
        if left_out is None:
            return
        log.log(
            logging.WARNING if rejected.status >= 500 else logging.INFO,
            "refused %s %s: %d %s%s",
            request.method,
            request.path,
            rejected.status,
            rejected.detail,
            _left_out(left_out),
            extra={
                "event": "ingress.rejected",
                "status": rejected.status,
                "left_out": left_out,
                "method": request.method,
                "path": request.path,
            },
        )

    def _route(self, request: web.BaseRequest) -> Route:
        matched = _PATH.fullmatch(request.path)
        route = self._routes.get((matched[1], matched[2])) if matched else None
        if route is None or request.method != hdrs.METH_POST:
            raise _Rejected(404, "no such source")
        return route

    async def _accept(self, request: web.BaseRequest, held: _Held) -> web.Response:
        route = self._route(request)
        source = route.source
        body = await self._read_body(request, source.max_body_bytes, held)
        headers = _scheme_headers(request, route.verifier.headers)
        try:
            if self._verify:
                delivery_id = route.verifier.verify(headers, body, now=self._clock())
            else:
                delivery_id = route.verifier.delivery_id(headers, body)
        except (signatures.MalformedDeliveryError, signatures.SignatureError) as exc:
            raise _Rejected(exc.http_status, exc.message) from exc
        wait = route.bucket.take()
        if wait:
            retry_after = str(max(1, math.ceil(wait)))
            raise _Rejected(429, "over the rate limit", {"Retry-After": retry_after})
        try:
            task_input = payload.task_input(
                source=source.name, delivery_id=delivery_id, headers=request.headers, body=body
            )
        except signatures.MalformedDeliveryError as exc:
            raise _Rejected(400, exc.message) from exc
        if source.agent is not None and source.prompt is not None:
            task_input = _agent_input(source.agent, source.prompt, source.tenant, task_input)
        submitted = await self._enqueue(
            route,
            delivery_id=delivery_id,
            task_input=task_input,
            body_sha256=None if route.verifier.signs_delivery else hashlib.sha256(body).digest(),
        )
        if not submitted.created:
            log.info(
                "duplicate delivery %s of %s/%s: task %d",
                delivery_id,
                source.tenant,
                source.name,
                submitted.task_id,
                extra={"event": "ingress.duplicate", "task_id": submitted.task_id},
            )
            return web.json_response({"task_id": submitted.task_id, "duplicate": True}, status=200)
        return web.json_response({"task_id": submitted.task_id}, status=202)

    async def _enqueue(
        self, route: Route, *, delivery_id: str, task_input: Any, body_sha256: bytes | None
    ) -> models.Submitted:
        unavailable = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        try:
            async with asyncio.timeout(self._enqueue_timeout):
                return await self._intake.enqueue(
                    tenant_id=route.source.tenant,
                    source=route.source.name,
                    workflow=route.source.workflow,
                    delivery_id=delivery_id,
                    task_input=task_input,
                    body_sha256=body_sha256,
                )
        except TimeoutError as exc:
            raise _Rejected(503, "Postgres did not take the delivery in time", unavailable) from exc
        except (errors.DependencyError, errors.LockedError) as exc:
            raise _Rejected(503, exc.message, unavailable) from exc
        except errors.UnknownTenantError as exc:
            raise _Rejected(404, exc.message) from exc
        except errors.IdempotencyConflictError as exc:  # the key is another task's
            raise _Rejected(409, exc.message) from exc
        except errors.InputError as exc:  # the engine refused the input the body made
            raise _Rejected(400, exc.message) from exc

    async def _read_body(self, request: web.BaseRequest, limit: int, held: _Held) -> bytes:
        """The body, within the source's limit, the budget and the deadline; 100 Continue only
        once the body will be read."""
        length = request.content_length
        if length is not None and length > limit:
            raise _Rejected(
                413, f"the Content-Length {length} is over the limit of {limit} bytes", close=True
            )
        if length is not None and not held.take(length):
            raise _Rejected(503, "the body budget is spent", _busy(), close=True)
        await _continue(request)
        body = bytearray()
        try:
            async with asyncio.timeout(self._body_timeout):
                while chunk := await request.content.read(_READ_CHUNK):
                    if len(body) + len(chunk) > limit:
                        raise _Rejected(413, f"the body is over {limit} bytes", close=True)
                    if length is None and not held.take(len(chunk)):
                        raise _Rejected(503, "the body budget is spent", _busy(), close=True)
                    body.extend(chunk)
        except TimeoutError as exc:
            raise _Rejected(
                408, f"the body did not arrive within {self._body_timeout:.0f}s", close=True
            ) from exc
        except web.RequestPayloadError as exc:
            broken = "the body's framing is broken (its length or its chunks)"
            raise _Rejected(400, broken, close=True) from exc
        return bytes(body)


def _left_out(count: int) -> str:
    return f" ({count} more like it not logged)" if count else ""


def _busy() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def _continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` (only now that the body is wanted)."""
    expect = request.headers.get(hdrs.EXPECT)
    if expect is None:
        return
    if expect.lower() != "100-continue":
        raise _Rejected(417, "the only expectation served is 100-continue", close=True)
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def _scheme_headers(request: web.BaseRequest, names: tuple[str, ...]) -> dict[str, str]:
    """The scheme's headers, by lower-case name; a header sent twice is malformed."""
    picked: dict[str, str] = {}
    for name in names:
        values = request.headers.getall(name, [])
        if len(values) > 1:
            raise _Rejected(400, f"the {name} header is sent {len(values)} times")
        if values:
            picked[name] = values[0]
    return picked


def _agent_input(agent: str, prompt: str, tenant: str, delivery: dict[str, Any]) -> dict[str, str]:
    """An agent source's task input: its prompt filled from the delivery (422 if it does not
    fit: the sender, or the source's prompt, must change)."""
    try:
        filled = triggers.render(prompt, "webhook", {**delivery, "tenant": tenant})
    except triggers.TriggerInputError as exc:
        raise _Rejected(422, exc.message) from exc
    return triggers.agent_input(agent, filled)
