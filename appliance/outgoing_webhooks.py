"""Outgoing webhooks: the outbox's events POSTed to the HTTP endpoints the operator configured.

    [[outbox.webhooks]]
    name = "ops"
    url = "https://hooks.example.com/appliance"
    secret_ref = "outbox/ops"            # appliance secrets set outbox ops --from-file FILE
    events = ["task.failed", "task.succeeded", "approval.*"]
    tenants = ["acme"]

The relay offers each batch to the `FanOut` sink, which accepts it by writing one delivery per
endpoint whose filters match each event (`outgoing_deliveries`, at least once). The
`Dispatcher` then works each endpoint's queue on its own, in the process whose relay ships
(it holds the relay lock): in event order per task at that endpoint, a refused delivery retried
with backoff (`outbox.retry_base_seconds`, doubling to `outbox.retry_max_seconds`) and holding
back the later events of its task there, never dropped. An endpoint that is down holds back
only its own queue.

Each request is signed with Standard Webhooks: `webhook-id` (the event's id, the same on every
retry, for de-duplication), `webhook-timestamp` (this attempt's time) and `webhook-signature`
(`v1,<base64>` of HMAC-SHA256 over `{id}.{timestamp}.{body}`, one per secret line while the
receiver's secret is rotated). The body is `{"type", "timestamp", "data"}`, `data` being the
event as every sink ships it. Only a 2xx answer counts as delivered.

Never to an address the operator did not configure: the URL comes from the config only, never
from an event; redirects are not followed (a 3xx is a failed delivery); no proxy or netrc of the
environment is used, and no cookie is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from appliance import __version__, errors, models, redaction, settings, vault
from appliance.db import outgoing_webhooks as dbwebhooks
from appliance.db import pool as dbpool
from appliance.engine import backoff
from appliance.ingress import signatures

log = logging.getLogger(__name__)

INTEGRATION = "outbox"  # the vault's integration of the signing secrets
_ERROR_CHARS = 500
_DOWN_AFTER = 3  # tasks refused in a row, none accepted: the endpoint is down, not one event
_STANDBY_SECONDS = 3.0
_RECONNECT_MAX_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A configured endpoint with its signing secrets, read from the vault."""

    config: settings.OutgoingWebhook
    secrets: tuple[str, ...] = dataclasses.field(repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    def wants(self, message: dict[str, Any]) -> bool:
        """Whether the endpoint's filters let this event through."""
        tenants = self.config.tenants
        if settings.EVERY_TENANT not in tenants and message["tenant_id"] not in tenants:
            return False
        return any(fnmatch.fnmatchcase(message["type"], kind) for kind in self.config.events)


def set_command(config: settings.Settings, webhook: settings.OutgoingWebhook) -> str:
    """The command that stores the endpoint's signing secret in the vault."""
    name = webhook.secret_ref.removeprefix(INTEGRATION + "/")
    return (
        f"appliance secrets set {INTEGRATION} {name} --tenant {config.default_tenant} "
        "--from-file FILE"
    )


async def read_endpoints(pool: dbpool.Pool, config: settings.Settings) -> list[Endpoint]:
    """Every configured endpoint with its secrets: MissingSecretError (exit 78) naming the
    endpoint and the command when one is not in the vault, ConfigError when one is not a
    Standard Webhooks secret. Each secret is registered for redaction."""
    if not config.outbox.webhooks:
        return []
    box = await vault.open_vault(pool, vault.configured_key(config))
    return [await _endpoint(pool, box, config, w) for w in config.outbox.webhooks]


async def _endpoint(
    pool: dbpool.Pool,
    box: vault.Vault,
    config: settings.Settings,
    webhook: settings.OutgoingWebhook,
) -> Endpoint:
    where = f"outbox webhook {webhook.name}"
    name = webhook.secret_ref.removeprefix(INTEGRATION + "/")
    try:
        value = await vault.read_secret(
            pool,
            box,
            tenant_id=config.default_tenant,
            integration=INTEGRATION,
            workflow=vault.WILDCARD,
            name=name,
        )
    except errors.NotFoundError as exc:
        raise errors.MissingSecretError(
            f"{where}: its signing secret {webhook.secret_ref} is not in the vault of tenant "
            f"{config.default_tenant}; set it with: {set_command(config, webhook)}"
        ) from exc
    try:
        lines = tuple(line for line in value.decode("utf-8").splitlines() if line)
        for line in lines:
            signatures.StandardWebhooks.key(line)
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(
            f"{where}: the vault secret {webhook.secret_ref} is not UTF-8 text"
        ) from exc
    except errors.ConfigError as exc:
        raise errors.ConfigError(
            f"{where}: the vault secret {webhook.secret_ref} is not a Standard Webhooks signing "
            f"secret: {exc.message}"
        ) from exc
    if not lines:
        raise errors.ConfigError(f"{where}: the vault secret {webhook.secret_ref} is empty")
    for line in lines:
        redaction.registry.add(line, f"{config.default_tenant}/{INTEGRATION}/{name}")
    return Endpoint(webhook, lines)


# ---- the sink --------------------------------------------------------------------------------


class FanOut:
    """The relay's sink: a batch is accepted once each event's deliveries are written."""

    name = "webhooks"

    def __init__(
        self, pool: dbpool.Pool, endpoints: Sequence[Endpoint], wake: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._endpoints = tuple(endpoints)
        self._wake = wake

    async def deliver(self, messages: Sequence[dict[str, Any]]) -> None:
        pairs = [(e.name, m["seq"]) for m in messages for e in self._endpoints if e.wants(m)]
        if not pairs:
            return
        await dbwebhooks.enqueue_deliveries(
            self._pool, endpoints=[p[0] for p in pairs], event_seqs=[p[1] for p in pairs]
        )
        self._wake()


# ---- requests --------------------------------------------------------------------------------


def body_of(event: models.OutboxEvent) -> bytes:
    """The request body: Standard Webhooks' `{type, timestamp, data}` around the event."""
    message = event.as_message()
    document = {"type": event.type, "timestamp": message["created_at"], "data": message}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def headers_of(endpoint: Endpoint, event_id: str, body: bytes, *, now: float) -> dict[str, str]:
    """The signed headers of one attempt."""
    timestamp = int(now)
    signed = " ".join(
        signatures.sign_standard(secret, event_id, timestamp, body) for secret in endpoint.secrets
    )
    return {
        "content-type": "application/json",
        "user-agent": f"appliance/{__version__}",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signed,
    }


async def post(
    session: aiohttp.ClientSession, endpoint: Endpoint, event: models.OutboxEvent
) -> str | None:
    """POST one event to the endpoint; None when it answered 2xx, else a one-line reason."""
    body = body_of(event)
    headers = headers_of(endpoint, event.event_id, body, now=time.time())
    timeout = aiohttp.ClientTimeout(total=endpoint.config.timeout_seconds)
    try:
        async with session.post(
            endpoint.config.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
        ) as answer:
            if 200 <= answer.status < 300:
                return None
            if 300 <= answer.status < 400:
                return f"answered {answer.status} (a redirect, which is not followed)"
            return f"answered {answer.status}"
    except TimeoutError:
        return f"no answer within {endpoint.config.timeout_seconds:g}s"
    except aiohttp.ClientError as exc:
        text = " ".join(str(exc).split())
        return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:_ERROR_CHARS]


# ---- the dispatcher --------------------------------------------------------------------------


class Dispatcher:
    """Works each endpoint's queue while `leading()` says this process's relay ships."""

    def __init__(
        self,
        pool: dbpool.Pool,
        endpoints: Sequence[Endpoint],
        config: settings.OutboxSettings,
        *,
        leading: Callable[[], bool],
        poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._endpoints = tuple(endpoints)
        self._config = config
        self._leading = leading
        self._poll_seconds = poll_seconds
        self._wakes = {e.name: asyncio.Event() for e in self._endpoints}
        self._failing: set[str] = set()

    def wake(self) -> None:
        """New deliveries were written: look at the queues now."""
        for event in self._wakes.values():
            event.set()

    async def run(self) -> None:
        """Deliver until cancelled, one loop per endpoint."""
        async with _session() as session, asyncio.TaskGroup() as group:
            for endpoint in self._endpoints:
                group.create_task(self._work(session, endpoint), name=f"webhook.{endpoint.name}")

    async def ship_once(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> int:
        """Deliver one batch of the endpoint's due deliveries; returns how many were due."""
        due = await dbwebhooks.fetch_due_deliveries(
            self._pool, endpoint=endpoint.name, limit=self._config.batch_size
        )
        done: list[int] = []
        failed: dict[int, tuple[str, int]] = {}  # event_seq: (reason, attempts so far)
        held: dict[tuple[str, int | None], str] = {}  # tasks refused in this batch: why
        for event in due:
            stream = (event.tenant_id, event.task_id)
            reason = held.get(stream)
            if reason is None and not done and len(held) >= _DOWN_AFTER:
                reason = next(iter(held.values()))  # down: the rest waits its backoff too
            if reason is None:
                reason = await post(session, endpoint, event)
            if reason is None:  # recorded at once: a crash re-sends as little as it can
                await dbwebhooks.mark_deliveries_done(
                    self._pool, endpoint=endpoint.name, event_seqs=[event.event_seq]
                )
                done.append(event.event_seq)
                continue
            held.setdefault(stream, reason)
            failed[event.event_seq] = (held[stream], event.attempts)
        if failed:
            await dbwebhooks.mark_deliveries_failed(
                self._pool,
                endpoint=endpoint.name,
                event_seqs=list(failed),
                last_errors=[reason for reason, _ in failed.values()],
                delays=[
                    backoff.delay(
                        attempts + 1,
                        base=self._config.retry_base_seconds,
                        cap=self._config.retry_max_seconds,
                    )
                    for _, attempts in failed.values()
                ],
            )
        self._report(endpoint, failed, delivered=bool(done))
        return len(due)

    async def _work(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        wake = self._wakes[endpoint.name]
        failures = 0
        while True:
            wake.clear()
            if not self._leading():
                await _wait(wake, _STANDBY_SECONDS)
                continue
            try:
                due = await self.ship_once(session, endpoint)
            except errors.ApplianceError as exc:
                failures += 1
                log.debug("%s", exc, extra={"event": "webhooks.round_failed"})
                await asyncio.sleep(backoff.delay(failures, base=0.5, cap=_RECONNECT_MAX_SECONDS))
                continue
            failures = 0
            if due < self._config.batch_size:
                await _wait(wake, self._poll_seconds)

    def _report(
        self, endpoint: Endpoint, failed: dict[int, tuple[str, int]], *, delivered: bool
    ) -> None:
        """Log an endpoint's failures once as they start, and once when it delivers again."""
        if failed and endpoint.name not in self._failing:
            self._failing.add(endpoint.name)
            reason = next(iter(failed.values()))[0]
            log.warning(
                "webhook %s refused %d event(s), retrying with backoff: %s",
                endpoint.name,
                len(failed),
                reason,
                extra={"event": "webhooks.delivery_failed", "endpoint": endpoint.name},
            )
        elif delivered and not failed and endpoint.name in self._failing:
            self._failing.discard(endpoint.name)
            log.info(
                "webhook %s delivers again",
                endpoint.name,
                extra={"event": "webhooks.recovered", "endpoint": endpoint.name},
            )


def _session() -> aiohttp.ClientSession:
    """A client that uses no proxy or netrc of the environment and keeps no cookies."""
    return aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
