"""The one place driver errors become ours (`pool.translated`), against the real Postgres: a
value the database refuses becomes a typed error whose message is the rule in words, never
the driver's report (constraint names, DETAIL lines, the failing row)."""

from __future__ import annotations

import asyncpg
import pytest

from appliance import errors
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.db import vault as dbvault
from appliance.engine import registry
from tests.support import engine as support
from tests.support import workflows

INTERNALS = ("DETAIL", "Failing row", "violates", "constraint", "query argument")
FINGERPRINT = "0123456789abcdef0123456789abcdef"


def assert_in_words(exc: errors.ApplianceError, *fragments: str) -> None:
    """The message names `fragments` and none of the driver's internals; the driver's error
    stays reachable as the cause (for -v)."""
    for fragment in fragments:
        assert fragment in str(exc), str(exc)
    for internal in INTERNALS:
        assert internal not in str(exc), str(exc)
    assert isinstance(exc.__cause__, asyncpg.PostgresError)


class TestRefusedValues:
    async def test_a_broken_check_is_bad_input_naming_the_rule(self, db: dbpool.Pool) -> None:
        """A tenant id the CHECK refuses: InputError with the pattern it must match."""
        with pytest.raises(errors.InputError) as caught:
            await dbtenants.create_tenant(db, tenant_id="Not A Tenant", name="x", actor="test")

        assert_in_words(caught.value, "tenant id must match ^[a-z0-9][a-z0-9_-]{0,62}$")

    @pytest.mark.parametrize("tenant", ["nobody", "ghost-co"])
    async def test_a_write_for_an_unknown_tenant_names_it(
        self, db: dbpool.Pool, tenant: str
    ) -> None:
        """A foreign key to tenants: UnknownTenantError naming the tenant and how to add it."""
        with pytest.raises(errors.UnknownTenantError) as caught:
            await support.submit(
                db,
                registry.registry,
                support.engine_settings(),
                workflow=workflows.COUNTED,
                tenant_id=tenant,
            )

        assert_in_words(caught.value, f"unknown tenant {tenant!r}", f"tenants add {tenant}")

    async def test_a_duplicate_already_exists(self, db: dbpool.Pool) -> None:
        """A unique key taken twice: StateError (the answer is no) saying it already exists."""
        async with db.acquire() as conn:
            await dbvault.add_vault_key(conn, FINGERPRINT)
            with pytest.raises(errors.StateError) as caught:
                await dbvault.add_vault_key(conn, FINGERPRINT)

        assert_in_words(caught.value, "already exists", FINGERPRINT)
        assert caught.value.exit_code == 1

    @pytest.mark.parametrize("task_id", [2**63, -(2**63) - 1])
    async def test_a_value_out_of_range_is_bad_input(self, db: dbpool.Pool, task_id: int) -> None:
        """A number the column cannot hold: InputError with the reason, not exit 70."""
        with pytest.raises(errors.InputError) as caught:
            await dbtasks.get_task(db, task_id)

        assert_in_words(caught.value, "out of int64 range")
        assert str(task_id) not in str(caught.value)
