"""Query wrappers of `sql/vault.sql`: master key versions and encrypted secrets.

This module stores and fetches bytes; it never sees a key or a plaintext value. Encryption and
the scope checks live in `appliance.vault`, which is its only caller. The rows become the frozen
models below, here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from appliance import errors
from appliance.db import pool, sql

_Q = sql.load("vault")


@dataclasses.dataclass(frozen=True, slots=True)
class VaultKey:
    """One master key version: its fingerprint, never the key."""

    key_version: int
    fingerprint: str
    created_at: dt.datetime
    retired_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret's metadata, as listed: everything but the value and its ciphertext."""

    tenant_id: str
    integration: str
    workflow: str
    name: str
    key_version: int
    rotate_every: dt.timedelta | None
    created_at: dt.datetime
    updated_at: dt.datetime
    rotated_at: dt.datetime
    due_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptedSecret:
    """A secret row with its ciphertext, for decryption by `appliance.vault` only."""

    secret_id: int
    tenant_id: str
    integration: str
    workflow: str
    name: str
    key_version: int
    ciphertext: bytes

    def __repr__(self) -> str:
        return (
            f"EncryptedSecret({self.tenant_id}/{self.integration}/{self.workflow}/{self.name}, "
            f"key_version={self.key_version})"
        )


def _key_rotated(key_version: int) -> errors.StateError:
    return errors.StateError(
        f"vault key version {key_version} was retired by a master key rotation in another "
        "process; restart with the new master key"
    )


async def list_vault_keys(conn: pool.Connection | pool.Pool) -> list[VaultKey]:
    """Every key version, oldest first."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_vault_keys"])
    return [VaultKey(**pool.record_dict(row)) for row in rows]


async def register_first_vault_key(conn: pool.Connection | pool.Pool, fingerprint: str) -> bool:
    """Record the first key as version 1; False when a key version already exists."""
    with pool.translated():
        version = await conn.fetchval(_Q["register_first_vault_key"], fingerprint)
    return version is not None


async def lock_current_vault_key(conn: pool.Connection) -> VaultKey | None:
    """The current key version, locked until the transaction ends (None: another rotated it)."""
    with pool.translated():
        row = await conn.fetchrow(_Q["lock_current_vault_key"])
    return None if row is None else VaultKey(**pool.record_dict(row))


async def retire_vault_keys(conn: pool.Connection) -> None:
    """Retire the current key version."""
    with pool.translated():
        await conn.execute(_Q["retire_vault_keys"])


async def add_vault_key(conn: pool.Connection, fingerprint: str) -> int:
    """Record the next key version; its number."""
    with pool.translated():
        version: int = await conn.fetchval(_Q["add_vault_key"], fingerprint)
    return version


async def set_secret(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    key_version: int,
    ciphertext: bytes,
    rotate_every: dt.timedelta | None,
    actor: str,
) -> bool:
    """Create or replace a secret, audited; True when created."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["set_secret"],
            tenant_id,
            integration,
            workflow,
            name,
            key_version,
            ciphertext,
            rotate_every,
            actor,
        )
    if row is None or not row["key_current"]:
        raise _key_rotated(key_version)
    return bool(row["created"])


async def rotate_secret(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    key_version: int,
    ciphertext: bytes,
    actor: str,
) -> bool:
    """Replace an existing secret's value, audited; False when there is no such secret."""
    with pool.translated():
        row = await conn.fetchrow(
            _Q["rotate_secret"],
            tenant_id,
            integration,
            workflow,
            name,
            key_version,
            ciphertext,
            actor,
        )
    if row is None or not row["key_current"]:
        raise _key_rotated(key_version)
    return row["audit_seq"] is not None


async def delete_secret(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
    actor: str,
) -> bool:
    """Delete a secret, audited; False when there was none."""
    with pool.translated():
        deleted = await conn.fetchval(
            _Q["delete_secret"], tenant_id, integration, workflow, name, actor
        )
    return bool(deleted)


async def find_secret(
    conn: pool.Connection | pool.Pool,
    *,
    tenant_id: str,
    integration: str,
    workflow: str,
    name: str,
) -> EncryptedSecret | None:
    """The secret that workflow sees: its own, else the tenant's '*' one; None when neither."""
    with pool.translated():
        row = await conn.fetchrow(_Q["find_secret"], tenant_id, integration, workflow, name)
    return None if row is None else EncryptedSecret(**pool.record_dict(row))


async def list_secrets(conn: pool.Connection | pool.Pool, *, tenant_id: str) -> list[SecretInfo]:
    """A tenant's secrets, metadata only."""
    with pool.translated():
        rows = await conn.fetch(_Q["list_secrets"], tenant_id)
    return [SecretInfo(**pool.record_dict(row)) for row in rows]


async def overdue_secrets(conn: pool.Connection | pool.Pool) -> list[SecretInfo]:
    """Secrets of every tenant past their rotation schedule, most overdue first."""
    with pool.translated():
        rows = await conn.fetch(_Q["overdue_secrets"])
    return [SecretInfo(**pool.record_dict(row)) for row in rows]


async def announce_overdue_secrets(conn: pool.Connection | pool.Pool) -> list[SecretInfo]:
    """Emit `secret.overdue` for each overdue secret not announced in this period; those."""
    with pool.translated():
        rows = await conn.fetch(_Q["announce_overdue_secrets"])
    return [SecretInfo(**pool.record_dict(row)) for row in rows]


async def lock_secrets(conn: pool.Connection) -> list[EncryptedSecret]:
    """Every secret with its ciphertext, locked until the transaction ends."""
    with pool.translated():
        rows = await conn.fetch(_Q["lock_secrets"])
    return [EncryptedSecret(**pool.record_dict(row)) for row in rows]


async def reencrypt_secret(
    conn: pool.Connection, *, secret_id: int, key_version: int, ciphertext: bytes
) -> None:
    """Store one secret's ciphertext under another key version."""
    with pool.translated():
        await conn.execute(_Q["reencrypt_secret"], secret_id, key_version, ciphertext)


async def audit_reencryption(
    conn: pool.Connection, *, tenant_id: str, actor: str, key_version: int, count: int
) -> None:
    """Record in the tenant's chain that `count` of its secrets moved to `key_version`."""
    with pool.translated():
        await conn.execute(_Q["audit_reencryption"], tenant_id, actor, key_version, count)


async def delete_lost_secrets(conn: pool.Connection, *, actor: str) -> list[str]:
    """Delete every secret, audited per tenant; their scopes as tenant/integration/workflow/name."""
    with pool.translated():
        rows = await conn.fetch(_Q["delete_lost_secrets"], actor)
    return [f"{r['tenant_id']}/{r['integration']}/{r['workflow']}/{r['name']}" for r in rows]
