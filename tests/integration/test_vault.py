"""The vault against the real Postgres: scopes, storage at rest, the key check (T16), rotation,
schedules and the audit trail."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import pytest_asyncio

from appliance import errors, vault
from appliance.db import pool as dbpool

pytestmark = pytest.mark.asyncio(loop_scope="session")

CANARY = b"canary-7f3a9c-do-not-store"
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "bytea")


@pytest_asyncio.fixture(loop_scope="session")
async def key(db: dbpool.Pool) -> bytes:
    """The master key the vault was initialised with."""
    return vault.new_key()


@pytest_asyncio.fixture(loop_scope="session")
async def box(db: dbpool.Pool, key: bytes) -> vault.Vault:
    """A vault initialised on the emptied database."""
    return await vault.open_vault(db, key, initialise=True)


async def _set(pool: dbpool.Pool, box: vault.Vault, value: bytes = CANARY, **scope: Any) -> bool:
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "integration": "github",
        "workflow": "triage",
        "name": "token",
    }
    fields.update(scope)
    return await vault.set_secret(pool, box, value=value, actor="alice", **fields)


async def _read(pool: dbpool.Pool, box: vault.Vault, **scope: str) -> bytes:
    fields = {"tenant_id": "acme", "integration": "github", "workflow": "triage", "name": "token"}
    fields.update(scope)
    return await vault.read_secret(pool, box, **fields)


async def _audit(pool: dbpool.Pool, tenant_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT action, actor, detail::text AS detail FROM appliance.audit_entries"
        " WHERE chain = $1 AND action LIKE ANY ('{secret.%,vault.%}') ORDER BY seq",
        f"tenant:{tenant_id}",
    )
    return [dict(row.items()) for row in rows]


class TestSecrets:
    async def test_set_then_read(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A secret set for a scope reads back as the same bytes."""
        assert await _set(db, box) is True
        assert await _read(db, box) == CANARY

    async def test_set_again_replaces(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Setting an existing secret replaces its value and reports it was not created."""
        await _set(db, box)
        assert await _set(db, box, value=b"second") is False
        assert await _read(db, box) == b"second"

    async def test_list_shows_metadata_only(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Listing names the secrets and never carries a value or ciphertext."""
        await _set(db, box)
        await _set(db, box, workflow="*", name="webhook")
        listed = await vault.list_secrets(db, tenant_id="acme")
        assert [(s.workflow, s.name) for s in listed] == [("*", "webhook"), ("triage", "token")]
        assert all(CANARY not in repr(s).encode() for s in listed)
        assert not hasattr(listed[0], "ciphertext")

    async def test_not_stored_in_plaintext(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """No text, json or bytea column of any table in the schema contains the value."""
        await _set(db, box)
        await _read(db, box)
        columns = await db.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " JOIN information_schema.tables USING (table_schema, table_name)"
            " WHERE table_schema = 'appliance' AND table_type = 'BASE TABLE'"
            " AND data_type = ANY($1)",
            list(TEXT_TYPES),
        )
        assert any(c["table_name"] == "secrets" for c in columns)
        found = []
        for column in columns:
            table, name = column["table_name"], column["column_name"]
            if column["data_type"] == "bytea":
                query = (
                    f'SELECT count(*) FROM appliance."{table}" WHERE position($1 IN "{name}") > 0'  # noqa: S608 - names from the catalog
                )
                hits = await db.fetchval(query, CANARY)
            else:
                query = (
                    f'SELECT count(*) FROM appliance."{table}" WHERE strpos("{name}"::text, $1) > 0'  # noqa: S608 - names from the catalog
                )
                hits = await db.fetchval(query, CANARY.decode())
            if hits:
                found.append(f"{table}.{name}")
        assert found == []

    async def test_unknown_tenant_is_refused(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A secret for a tenant that does not exist is refused as an unknown tenant."""
        with pytest.raises(errors.UnknownTenantError):
            await _set(db, box, tenant_id="nobody")

    async def test_delete(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A deleted secret no longer reads; deleting it again is NotFound."""
        await _set(db, box)
        scope = {"tenant_id": "acme", "integration": "github", "workflow": "triage"}
        await vault.delete_secret(db, name="token", actor="alice", **scope)
        with pytest.raises(errors.NotFoundError):
            await _read(db, box)
        with pytest.raises(errors.NotFoundError):
            await vault.delete_secret(db, name="token", actor="alice", **scope)

    async def test_rotate_secret_replaces_value(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Rotating a secret's value stores the new one; rotating a missing secret is NotFound."""
        await _set(db, box)
        scope = {"tenant_id": "acme", "integration": "github", "workflow": "triage"}
        await vault.rotate_secret(db, box, name="token", value=b"new", actor="bob", **scope)
        assert await _read(db, box) == b"new"
        with pytest.raises(errors.NotFoundError):
            await vault.rotate_secret(db, box, name="absent", value=b"x", actor="bob", **scope)


class TestScope:
    async def test_other_tenant_cannot_read(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Another tenant asking for the same scope gets NotFound."""
        await _set(db, box)
        with pytest.raises(errors.NotFoundError):
            await _read(db, box, tenant_id="globex")

    async def test_other_workflow_cannot_read(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A secret of one workflow is NotFound for another workflow of the same tenant."""
        await _set(db, box)
        with pytest.raises(errors.NotFoundError):
            await _read(db, box, workflow="billing")

    async def test_wildcard_serves_every_workflow(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A '*' secret is read by any workflow of the tenant for that integration."""
        await _set(db, box, workflow="*")
        assert await _read(db, box, workflow="billing") == CANARY

    async def test_own_secret_overrides_wildcard(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A workflow's own secret wins over the '*' one of the same name."""
        await _set(db, box, workflow="*", value=b"shared")
        await _set(db, box, workflow="triage", value=b"own")
        assert await _read(db, box, workflow="triage") == b"own"
        assert await _read(db, box, workflow="billing") == b"shared"

    async def test_ciphertext_moved_to_other_tenant_fails(
        self, db: dbpool.Pool, box: vault.Vault
    ) -> None:
        """A ciphertext copied in the database to another tenant's row does not decrypt."""
        await _set(db, box, value=b"acme-value")
        await _set(db, box, tenant_id="globex", value=b"globex-value")
        await db.execute(
            "UPDATE appliance.secrets SET ciphertext ="
            " (SELECT ciphertext FROM appliance.secrets WHERE tenant_id = 'acme')"
            " WHERE tenant_id = 'globex'"
        )
        with pytest.raises(vault.SecretIntegrityError, match="another scope"):
            await _read(db, box, tenant_id="globex")


class TestMasterKey:
    async def test_same_key_opens(self, db: dbpool.Pool, box: vault.Vault, key: bytes) -> None:
        """Reopening with the recorded key works and reads the secrets."""
        await _set(db, box)
        reopened = await vault.open_vault(db, key)
        assert await _read(db, reopened) == CANARY

    async def test_wrong_key_is_fatal(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A key matching no recorded version stops the start and names the expected one."""
        with pytest.raises(vault.KeyMismatchError, match=box.fingerprint) as caught:
            await vault.open_vault(db, vault.new_key(), initialise=True)
        assert caught.value.exit_code == 78

    async def test_uninitialised_vault_is_explicit(self, db: dbpool.Pool) -> None:
        """Opening without initialise on an empty database says to run init."""
        with pytest.raises(vault.VaultNotInitialisedError, match="appliance init"):
            await vault.open_vault(db, vault.new_key())

    async def test_rotation_reencrypts_everything(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """After rotation every secret is under the new version and the new key alone opens them."""
        await _set(db, box)
        await _set(db, box, tenant_id="globex", value=b"globex-value")
        new_key = vault.new_key()
        rotated = await vault.rotate_master_key(db, box, new_key, actor="alice")
        assert rotated.current_version == 2
        versions = await db.fetch("SELECT DISTINCT key_version FROM appliance.secrets")
        assert [row["key_version"] for row in versions] == [2]
        alone = await vault.open_vault(db, new_key)
        assert await _read(db, alone) == CANARY
        assert await _read(db, alone, tenant_id="globex") == b"globex-value"

    async def test_old_key_refused_after_rotation(
        self, db: dbpool.Pool, box: vault.Vault, key: bytes
    ) -> None:
        """The retired key no longer opens the vault; the error says it was retired."""
        await vault.rotate_master_key(db, box, vault.new_key(), actor="alice")
        with pytest.raises(vault.KeyMismatchError, match="retired key version 1"):
            await vault.open_vault(db, key)

    async def test_stale_vault_cannot_write(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """A process still holding the retired key cannot store values under it."""
        await vault.rotate_master_key(db, box, vault.new_key(), actor="alice")
        with pytest.raises(errors.StateError, match="rotation"):
            await _set(db, box)


class TestSchedule:
    async def test_overdue_lists_only_past_due(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Only a scheduled secret whose period has passed is overdue."""
        month = dt.timedelta(days=30)
        await vault.set_secret(
            db,
            box,
            tenant_id="acme",
            integration="github",
            workflow="*",
            name="old",
            value=b"v",
            rotate_every=month,
            actor="alice",
        )
        await vault.set_secret(
            db,
            box,
            tenant_id="globex",
            integration="github",
            workflow="*",
            name="fresh",
            value=b"v",
            rotate_every=month,
            actor="alice",
        )
        await _set(db, box, name="unscheduled")
        await db.execute(
            "UPDATE appliance.secrets SET rotated_at = now() - interval '31 days'"
            " WHERE name IN ('old', 'unscheduled')"
        )
        overdue = await vault.overdue_secrets(db)
        assert [(s.tenant_id, s.name) for s in overdue] == [("acme", "old")]
        assert overdue[0].due_at is not None

    async def test_rotating_clears_overdue(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Giving an overdue secret a new value restarts its schedule."""
        await _set(db, box, rotate_every=dt.timedelta(days=1))
        await db.execute("UPDATE appliance.secrets SET rotated_at = now() - interval '2 days'")
        assert len(await vault.overdue_secrets(db)) == 1
        await vault.rotate_secret(
            db,
            box,
            tenant_id="acme",
            integration="github",
            workflow="triage",
            name="token",
            value=b"new",
            actor="alice",
        )
        assert await vault.overdue_secrets(db) == []


class TestAudit:
    async def test_every_change_is_audited(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """Set, replace, rotate and delete each write an entry in the tenant's chain."""
        scope = {"tenant_id": "acme", "integration": "github", "workflow": "triage"}
        await _set(db, box)
        await _set(db, box)
        await vault.rotate_secret(db, box, name="token", value=b"r", actor="bob", **scope)
        await vault.delete_secret(db, name="token", actor="carol", **scope)
        entries = await _audit(db, "acme")
        assert [(e["action"], e["actor"]) for e in entries] == [
            ("secret.created", "alice"),
            ("secret.replaced", "alice"),
            ("secret.rotated", "bob"),
            ("secret.deleted", "carol"),
        ]

    async def test_audit_never_holds_the_value(self, db: dbpool.Pool, box: vault.Vault) -> None:
        """No audit entry of set, rotation or re-encryption contains the value."""
        await _set(db, box)
        await vault.rotate_secret(
            db,
            box,
            tenant_id="acme",
            integration="github",
            workflow="triage",
            name="token",
            value=CANARY + b"-2",
            actor="bob",
        )
        await vault.rotate_master_key(db, box, vault.new_key(), actor="alice")
        entries = await _audit(db, "acme")
        assert [e["action"] for e in entries][-1] == "vault.reencrypted"
        assert all(CANARY.decode() not in e["detail"] for e in entries)
