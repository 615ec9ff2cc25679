"""Session fixtures: a real Postgres, one fresh migrated database per session. The packaging
tests run last, and what they need is built in the background meanwhile (support/prepare.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants
from tests.support import package, postgres, prepare

PACKAGING = frozenset(
    {"test_package.py", "test_boot.py", "test_boot_provisioning.py", "test_upgrade.py"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Packaging tests last (in their order), their builds started now if they will run."""
    del config
    items.sort(key=lambda item: item.path.name in PACKAGING)
    if any(item.path.name in PACKAGING for item in items) and package.requirements() is None:
        prepare.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    del session
    prepare.stop()


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
