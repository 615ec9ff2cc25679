"""Where the tests' Postgres comes from: DATABASE_URL, else localhost:5432, else a throwaway
cluster started with initdb/pg_ctl as an unprivileged user (Postgres refuses root)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from appliance.db import embedded, migrations
from appliance.db import pool as dbpool

LOCAL_SERVER = "postgresql://postgres@localhost:5432/postgres"


def with_database(dsn: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def throwaway_cluster(prefix: str = "apt") -> embedded.EmbeddedPostgres:
    """A cluster in a short temp dir (unix socket paths are limited), startable as non-root."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    run_as = "nobody" if os.geteuid() == 0 else None
    return embedded.EmbeddedPostgres(folder, database="postgres", role="postgres", run_as=run_as)


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[str]:
    """A server URL (to its maintenance database) for the whole session."""
    explicit = os.environ.get("DATABASE_URL")
    if explicit:
        yield explicit
        return
    if await _answers(LOCAL_SERVER):
        yield LOCAL_SERVER
        return
    cluster = throwaway_cluster()
    await cluster.start()
    try:
        yield cluster.dsn()
    finally:
        await cluster.stop()


@contextlib.asynccontextmanager
async def fresh_database(
    server_dsn: str, prefix: str = "appliance_test", *, migrated: bool = True
) -> AsyncIterator[str]:
    """Create `<prefix>_<uuid>`, migrate it with the real runner (unless not `migrated`),
    drop it WITH (FORCE)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    if migrated:
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# Kept between tests: the record of migrations and function files, and the price list the
# migrations seed.
KEPT = ("schema_migrations", "schema_functions", "prices")


async def truncate(conn: dbpool.Connection) -> None:
    """Empty every table of the schema but those KEPT (the audit log's guard is lifted)."""
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables"
        " WHERE schemaname = 'appliance' AND NOT tablename = ANY($1)",
        list(KEPT),
    )
    names = ", ".join(f'appliance."{row["tablename"]}"' for row in tables)
    async with conn.transaction():
        await conn.execute(
            "ALTER TABLE appliance.audit_entries DISABLE TRIGGER audit_entries_no_truncate"
        )
        await conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
        await conn.execute(
            "ALTER TABLE appliance.audit_entries ENABLE TRIGGER audit_entries_no_truncate"
        )
