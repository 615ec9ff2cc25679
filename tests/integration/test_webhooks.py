"""The public webhook endpoint over a real listener on 127.0.0.1 and the real Postgres: durable
202s, replays without a second task, and every refusal with nothing enqueued and nothing
internal in its answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from appliance import errors, metrics, models, settings
from appliance.db import ingress as dbingress
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry
from appliance.ingress import intake as ingress_intake
from appliance.ingress import public, signatures, webhooks

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(30)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GH_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_stripe_test_secret"
WORKFLOW = "test.hook"
TINY = 64
EVENT = {"type": "invoice.paid", "data": {"amount": 1999}}


def workflows() -> registry.Registry:
    """A registry with the one workflow the sources start."""
    reg = registry.Registry()

    @reg.workflow(WORKFLOW)
    async def hook(ctx: context.TaskContext, task_input: Any) -> Any:
        return None

    return reg


def sources() -> tuple[settings.Source, ...]:
    """The configured senders: one per scheme, a tiny body limit, a low rate limit, and a
    tenant that is configured but does not exist in the database."""

    def make(tenant: str, name: str, secret: str, **overrides: Any) -> settings.Source:
        values = {"tenant": tenant, "name": name, "secrets": [secret], "workflow": WORKFLOW}
        return settings.Source.model_validate({**values, **overrides})

    return (
        make("default", "billing", SECRET),
        make("acme", "billing", SECRET),
        make("default", "repo", GH_SECRET, scheme="github"),
        make("default", "payments", STRIPE_SECRET, scheme="stripe"),
        make("default", "tiny", SECRET, max_body_bytes=TINY),
        make("default", "limited", SECRET, rate_limit_per_minute=2),
        make("ghost", "billing", SECRET),
    )


@dataclasses.dataclass
class Endpoint:
    """The served app's base URL and a client session."""

    base: str
    session: aiohttp.ClientSession

    def url(self, tenant: str = "default", source: str = "billing") -> str:
        return f"{self.base}/hooks/{tenant}/{source}"

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Any, Mapping[str, str]]:
        """POST and return (status, JSON body, headers)."""
        async with self.session.post(url, data=body, headers=dict(headers)) as response:
            return response.status, await response.json(), response.headers

    async def deliver(
        self,
        body: bytes | None = None,
        *,
        tenant: str = "default",
        source: str = "billing",
        delivery_id: str = "msg_1",
        timestamp: int | None = None,
        secret: str = SECRET,
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Send a Standard Webhooks delivery signed with `secret`."""
        body = json.dumps(EVENT).encode() if body is None else body
        return await self.post(
            self.url(tenant, source), body, signed(body, delivery_id, timestamp, secret)
        )


def signed(
    body: bytes, delivery_id: str, timestamp: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    """Standard Webhooks headers for this body."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signatures.sign_standard(secret, delivery_id, stamp, body),
    }


@contextlib.asynccontextmanager
async def serving(
    intake: webhooks.Intake, *, enqueue_timeout: float = 10.0
) -> AsyncIterator[Endpoint]:
    """The ingress app on 127.0.0.1 (a free port) for the block."""
    config = settings.IngressSettings(
        enabled=True, sources=sources(), enqueue_timeout_seconds=enqueue_timeout
    )
    listener = await public.listen(
        webhooks.Endpoint(config, intake),
        host="127.0.0.1",
        port=0,
        limits=public.Limits.of(config),
    )
    try:
        async with aiohttp.ClientSession() as session:
            yield Endpoint(f"http://127.0.0.1:{listener.port}", session)
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def durable_intake(pool: dbpool.Pool) -> AsyncIterator[ingress_intake.DurableIntake]:
    """An intake over the pool, closed after the block."""
    intake = ingress_intake.DurableIntake(pool, workflows(), settings.EngineSettings())
    try:
        yield intake
    finally:
        await intake.close()


@pytest_asyncio.fixture(loop_scope="session")
async def endpoint(db: dbpool.Pool) -> AsyncIterator[Endpoint]:
    """A fresh ingress app (fresh rate limits) over the emptied database."""
    async with durable_intake(db) as intake, serving(intake) as served:
        yield served


async def tasks(db: dbpool.Pool) -> list[models.Task]:
    """Every task, newest first."""
    return await dbtasks.list_tasks(db, limit=1000)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestAccepted:
    async def test_a_verified_delivery_is_enqueued(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """202 with the task id of a committed task of the source's workflow and tenant."""
        status, answer, _ = await endpoint.deliver()
        assert status == 202
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert (task.tenant_id, task.workflow, task.state) == ("default", WORKFLOW, "queued")
        assert task.idempotency_key == "hook:billing:msg_1"

    async def test_the_task_input_holds_the_delivery(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """Input: source, delivery id, decoded JSON body, and only the safe headers."""
        _, answer, _ = await endpoint.deliver()
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert task.input == {
            "source": "billing",
            "delivery_id": "msg_1",
            "headers": {
                "content-type": "application/json",
                "user-agent": task.input["headers"]["user-agent"],
                "webhook-id": "msg_1",
            },
            "body": EVENT,
        }

    async def test_a_body_that_is_not_json_is_passed_as_text(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """An opaque body is verified as bytes and handed to the task as its text."""
        _, answer, _ = await endpoint.deliver(b"a=1&b=NaN")
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert task.input["body"] == "a=1&b=NaN"

    async def test_a_body_that_is_not_utf8_is_passed_as_base64(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """Bytes that are not UTF-8 reach the task base64-encoded, with body null."""
        _, answer, _ = await endpoint.deliver(b"\xff\xfe\x00")
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert (task.input["body"], task.input["body_base64"]) == (None, "//4A")

    async def test_the_delivery_id_is_recorded_with_its_task(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """The webhook_deliveries row names the task the delivery enqueued."""
        _, answer, _ = await endpoint.deliver()
        found = await dbingress.find_delivery(
            db, tenant_id="default", source="billing", delivery_id="msg_1"
        )
        assert found == answer["task_id"]

    async def test_a_github_delivery_is_enqueued(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """A GitHub-signed delivery is enqueued under its X-GitHub-Delivery id."""
        body = b'{"action": "opened"}'
        headers = {
            "x-hub-signature-256": signatures.sign_github(GH_SECRET, body),
            "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "x-github-event": "issues",
        }
        status, answer, _ = await endpoint.post(endpoint.url(source="repo"), body, headers)
        assert status == 202
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert task.input["headers"]["x-github-event"] == "issues"
        assert task.idempotency_key == "hook:repo:72d3162e-cc78-11e3-81ab-4c9367dc0958"

    async def test_a_stripe_delivery_is_enqueued(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """A Stripe-signed event is enqueued under its event id."""
        body = b'{"id": "evt_1", "object": "event"}'
        header = signatures.sign_stripe(STRIPE_SECRET, int(time.time()), body)
        status, answer, _ = await endpoint.post(
            endpoint.url(source="payments"), body, {"stripe-signature": header}
        )
        assert status == 202
        task = await dbtasks.get_task(db, answer["task_id"])
        assert task is not None
        assert task.idempotency_key == "hook:payments:evt_1"

    async def test_the_same_delivery_id_of_two_tenants_makes_two_tasks(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """Delivery ids are remembered per tenant."""
        first = await endpoint.deliver(tenant="default")
        second = await endpoint.deliver(tenant="acme")
        assert (first[0], second[0]) == (202, 202)
        assert len(await tasks(db)) == 2

    async def test_the_answer_names_no_server_software(self, endpoint: Endpoint) -> None:
        """No Server header tells which framework or Python answers."""
        _, _, headers = await endpoint.deliver()
        assert "Server" not in headers


class TestCounted:
    async def test_each_answer_counts_by_status_in_the_metrics(self, endpoint: Endpoint) -> None:
        """appliance_webhook_requests_total grows by one per answer, under its status code."""

        def counted(code: str) -> float:
            value = metrics.REGISTRY.get_sample_value(
                "appliance_webhook_requests_total", {"code": code}
            )
            return value or 0.0

        before = counted("202"), counted("404")
        await endpoint.deliver(delivery_id="msg_counted")
        await endpoint.deliver(source="nothing")
        await endpoint.deliver(source="nothing")
        assert (counted("202"), counted("404")) == (before[0] + 1, before[1] + 2)


class TestReplay:
    async def test_a_replayed_delivery_is_answered_with_its_task(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """The same delivery again: 200 with the first task id and duplicate, no second task."""
        body = json.dumps(EVENT).encode()
        headers = signed(body, "msg_1")
        _, first, _ = await endpoint.post(endpoint.url(), body, headers)
        status, again, _ = await endpoint.post(endpoint.url(), body, headers)
        assert (status, again) == (200, {"task_id": first["task_id"], "duplicate": True})
        assert len(await tasks(db)) == 1

    async def test_a_retry_signed_again_later_is_a_duplicate(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A sender's retry (same id and body, a new timestamp and signature) adds no task."""
        await endpoint.deliver(timestamp=int(time.time()) - 60)
        status, answer, _ = await endpoint.deliver()
        assert (status, answer["duplicate"]) == (200, True)
        assert len(await tasks(db)) == 1

    async def test_a_reused_id_with_another_body_is_a_duplicate(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """The id is the idempotency key: another body under it gets the first task."""
        _, first, _ = await endpoint.deliver(b'{"n": 1}')
        status, again, _ = await endpoint.deliver(b'{"n": 2}')
        assert (status, again) == (200, {"task_id": first["task_id"], "duplicate": True})
        assert len(await tasks(db)) == 1

    async def test_concurrent_copies_make_one_task(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """Ten copies sent at once: one 202, nine duplicates of the same task."""
        body = json.dumps(EVENT).encode()
        headers = signed(body, "msg_1")
        answers = await asyncio.gather(
            *(endpoint.post(endpoint.url(), body, headers) for _ in range(10))
        )
        assert sorted(status for status, _, _ in answers) == [200] * 9 + [202]
        assert len({answer["task_id"] for _, answer, _ in answers}) == 1
        assert len(await tasks(db)) == 1

    async def test_replay_protection_outlives_the_process_state(self, db: dbpool.Pool) -> None:
        """A new app and intake (as after a restart) still know the delivery id."""
        async with durable_intake(db) as intake, serving(intake) as before:
            _, first, _ = await before.deliver()
        async with durable_intake(db) as intake, serving(intake) as after:
            status, again, _ = await after.deliver()
        assert (status, again["task_id"]) == (200, first["task_id"])
        assert len(await tasks(db)) == 1


def github(body: bytes, delivery_id: str, event: str = "issues") -> dict[str, str]:
    """GitHub's headers for this body: its signature, a delivery id, an event."""
    return {
        "x-hub-signature-256": signatures.sign_github(GH_SECRET, body),
        "x-github-delivery": delivery_id,
        "x-github-event": event,
    }


class TestGitHubReplay:
    BODY = b'{"action": "opened", "issue": {"number": 7}}'

    async def test_a_captured_body_under_a_fresh_delivery_id_is_a_duplicate(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """GitHub signs the body only: the same signed body under new ids (and another event
        header) is answered with the first task, no second task."""
        url = endpoint.url(source="repo")
        _, first, _ = await endpoint.post(url, self.BODY, github(self.BODY, "guid-1"))
        replays = [
            await endpoint.post(url, self.BODY, github(self.BODY, f"guid-{n}", event))
            for n, event in ((2, "issues"), (3, "push"), (4, "issues"))
        ]
        assert [(status, answer) for status, answer, _ in replays] == [
            (200, {"task_id": first["task_id"], "duplicate": True})
        ] * 3
        assert len(await tasks(db)) == 1

    async def test_concurrent_replays_under_many_ids_make_one_task(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """Ten copies of one body, each under its own id, sent at once: one task."""
        url = endpoint.url(source="repo")
        answers = await asyncio.gather(
            *(endpoint.post(url, self.BODY, github(self.BODY, f"guid-{n}")) for n in range(10))
        )
        assert sorted(status for status, _, _ in answers) == [200] * 9 + [202]
        assert len({answer["task_id"] for _, answer, _ in answers}) == 1
        assert len(await tasks(db)) == 1

    async def test_other_bodies_are_other_deliveries(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A body differing by one byte is a new delivery."""
        url = endpoint.url(source="repo")
        other = self.BODY.replace(b"7", b"8")
        statuses = [
            (await endpoint.post(url, body, github(body, f"guid-{n}")))[0]
            for n, body in enumerate((self.BODY, other))
        ]
        assert statuses == [202, 202]
        assert len(await tasks(db)) == 2

    async def test_the_body_is_remembered_per_source_and_tenant(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """The same body to another source is that source's own delivery."""
        await endpoint.post(endpoint.url(source="repo"), self.BODY, github(self.BODY, "g1"))
        status, _, _ = await endpoint.deliver(self.BODY, delivery_id="g1")
        assert status == 202
        assert len(await tasks(db)) == 2

    async def test_the_replay_protection_outlives_the_process_state(self, db: dbpool.Pool) -> None:
        """A new app and intake (as after a restart) still know the body."""
        async with durable_intake(db) as intake, serving(intake) as before:
            url = before.url(source="repo")
            _, first, _ = await before.post(url, self.BODY, github(self.BODY, "g1"))
        async with durable_intake(db) as intake, serving(intake) as after:
            status, again, _ = await after.post(
                after.url(source="repo"), self.BODY, github(self.BODY, "g2")
            )
        assert (status, again["task_id"]) == (200, first["task_id"])

    async def test_standard_webhooks_deliveries_are_not_merged_by_body(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A scheme that signs its ids: the same body under two ids is two deliveries."""
        for delivery_id in ("msg_1", "msg_2"):
            status, _, _ = await endpoint.deliver(self.BODY, delivery_id=delivery_id)
            assert status == 202
        assert len(await tasks(db)) == 2


class TestStorableBodies:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"amount": 1e999}',
            b'{"name": "\\u0000"}',
            b'{"name": "\\ud800"}',
            b'{"id": 1, "id": 2}',
            b"[" * 5000 + b"]" * 5000,
            b'{"n": ' + b"7" * 5000 + b"}",
            b"NaN",
        ],
    )
    async def test_a_signed_body_postgres_cannot_store_is_400(
        self, endpoint: Endpoint, db: dbpool.Pool, body: bytes
    ) -> None:
        """Correctly signed, but not storable as sent: 400 with a reason, never a 500."""
        status, answer, _ = await endpoint.deliver(body)
        assert (status, answer["error"]) == (400, "bad request")
        assert answer["reason"].startswith("the body is JSON")
        assert await tasks(db) == []

    async def test_a_forwarded_header_that_is_not_utf8_is_400(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A User-Agent of bytes that are not UTF-8 (raw, as a socket sends them): 400."""
        body = b"{}"
        headers = signed(body, "msg_1")
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        raw = (
            b"POST /hooks/default/billing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + lines
            + b"User-Agent: \xff\xfe\r\nContent-Length: 2\r\n\r\n"
            + body
        )
        host, port = endpoint.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert await tasks(db) == []


async def refused(
    db: dbpool.Pool,
    answer: tuple[int, Any, Mapping[str, str]],
    status: int,
    error: str,
) -> None:
    """The answer is `status` with {"error": error} (and, for a refusal the sender can fix, a
    one-line reason), and nothing was enqueued."""
    got_status, body, _ = answer
    reason = body.pop("reason", None)
    assert (got_status, body) == (status, {"error": error})
    assert reason is None or (status in (400, 408, 413) and "\n" not in reason)
    assert await tasks(db) == []


class TestRefused:
    async def test_a_bad_signature_is_401(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """Signed with another secret: 401, nothing enqueued."""
        other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
        await refused(db, await endpoint.deliver(secret=other), 401, "unauthorized")

    async def test_a_missing_signature_is_401(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """No webhook-signature header: 401."""
        body = b"{}"
        headers = signed(body, "msg_1")
        del headers["webhook-signature"]
        await refused(db, await endpoint.post(endpoint.url(), body, headers), 401, "unauthorized")

    async def test_a_stale_timestamp_is_401(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """Correctly signed 301 s ago: 401."""
        stale = int(time.time()) - 301
        await refused(db, await endpoint.deliver(timestamp=stale), 401, "unauthorized")

    async def test_a_future_timestamp_is_401(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """Correctly signed for 10 minutes from now: 401."""
        future = int(time.time()) + 600
        await refused(db, await endpoint.deliver(timestamp=future), 401, "unauthorized")

    async def test_a_missing_delivery_id_is_400(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """No webhook-id header: 400."""
        body = b"{}"
        headers = signed(body, "msg_1")
        del headers["webhook-id"]
        await refused(db, await endpoint.post(endpoint.url(), body, headers), 400, "bad request")

    async def test_a_header_sent_twice_is_400(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """Two webhook-id headers are ambiguous: 400."""
        body = b"{}"
        headers = [*signed(body, "msg_1").items(), ("webhook-id", "msg_2")]
        async with endpoint.session.post(endpoint.url(), data=body, headers=headers) as response:
            answer = (response.status, await response.json(), response.headers)
        await refused(db, answer, 400, "bad request")

    async def test_a_stripe_body_that_is_no_event_is_400(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A correctly signed Stripe body without an event id: 400."""
        body = b"[]"
        header = signatures.sign_stripe(STRIPE_SECRET, int(time.time()), body)
        answer = await endpoint.post(
            endpoint.url(source="payments"), body, {"stripe-signature": header}
        )
        await refused(db, answer, 400, "bad request")

    async def test_an_unknown_tenant_is_404(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """A tenant with no configured source: 404."""
        await refused(db, await endpoint.deliver(tenant="nobody"), 404, "not found")

    async def test_an_unknown_source_is_404(self, endpoint: Endpoint, db: dbpool.Pool) -> None:
        """A known tenant, a source it does not have: 404."""
        await refused(db, await endpoint.deliver(source="nothing"), 404, "not found")

    async def test_a_configured_tenant_missing_from_the_database_is_404(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A source whose tenant does not exist in Postgres: 404, like an unknown tenant."""
        await refused(db, await endpoint.deliver(tenant="ghost"), 404, "not found")

    async def test_a_declared_length_over_the_limit_is_413(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A Content-Length over the source's limit: 413 before the body is read."""
        answer = await endpoint.deliver(b"x" * (TINY + 1), source="tiny")
        await refused(db, answer, 413, "payload too large")

    async def test_a_chunked_body_over_the_limit_is_413(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """A body without Content-Length is cut off once it passes the limit: 413."""
        body = b"x" * (TINY * 4)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), TINY // 2):
                yield body[start : start + TINY // 2]

        headers = signed(body, "msg_1")
        async with endpoint.session.post(
            endpoint.url(source="tiny"), data=chunks(), headers=headers
        ) as response:
            assert "Content-Length" not in response.request_info.headers
            answer = (response.status, await response.json(), response.headers)
        await refused(db, answer, 413, "payload too large")

    async def test_a_body_at_the_limit_is_accepted(self, endpoint: Endpoint) -> None:
        """Exactly max_body_bytes is not over the limit."""
        status, _, _ = await endpoint.deliver(b"x" * TINY, source="tiny")
        assert status == 202

    async def test_deliveries_over_the_rate_limit_are_429(
        self, endpoint: Endpoint, db: dbpool.Pool
    ) -> None:
        """The third delivery within a minute to a 2-per-minute source: 429 with retry-after."""
        for n in (1, 2):
            status, _, _ = await endpoint.deliver(source="limited", delivery_id=f"msg_{n}")
            assert status == 202
        status, body, headers = await endpoint.deliver(source="limited", delivery_id="msg_3")
        assert (status, body) == (429, {"error": "too many requests"})
        assert 1 <= int(headers["Retry-After"]) <= 30
        assert len(await tasks(db)) == 2

    async def test_forgeries_do_not_use_up_the_rate_limit(self, endpoint: Endpoint) -> None:
        """Deliveries that fail verification are not counted against the source's limit."""
        other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
        for n in range(3):
            await endpoint.deliver(source="limited", delivery_id=f"forged_{n}", secret=other)
        status, _, _ = await endpoint.deliver(source="limited")
        assert status == 202

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
    async def test_another_method_is_404(
        self, endpoint: Endpoint, db: dbpool.Pool, method: str
    ) -> None:
        """Only POST is served: any other method on a source's URL is a plain 404."""
        async with endpoint.session.request(method, endpoint.url()) as response:
            answer = (response.status, await response.json(), response.headers)
        await refused(db, answer, 404, "not found")

    @pytest.mark.parametrize(
        "path", ["/", "/healthz", "/readyz", "/metrics", "/api/tasks", "/hooks", "/hooks/default"]
    )
    async def test_any_other_path_is_404(
        self, endpoint: Endpoint, db: dbpool.Pool, path: str
    ) -> None:
        """Nothing but /hooks/<tenant>/<source> is served on this port."""
        for method in ("GET", "POST"):
            async with endpoint.session.request(method, endpoint.base + path) as response:
                answer = (response.status, await response.json(), response.headers)
            await refused(db, answer, 404, "not found")


class TestPostgresDown:
    async def test_an_unreachable_postgres_is_503(self, db: dbpool.Pool) -> None:
        """A verified delivery that cannot be committed: 503 with no detail."""
        pool = await dbpool.create_pool(
            f"postgresql://appliance@127.0.0.1:{closed_port()}/appliance",
            min_size=0,
            max_size=1,
            timeout=2,
        )
        try:
            async with durable_intake(pool) as intake, serving(intake) as down:
                await refused(db, await down.deliver(), 503, "unavailable")
        finally:
            await pool.close()

    async def test_a_postgres_that_does_not_answer_is_503(self, db: dbpool.Pool) -> None:
        """A server that accepts the connection and never answers: 503 after the timeout."""
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = await dbpool.create_pool(
            f"postgresql://appliance@127.0.0.1:{port}/appliance", min_size=0, max_size=1, timeout=1
        )
        try:
            async with (
                durable_intake(pool) as intake,
                serving(intake, enqueue_timeout=0.2) as down,
            ):
                await refused(db, await down.deliver(), 503, "unavailable")
        finally:
            await pool.close()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    async def test_a_closed_pool_is_503(self, database_dsn: str, db: dbpool.Pool) -> None:
        """The pool closed under the endpoint (the daemon losing its database): 503."""
        pool = await dbpool.create_pool(database_dsn, min_size=1, max_size=1)
        await pool.close()
        async with durable_intake(pool) as intake, serving(intake) as down:
            await refused(db, await down.deliver(), 503, "unavailable")


class TestIntake:
    async def test_a_source_naming_an_unknown_workflow_is_a_config_error(
        self, db: dbpool.Pool
    ) -> None:
        """check() refuses sources whose workflow is not registered, before serving."""
        intake = ingress_intake.DurableIntake(db, registry.Registry(), settings.EngineSettings())
        with pytest.raises(errors.ConfigError, match=WORKFLOW):
            intake.check(sources())

    async def test_a_group_with_a_failing_delivery_commits_the_others(
        self, db: dbpool.Pool
    ) -> None:
        """Deliveries committed together: one for a missing tenant fails alone."""
        async with durable_intake(db) as intake:
            outcomes = await asyncio.gather(
                *(
                    intake.enqueue(
                        tenant_id=tenant,
                        source="billing",
                        workflow=WORKFLOW,
                        delivery_id=f"msg_{n}",
                        task_input={"n": n},
                    )
                    for n, tenant in enumerate(["default", "ghost", "acme", "default"])
                ),
                return_exceptions=True,
            )
        assert isinstance(outcomes[1], errors.UnknownTenantError)
        assert all(isinstance(o, models.Submitted) and o.created for o in outcomes[::2])
        assert len(await tasks(db)) == 3
