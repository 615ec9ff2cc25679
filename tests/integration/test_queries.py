"""Every named query of `appliance/db/sql/` prepares against the migrated database.

Preparing makes Postgres parse, analyse and plan the statement without running it, so a typo,
a missing column or table, or a wrong parameter type fails here. Every block is prepared,
the DDL of `migrations.sql` included (Postgres accepts a parameterless utility statement in
a prepare); none needs to be skipped.
"""

from __future__ import annotations

import pytest

from appliance.db import pool as dbpool
from appliance.db import sql

QUERIES = [(area, name) for area in sql.areas() for name in sql.load(area)]


class TestNamedQueries:
    def test_every_area_has_queries(self) -> None:
        """The loader finds the SQL files and their blocks (the test below is not vacuous)."""
        assert {"audit", "health", "migrations", "outbox", "tasks", "tenants"} <= set(sql.areas())
        assert all(sql.load(area) for area in sql.areas())

    @pytest.mark.parametrize(("area", "name"), QUERIES, ids=[f"{a}.{n}" for a, n in QUERIES])
    async def test_query_prepares(self, db: dbpool.Pool, area: str, name: str) -> None:
        """The named query parses and plans against the migrated schema."""
        async with db.acquire() as conn:
            await conn.prepare(sql.load(area)[name])
