"""Query wrappers of `sql/backup.sql`: the snapshot a backup is taken from, and a restore's steps.

`appliance.backup` is the only caller; pg_dump and pg_restore do the copying itself.
"""

from __future__ import annotations

import dataclasses

from appliance.db import pool, sql

_Q = sql.load("backup")


@dataclasses.dataclass(frozen=True, slots=True)
class RestoredRows:
    """What a restored database holds."""

    tasks: int
    audit_entries: int
    audit_chains: int
    secrets: int
    model_calls: int
    budgets: int


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    """Which server and database a connection reached."""

    version: int  # server_version_num: 150013 for PostgreSQL 15.13
    database: str


async def export_snapshot(conn: pool.Connection) -> str:
    """The id of this (repeatable read) transaction's snapshot, for `pg_dump --snapshot`."""
    with pool.translated():
        snapshot: str = await conn.fetchval(_Q["export_snapshot"])
    return snapshot


async def count_other_sessions(conn: pool.Connection) -> int:
    """Sessions on this database other than `conn`'s."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["count_other_sessions"])
    return count


async def has_schema(conn: pool.Connection) -> bool:
    """Whether the schema `appliance` exists."""
    with pool.translated():
        found: bool = await conn.fetchval(_Q["has_schema"])
    return found


async def count_tasks(conn: pool.Connection) -> int:
    """How many tasks there are (the schema must exist)."""
    with pool.translated():
        count: int = await conn.fetchval(_Q["count_tasks"])
    return count


async def drop_set_aside_schema(conn: pool.Connection) -> None:
    """Drop a schema an interrupted restore set aside."""
    with pool.translated():
        await conn.execute(_Q["drop_set_aside_schema"])


async def set_schema_aside(conn: pool.Connection) -> None:
    """Rename `appliance` out of the way of the restore."""
    with pool.translated():
        await conn.execute(_Q["set_schema_aside"])


async def drop_schema(conn: pool.Connection) -> None:
    """Drop `appliance` (what a failed restore left)."""
    with pool.translated():
        await conn.execute(_Q["drop_schema"])


async def put_schema_back(conn: pool.Connection) -> None:
    """Rename the set-aside schema back to `appliance`."""
    with pool.translated():
        await conn.execute(_Q["put_schema_back"])


async def enforce_tenant_isolation(conn: pool.Connection) -> int:
    """Recreate row security for the present owner; how many tables it covered."""
    with pool.translated():
        tables: int = await conn.fetchval(_Q["enforce_tenant_isolation"])
    return tables


async def count_restored_rows(conn: pool.Connection) -> RestoredRows:
    """Counts of what was restored."""
    with pool.translated():
        row = await conn.fetchrow(_Q["count_restored_rows"])
    return RestoredRows(**pool.record_dict(row))


async def get_vault_fingerprint(conn: pool.Connection) -> str | None:
    """The current master key's fingerprint, or None when no key is recorded."""
    with pool.translated():
        found: str | None = await conn.fetchval(_Q["get_vault_fingerprint"])
    return found


async def get_server(conn: pool.Connection) -> Server:
    """The server's version and the database's name."""
    with pool.translated():
        row = await conn.fetchrow(_Q["get_server"])
    return Server(**pool.record_dict(row))
