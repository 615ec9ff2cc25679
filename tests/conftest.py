"""Session fixtures: a real Postgres, one fresh migrated database per session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants
from tests.support import postgres


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def server_dsn() -> AsyncIterator[str]:
    """A Postgres server for the session (DATABASE_URL, localhost:5432, or a throwaway one)."""
    async with postgres.server() as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def database_dsn(server_dsn: str) -> AsyncIterator[str]:
    """The session's migrated database."""
    async with postgres.fresh_database(server_dsn) as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def session_pool(database_dsn: str) -> AsyncIterator[dbpool.Pool]:
    pool = await dbpool.create_pool(database_dsn, min_size=1, max_size=16)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def db(session_pool: dbpool.Pool) -> AsyncIterator[dbpool.Pool]:
    """The pool over emptied tables, with the tenants `default`, `acme` and `globex`."""
    async with session_pool.acquire() as conn:
        await postgres.truncate(conn)
    for tenant in ("default", "acme", "globex"):
        await dbtenants.create_tenant(session_pool, tenant_id=tenant, name=tenant, actor="test")
    yield session_pool
