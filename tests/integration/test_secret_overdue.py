"""Secrets past their rotation schedule: doctor's warning, and the outbox event `secret.overdue`
emitted once per secret per rotation period, by the sweep and by the running daemon."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from appliance import doctor, vault
from appliance.db import pool as dbpool
from tests.support import daemon

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

CANARY = b"canary-overdue-5e1b-do-not-show"
SCOPE = {"tenant_id": "acme", "integration": "github", "workflow": "*", "name": "token"}


@pytest_asyncio.fixture(loop_scope="session")
async def box(db: dbpool.Pool) -> vault.Vault:
    """A vault initialised on the emptied database."""
    return await vault.open_vault(db, vault.new_key(), initialise=True)


async def scheduled(
    pool: dbpool.Pool, box: vault.Vault, *, late: dt.timedelta | None, **scope: str
) -> None:
    """A secret rotated every day; `late` past its due time (None: not due yet)."""
    fields = SCOPE | scope
    await vault.set_secret(
        pool, box, value=CANARY, rotate_every=dt.timedelta(days=1), actor="alice", **fields
    )
    if late is not None:
        await backdate(pool, fields["name"], late)


async def backdate(pool: dbpool.Pool, name: str, late: dt.timedelta) -> None:
    """Move the secret's last rotation back so that it is `late` past its due time."""
    await pool.execute(
        "UPDATE appliance.secrets SET rotated_at = now() - rotate_every - $2::interval"
        " WHERE name = $1",
        name,
        late,
    )


async def rotate(pool: dbpool.Pool, box: vault.Vault) -> None:
    await vault.rotate_secret(pool, box, value=b"fresh-value", actor="bob", **SCOPE)


async def overdue_events(pool: dbpool.Pool) -> list[dict[str, Any]]:
    """The `secret.overdue` outbox events, oldest first."""
    rows = await pool.fetch(
        "SELECT tenant_id, task_id, payload::text AS payload FROM appliance.outbox_events"
        " WHERE type = 'secret.overdue' ORDER BY event_seq"
    )
    return [{**dict(row.items()), "payload": json.loads(row["payload"])} for row in rows]


class TestDoctorCheck:
    async def test_an_overdue_secret_is_a_warning_naming_it(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """The check names the overdue secret's scope and how late it is, as a warning."""
        await scheduled(db, box, late=dt.timedelta(days=2, hours=3))
        check = await doctor.check_secret_rotation(db)
        assert (check.ok, check.severity, check.failed) == (False, "warn", False)
        assert "acme/github/*/token overdue by 2d 3h" in check.detail
        assert "appliance secrets rotate github token --tenant acme" in check.fix

    async def test_the_check_never_shows_the_value(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Neither the detail nor the fix carries the secret's value."""
        await scheduled(db, box, late=dt.timedelta(hours=1))
        check = await doctor.check_secret_rotation(db)
        assert CANARY.decode() not in repr(check)

    async def test_a_secret_not_yet_due_is_ok(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A scheduled secret within its period passes the check."""
        await scheduled(db, box, late=None)
        assert (await doctor.check_secret_rotation(db)).ok


class TestAnnouncement:
    async def test_two_sweeps_emit_one_event(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """The first sweep after the due time announces the secret; the second says nothing."""
        await scheduled(db, box, late=dt.timedelta(hours=5))
        first = await vault.announce_overdue_secrets(db)
        second = await vault.announce_overdue_secrets(db)
        assert [(s.tenant_id, s.name) for s in first] == [("acme", "token")]
        assert second == []
        assert len(await overdue_events(db)) == 1

    async def test_the_event_names_the_secret_and_how_late(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """The event carries tenant, scope, due time and lateness, never the value."""
        await scheduled(db, box, late=dt.timedelta(hours=5))
        await vault.announce_overdue_secrets(db)
        [event] = await overdue_events(db)
        payload = event["payload"]
        assert (event["tenant_id"], event["task_id"]) == ("acme", None)
        assert {k: payload[k] for k in ("integration", "workflow", "name")} == {
            "integration": "github",
            "workflow": "*",
            "name": "token",
        }
        assert 5 * 3600 <= payload["overdue_seconds"] < 5 * 3600 + 60
        assert payload["rotate_every"] == "1 day"
        assert CANARY.decode() not in json.dumps(payload)

    async def test_only_overdue_secrets_are_announced(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """A secret within its period and one without a schedule emit nothing."""
        await scheduled(db, box, late=None)
        plain = SCOPE | {"name": "plain"}
        await vault.set_secret(db, box, value=CANARY, rotate_every=None, actor="alice", **plain)
        assert await vault.announce_overdue_secrets(db) == []
        assert await overdue_events(db) == []

    async def test_concurrent_sweeps_emit_one_event(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """Several processes sweeping at once announce each secret once between them."""
        await scheduled(db, box, late=dt.timedelta(minutes=1))
        rounds = await asyncio.gather(*(vault.announce_overdue_secrets(db) for _ in range(6)))
        assert sum(len(announced) for announced in rounds) == 1
        assert len(await overdue_events(db)) == 1


class TestRotation:
    async def test_rotating_clears_the_warning(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """After a new value the check passes and a sweep announces nothing more."""
        await scheduled(db, box, late=dt.timedelta(hours=2))
        await vault.announce_overdue_secrets(db)
        await rotate(db, box)
        assert (await doctor.check_secret_rotation(db)).ok
        assert await vault.announce_overdue_secrets(db) == []
        assert len(await overdue_events(db)) == 1

    async def test_the_next_period_is_announced_again(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """A rotated secret that falls overdue again emits a second event."""
        await scheduled(db, box, late=dt.timedelta(hours=2))
        await vault.announce_overdue_secrets(db)
        await rotate(db, box)
        await backdate(db, "token", dt.timedelta(minutes=1))
        assert len(await vault.announce_overdue_secrets(db)) == 1
        assert len(await overdue_events(db)) == 2


@pytest.mark.slow
class TestDaemon:
    async def test_the_daemon_ships_the_event(
        self, db: dbpool.Pool, database_dsn: str, tmp_path: Path
    ) -> None:
        """A running daemon's periodic check emits the event and its relay ships it."""
        key_file = tmp_path / "vault.key"
        box = await vault.open_vault(db, vault.create_key_file(key_file), initialise=True)
        await scheduled(db, box, late=dt.timedelta(hours=1))
        shipped = tmp_path / "events.jsonl"

        async def announced() -> list[dict[str, Any]] | None:
            if not shipped.exists():
                return None
            lines = [json.loads(line) for line in shipped.read_text().splitlines()]
            return [m for m in lines if m["type"] == "secret.overdue"] or None

        overrides = {"vault.overdue_check_seconds": 0.2, "vault.key_file": str(key_file)}
        async with daemon.running(database_dsn, tmp_path, overrides=overrides) as running:
            [message] = await daemon.wait_until(
                announced, what="the secret.overdue event", daemons=[running]
            )
        assert message["tenant_id"] == "acme"
        assert message["payload"]["name"] == "token"
