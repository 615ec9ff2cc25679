"""Outgoing webhooks against the real Postgres and real HTTP endpoints on 127.0.0.1 that verify
every signature with the `standardwebhooks` library: filters, order per task, retries with
backoff, an endpoint down, redirects, the secrets in the vault, doctor's view."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from appliance import doctor, errors, outbox, outgoing_webhooks, settings, vault
from appliance.db import metrics as dbmetrics
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.engine import context, registry, submission
from tests.support import daemon
from tests.support import engine as support
from tests.support import receiver as endpoint_support

pytestmark = pytest.mark.timeout(30)

workflows = registry.Registry()
ENGINE = support.engine_settings(node_name="webhooks-test")


@workflows.workflow("noop")
async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
    """Only its submission (and cancel) matter here: each makes an event."""
    return task_input


def webhook(name: str, url: str, **overrides: Any) -> settings.OutgoingWebhook:
    return settings.OutgoingWebhook(name=name, url=url, secret_ref=f"outbox/{name}", **overrides)


def outbox_config(*hooks: settings.OutgoingWebhook, **overrides: Any) -> settings.OutboxSettings:
    """Refused deliveries are due again at once unless told otherwise."""
    values: dict[str, Any] = {"retry_base_seconds": 0.0, "retry_max_seconds": 0.0}
    values.update(overrides)
    return settings.OutboxSettings(sinks=(), webhooks=hooks, **values)


async def task_events(db: dbpool.Pool, tenant: str = "default") -> int:
    """A task with two events, task.submitted then task.cancelled; its id."""
    made = await submission.submit(
        db, workflows, ENGINE, tenant_id=tenant, workflow="noop", task_input={}, actor="test"
    )
    await dbtasks.cancel_task(db, task_id=made.task_id, actor="test")
    return made.task_id


class Shipping:
    """The relay's fan-out and a dispatcher over some endpoints, driven one round at a time."""

    def __init__(
        self,
        db: dbpool.Pool,
        dsn: str,
        session: aiohttp.ClientSession,
        endpoints: Sequence[outgoing_webhooks.Endpoint],
        config: settings.OutboxSettings,
    ) -> None:
        self.db, self.dsn, self.session = db, dsn, session
        self.endpoints = endpoints
        self.config = config
        self.dispatcher = outgoing_webhooks.Dispatcher(db, endpoints, config, leading=lambda: True)

    async def fan_out(self) -> None:
        """One relay round: the events become deliveries."""
        sink = outgoing_webhooks.FanOut(self.db, self.endpoints, self.dispatcher.wake)
        relay = outbox.Relay(self.db, self.dsn, self.config, [sink])
        try:
            await relay.ship_once()
        finally:
            await relay.stop()

    async def round(self) -> list[int]:
        """One delivery round of every endpoint; how many deliveries each had due."""
        return [await self.dispatcher.ship_once(self.session, e) for e in self.endpoints]


@pytest_asyncio.fixture(loop_scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as made:
        yield made


def endpoint(hook: settings.OutgoingWebhook, secret: str) -> outgoing_webhooks.Endpoint:
    return outgoing_webhooks.Endpoint(hook, (secret,))


async def deliveries(db: dbpool.Pool, name: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT event_seq, attempts, last_error, delivered_at, next_attempt_at"
        " FROM appliance.outgoing_deliveries WHERE endpoint = $1 ORDER BY event_seq",
        name,
    )
    return [dict(row) for row in rows]


class TestDelivery:
    async def test_events_arrive_signed_in_order_under_their_event_id(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession
    ) -> None:
        """Every request verifies with standardwebhooks; each task's events come in order, as
        `{type, timestamp, data}` with the event itself, `webhook-id` its stable id."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret) as got:
            hook = webhook("ops", got.url)
            shipping = Shipping(
                db, database_dsn, session, [endpoint(hook, secret)], outbox_config(hook)
            )
            first, second = await task_events(db), await task_events(db)
            await shipping.fan_out()
            await shipping.round()

        assert got.unverified == 0
        assert [(p["data"]["task_id"], p["type"]) for p in got.accepted] == [
            (first, "task.submitted"),
            (first, "task.cancelled"),
            (second, "task.submitted"),
            (second, "task.cancelled"),
        ]
        assert got.ids == [p["data"]["id"] for p in got.accepted]
        assert all(p["timestamp"] == p["data"]["created_at"] for p in got.accepted)
        assert all(d["delivered_at"] is not None for d in await deliveries(db, "ops"))

    async def test_each_endpoint_gets_only_the_event_types_and_tenants_it_asked_for(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession
    ) -> None:
        """`events = ["task.cancel*"]`, `tenants = ["acme"]`: acme's cancellations only."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret) as got:
            hook = webhook("acme-ends", got.url, events=("task.cancel*",), tenants=("acme",))
            shipping = Shipping(
                db, database_dsn, session, [endpoint(hook, secret)], outbox_config(hook)
            )
            ours = await task_events(db, "acme")
            await task_events(db, "globex")
            await shipping.fan_out()
            await shipping.round()

        assert [(p["data"]["task_id"], p["type"]) for p in got.accepted] == [
            (ours, "task.cancelled")
        ]

    async def test_the_loops_deliver_on_their_own(self, db: dbpool.Pool, database_dsn: str) -> None:
        """Relay and dispatcher running as the daemon runs them: a new task's events arrive
        without anyone asking."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret) as got:
            hook = webhook("live", got.url)
            config = outbox_config(hook)
            hooks = [endpoint(hook, secret)]
            relay: outbox.Relay
            dispatcher = outgoing_webhooks.Dispatcher(
                db, hooks, config, leading=lambda: relay.holds_lock
            )
            sink = outgoing_webhooks.FanOut(db, hooks, dispatcher.wake)
            relay = outbox.Relay(db, database_dsn, config, [sink])
            running = [asyncio.create_task(relay.run()), asyncio.create_task(dispatcher.run())]
            try:
                task_id = await task_events(db)
                await support.wait_until(
                    lambda: _returns(len(got.accepted) == 2), what="both events delivered"
                )
            finally:
                await relay.stop()
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

        assert [p["data"]["task_id"] for p in got.accepted] == [task_id, task_id]


async def _returns(value: bool) -> bool:
    return value


class TestFailures:
    async def test_a_refused_event_is_retried_and_holds_back_the_rest_of_its_task(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession
    ) -> None:
        """The endpoint answers 503 twice: the task's first event is tried three times, and its
        second is never sent before the first is accepted; another task goes on meanwhile."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret, answers=[503, 503]) as got:
            hook = webhook("flaky", got.url)
            shipping = Shipping(
                db, database_dsn, session, [endpoint(hook, secret)], outbox_config(hook)
            )
            held = await task_events(db)
            await shipping.fan_out()
            for _ in range(3):
                await shipping.round()

        assert [(p["data"]["task_id"], p["type"]) for p in got.requests] == [
            (held, "task.submitted"),
            (held, "task.submitted"),
            (held, "task.submitted"),
            (held, "task.cancelled"),
        ]
        rows = await deliveries(db, "flaky")
        assert [(r["attempts"], r["last_error"]) for r in rows] == [(3, None), (3, None)]
        assert all(r["delivered_at"] is not None for r in rows)

    async def test_a_refused_delivery_waits_its_backoff(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession
    ) -> None:
        """With a first delay of 60 s, the refused delivery is not due in the next round."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret, answers=[500]) as got:
            hook = webhook("slow", got.url)
            config = outbox_config(hook, retry_base_seconds=60.0, retry_max_seconds=600.0)
            shipping = Shipping(db, database_dsn, session, [endpoint(hook, secret)], config)
            await task_events(db)
            await shipping.fan_out()
            first = await shipping.round()
            second = await shipping.round()

        rows = await deliveries(db, "slow")
        assert (first, second, len(got.requests)) == ([2], [0], 1)
        wait = rows[0]["next_attempt_at"] - dt.datetime.now(dt.UTC)
        assert wait > dt.timedelta(seconds=20)
        assert rows[0]["last_error"] == "answered 500"

    async def test_an_endpoint_that_is_down_holds_back_only_its_own_queue(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Nothing listens at `down`'s address: `up` gets every event all the same, and doctor
        fails `down` with its error while `up` is fine."""
        secret = endpoint_support.new_secret()
        async with endpoint_support.receiving(secret) as got:
            closed = f"http://127.0.0.1:{daemon.free_port()}/hook"
            down, up = webhook("down", closed), webhook("up", got.url)
            config = outbox_config(down, up)
            shipping = Shipping(
                db, database_dsn, session, [endpoint(down, secret), endpoint(up, secret)], config
            )
            for _ in range(4):
                await task_events(db)
            await shipping.fan_out()
            await shipping.round()

        assert len(got.accepted) == 8
        rows = await deliveries(db, "down")
        assert len(rows) == 8
        assert all(r["delivered_at"] is None and r["attempts"] == 1 for r in rows)
        assert all("ClientConnectorError" in r["last_error"] for r in rows)
        checks = {c.name: c for c in await self._doctor(db, tmp_path, config)}
        assert checks["webhook down"].failed
        assert "8 undelivered, 8 failing" in checks["webhook down"].detail
        assert "last error: ClientConnectorError" in checks["webhook down"].detail
        assert checks["webhook up"].ok
        snapshot = await dbmetrics.read_metrics(db, duration_bounds=[1.0], timeout=5.0)
        assert [(w.endpoint, w.pending, w.failing) for w in snapshot.webhooks] == [("down", 8, 8)]

    async def test_a_redirect_is_not_followed(
        self, db: dbpool.Pool, database_dsn: str, session: aiohttp.ClientSession
    ) -> None:
        """An endpoint answering 307 elsewhere: nothing reaches the other address, and the
        delivery fails saying so."""
        secret = endpoint_support.new_secret()
        async with (
            endpoint_support.receiving(secret) as elsewhere,
            endpoint_support.receiving(secret, answers=[307, 307]) as moved,
        ):
            moved.redirect_to = elsewhere.url
            hook = webhook("moved", moved.url)
            shipping = Shipping(
                db, database_dsn, session, [endpoint(hook, secret)], outbox_config(hook)
            )
            await task_events(db)
            await shipping.fan_out()
            await shipping.round()

        assert (len(moved.requests), elsewhere.requests) == (1, [])
        [first, _] = await deliveries(db, "moved")
        assert first["last_error"] == "answered 307 (a redirect, which is not followed)"

    @staticmethod
    async def _doctor(
        db: dbpool.Pool, folder: Path, config: settings.OutboxSettings
    ) -> list[doctor.Check]:
        """Doctor's webhook checks, the secrets of the endpoints stored in the vault."""
        key_file = folder / "vault.key"
        box = await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        for hook in config.webhooks:
            await vault.set_secret(
                db,
                box,
                tenant_id="default",
                integration="outbox",
                workflow="*",
                name=hook.name,
                value=endpoint_support.new_secret().encode(),
                actor="test",
            )
        whole = settings.Settings(outbox=config, vault={"key_file": key_file})
        return await doctor.check_outgoing_webhooks(whole, db)


class TestSecrets:
    async def test_the_secret_comes_from_the_vault_and_signs(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Two lines while the receiver's secret rotates: each signs, so either verifies."""
        key_file = tmp_path / "vault.key"
        box = await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        old, new = endpoint_support.new_secret(), endpoint_support.new_secret()
        await vault.set_secret(
            db,
            box,
            tenant_id="default",
            integration="outbox",
            workflow="*",
            name="ops",
            value=f"{new}\n{old}\n".encode(),
            actor="test",
        )
        config = settings.Settings(
            outbox=outbox_config(webhook("ops", "https://hooks.example.com/x")),
            vault={"key_file": key_file},
        )

        [found] = await outgoing_webhooks.read_endpoints(db, config)

        assert found.secrets == (new, old)
        headers = outgoing_webhooks.headers_of(found, "msg_1", b"{}", now=1_700_000_000)
        assert len(headers["webhook-signature"].split(" ")) == 2

    async def test_a_missing_secret_stops_the_start_naming_the_command(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """No `outbox/ops` in the vault: exit 78 with the command that stores it."""
        key_file = tmp_path / "vault.key"
        await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        config = settings.Settings(
            outbox=outbox_config(webhook("ops", "https://hooks.example.com/x")),
            vault={"key_file": key_file},
        )

        with pytest.raises(errors.MissingSecretError) as refused:
            await outgoing_webhooks.read_endpoints(db, config)

        assert refused.value.exit_code == 78
        assert "appliance secrets set outbox ops --tenant default --from-file FILE" in str(
            refused.value
        )
