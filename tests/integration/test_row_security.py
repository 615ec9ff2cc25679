"""Row-level security (migration 0011): a transaction in one tenant's context sees and writes
that tenant's rows only, even with a hand-written query; the owner keeps every row.

Rows of two tenants are seeded through the code that writes them in production (submission,
claim and checkpoint, leases, approvals, agent definitions, documents, the cost ledger and
budgets, webhook deliveries, the vault, policies), then queries run in one tenant's context.
The suite connects as a superuser, which bypasses row security: the owner's side is tested in
a database of its own, migrated and used by an owner that is not a superuser.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from appliance import errors, models, settings, vault
from appliance.agents import costs, definitions
from appliance.db import approvals as dbapprovals
from appliance.db import audit as dbaudit
from appliance.db import grants as dbgrants
from appliance.db import ingress as dbingress
from appliance.db import isolation as dbisolation
from appliance.db import migrations, tenancy
from appliance.db import outbox as dboutbox
from appliance.db import outgoing_webhooks as dbwebhooks
from appliance.db import policies as dbpolicies
from appliance.db import pool as dbpool
from appliance.db import schedules as dbschedules
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.engine import context, registry, submission
from appliance.ingress import schedules
from appliance.retrieval import documents
from tests.support import engine, postgres

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

A = "acme"
B = "globex"
TENANT_ROLE = "appliance_tenant"
WORKFLOW = "rls.noop"
POLICY = """
[[rules]]
name = "large-refunds"
tools = ["refund_*"]
conditions = [{ arg = "amount", op = ">", value = 500 }]
effect = "require_approval"
"""
TENANT_TABLES = """
SELECT c.relname FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
 WHERE c.relnamespace = 'appliance'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY c.relname
"""
CONTEXT = """
SELECT current_user AS role, session_user AS session,
       current_setting('appliance.tenant', true) AS tenant, pg_backend_pid() AS pid
"""

workflows = registry.Registry()


@workflows.workflow(WORKFLOW)
async def noop(ctx: context.TaskContext, task_input: Any) -> Any:
    """A workflow whose tasks only need to exist."""
    return task_input


async def tenant_tables(conn: dbpool.Connection | dbpool.Pool) -> list[str]:
    """Every table of the schema with a tenant_id column, from the catalog."""
    return [row["relname"] for row in await conn.fetch(TENANT_TABLES)]


async def tenants_in(conn: dbpool.Connection | dbpool.Pool, table: str) -> set[str]:
    """The tenants whose rows a hand-written query of `table` returns."""
    rows = await conn.fetch(f'SELECT * FROM appliance."{table}"')  # noqa: S608 (catalog name)
    return {row["tenant_id"] for row in rows}


async def seed(pool: dbpool.Pool, box: vault.Vault, tenant_id: str, folder: Path) -> int:
    """Rows of `tenant_id` in every tenant table; returns its task, left running."""
    config = engine.engine_settings()
    task_id = await engine.submit(pool, workflows, config, workflow=WORKFLOW, tenant_id=tenant_id)
    worker = f"worker-{tenant_id}"
    [claimed] = await dbtasks.claim_tasks(
        pool,
        worker=worker,
        node="n1",
        limit=1,
        lease_seconds=60,
        workflows=[WORKFLOW],
        tenant_share=10,
    )
    assert claimed.task_id == task_id
    step = models.PendingStep(0, "fetch", '"ok"', dt.datetime.now(dt.UTC), 1.0)
    await dbtasks.record_step(
        pool, task_id=task_id, worker=worker, attempt=claimed.attempt, step=step
    )
    await dbisolation.grant_lease(
        pool,
        tenant_id=tenant_id,
        task_id=task_id,
        step_key="1",
        workflow=WORKFLOW,
        integration="github",
        name="token",
        worker=worker,
        attempt=claimed.attempt,
        ttl_seconds=30,
    )
    requested = await dbapprovals.request_approval(
        pool,
        tenant_id=tenant_id,
        task_id=task_id,
        step_key="2",
        tool="refund",
        action_class="financial",
        arguments_json="{}",
        reason="a large refund",
        policy_version=None,
        required_approvers=2,
        timeout=dt.timedelta(hours=1),
        actor=worker,
    )
    assert requested is not None
    await dbapprovals.vote_approval(
        pool,
        approval_id=int(requested.split(":")[1]),
        approver="alice",
        declared_as=None,
        approve=True,
        reason=None,
    )
    agent = definitions.Definition(name="support", persona="Be kind.", model="claude-sonnet-4-5")
    await definitions.apply(pool, agent, tenant_id=tenant_id, actor="test")
    page = folder / tenant_id / "refunds.md"
    page.parent.mkdir(parents=True)
    page.write_text(f"# Refunds\n\nRefunds of {tenant_id} above 500 need an approval.\n")
    await documents.add_documents(pool, tenant_id=tenant_id, collection="handbook", paths=[page])
    # add_documents embeds the passages too (the model is installed by scripts/setup.sh).
    await costs.record_call(
        pool,
        tenant_id=tenant_id,
        task_id=task_id,
        position=0,
        agent="support",
        agent_version=1,
        model="claude-sonnet-4-5",
        request_id=None,
        latency_ms=1.0,
        usage=costs.Usage(input_tokens=10),
        cache_note=None,
    )
    await costs.set_budget(
        pool, tenant_id=tenant_id, scope="month", usd_limit=Decimal(10), actor="test"
    )
    await dbingress.record_delivery(
        pool, tenant_id=tenant_id, source="shop", delivery_id="d1", task_id=task_id
    )
    nightly = settings.Schedule(name="nightly", tenant=tenant_id, cron="@daily", workflow=WORKFLOW)
    added = await schedules.add(pool, workflows, nightly, now=dt.datetime.now(dt.UTC), actor="test")
    await dbschedules.record_slot(
        pool,
        schedule_id=added.schedule_id,
        slot_at=added.next_fire_at,
        tenant_id=tenant_id,
        outcome="skipped",
        task_id=None,
        reason="a slot without a task, so each tenant keeps its one task",
    )
    await vault.set_secret(
        pool,
        box,
        tenant_id=tenant_id,
        integration="github",
        workflow=WORKFLOW,
        name="token",
        value=b"s3cret",
        actor="test",
    )
    await dbpolicies.apply_policy(pool, tenant_id=tenant_id, document_text=POLICY, actor="test")
    events = await dboutbox.list_events_after(pool, seq=0, limit=1000)
    await dbwebhooks.enqueue_deliveries(
        pool,
        endpoints=["ops"],
        event_seqs=[next(e.seq for e in events if e.tenant_id == tenant_id)],
    )
    await dbgrants.grant_console_role(
        pool, login="alice@example.com", tenant_id=tenant_id, role="admin", actor="test"
    )
    return task_id


async def seed_both(pool: dbpool.Pool, folder: Path) -> dict[str, int]:
    """Both tenants seeded; their tasks by tenant."""
    box = await vault.open_vault(pool, vault.new_key(), initialise=True)
    return {tenant: await seed(pool, box, tenant, folder) for tenant in (A, B)}


@pytest_asyncio.fixture(loop_scope="session")
async def seeded(db: dbpool.Pool, tmp_path: Path) -> dict[str, int]:
    """The emptied database with rows of `acme` and `globex` in every tenant table."""
    return await seed_both(db, tmp_path)


@contextlib.asynccontextmanager
async def rolled_back(conn: dbpool.Connection) -> AsyncIterator[None]:
    """A transaction that is rolled back at the end of the block (DDL of a test undone)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


@contextlib.asynccontextmanager
async def single_connection(dsn: str) -> AsyncIterator[dbpool.Pool]:
    """A pool of one connection, so each transaction reuses the one before it."""
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


class TestPolicies:
    async def test_tenant_tables_are_found(self, db: dbpool.Pool) -> None:
        """The catalog query finds the tenant tables (the checks below are not vacuous)."""
        found = set(await tenant_tables(db))
        assert {"tenants", "tasks", "steps", "audit_entries", "outbox_events", "secrets"} <= found
        assert not {"prices", "vault_keys", "schema_migrations"} & found

    async def test_every_tenant_table_forces_row_security(self, db: dbpool.Pool) -> None:
        """Each table with tenant_id has row security enabled and forced (on its owner too)."""
        rows = await db.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY($1)"
            " AND c.relnamespace = 'appliance'::regnamespace"
            " AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
            await tenant_tables(db),
        )
        assert [row["relname"] for row in rows] == [], (
            "end the migration that added these tables with "
            "SELECT appliance.enforce_tenant_isolation();"
        )

    async def test_every_tenant_table_has_the_tenant_policy(self, db: dbpool.Pool) -> None:
        """Each table with tenant_id limits the tenant role to the transaction's tenant."""
        rows = await db.fetch(
            "SELECT tablename FROM pg_policies WHERE schemaname = 'appliance'"
            " AND policyname = 'tenant_isolation' AND permissive = 'PERMISSIVE'"
            " AND cmd = 'ALL' AND roles = $1 AND qual = with_check"
            " AND qual = '(tenant_id = NULLIF(current_setting(''appliance.tenant''::text, true),"
            " ''''::text))'",
            [TENANT_ROLE],
        )
        assert sorted(row["tablename"] for row in rows) == await tenant_tables(db)

    async def test_every_tenant_table_keeps_its_owner_access(self, db: dbpool.Pool) -> None:
        """Each table with tenant_id lets its owner (held to the policies by FORCE) see all."""
        rows = await db.fetch(
            "SELECT p.tablename FROM pg_policies p JOIN pg_tables t USING (schemaname, tablename)"
            " WHERE p.schemaname = 'appliance' AND p.policyname = 'owner_access'"
            " AND p.roles = ARRAY[t.tableowner]::name[] AND p.qual = 'true'"
            " AND p.with_check = 'true'"
        )
        assert sorted(row["tablename"] for row in rows) == await tenant_tables(db)

    async def test_the_tenant_role_has_no_power_of_its_own(self, db: dbpool.Pool) -> None:
        """The tenant role cannot log in, bypass row security, or inherit another role."""
        row = await db.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolinherit,"
            " EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid) AS member"
            " FROM pg_roles r WHERE rolname = $1",
            TENANT_ROLE,
        )
        assert row is not None
        assert (row["rolcanlogin"], row["rolsuper"], row["rolbypassrls"], row["member"]) == (
            False,
            False,
            False,
            False,
        )

    async def test_a_later_tenant_table_is_covered_by_calling_again(self, db: dbpool.Pool) -> None:
        """enforce_tenant_isolation() covers a table added after 0011 (what a migration calls)."""
        async with db.acquire() as conn, rolled_back(conn):
            await conn.execute("CREATE TABLE appliance.rls_probe (tenant_id text NOT NULL)")
            covered = await conn.fetchval("SELECT appliance.enforce_tenant_isolation()")
            policies = await conn.fetch(
                "SELECT policyname FROM pg_policies WHERE tablename = 'rls_probe' ORDER BY 1"
            )
        assert covered == len(await tenant_tables(db)) + 1
        assert [row["policyname"] for row in policies] == ["owner_access", "tenant_isolation"]


class TestReading:
    async def test_every_tenant_table_is_seeded_for_both_tenants(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """The owner sees rows of both tenants in every tenant table (the seeds cover them)."""
        unseeded = [t for t in await tenant_tables(db) if not {A, B} <= await tenants_in(db, t)]
        assert unseeded == [], "seed() writes no rows of both tenants in these tables"

    async def test_hand_written_selects_see_only_their_tenant(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """In acme's context, `SELECT * FROM` any tenant table returns acme's rows only."""
        tables = await tenant_tables(db)
        async with tenancy.tenant_transaction(db, A) as conn:
            seen = {table: await tenants_in(conn, table) for table in tables}
        assert seen == {table: {A} for table in tables}

    async def test_joins_and_aggregates_see_only_their_tenant(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """A query that forgets its tenant filter counts and joins the context's rows only."""
        async with tenancy.tenant_transaction(db, B) as conn:
            row = await conn.fetchrow(
                "SELECT count(DISTINCT t.task_id) AS tasks, count(e.*) AS events,"
                " array_agg(DISTINCT e.tenant_id) AS tenants"
                " FROM appliance.tasks t JOIN appliance.outbox_events e USING (task_id)"
            )
        assert row is not None
        assert (row["tasks"], row["tenants"]) == (1, [B])

    async def test_the_tenant_sees_its_own_tenant_row_only(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """`tenants` shows the context's own row, not the list of tenants."""
        async with tenancy.tenant_transaction(db, A) as conn:
            listed = await dbtenants.list_tenants(conn)
        assert [tenant.tenant_id for tenant in listed] == [A]

    async def test_without_a_tenant_nothing_is_visible(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """The tenant role with no tenant set sees no row of any table."""
        tables = await tenant_tables(db)
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {TENANT_ROLE}")
            seen = {table: await tenants_in(conn, table) for table in tables}
        assert seen == {table: set() for table in tables}

    async def test_an_empty_tenant_sees_nothing(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """An empty tenant id (the setting's value once used in a session) matches no row."""
        async with tenancy.tenant_transaction(db, "") as conn:
            assert await tenants_in(conn, "tasks") == set()

    async def test_an_unknown_tenant_sees_nothing(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """A tenant id that no tenant has sees no row."""
        async with tenancy.tenant_transaction(db, "nobody") as conn:
            assert await tenants_in(conn, "tasks") == set()

    async def test_tables_without_tenant_are_out_of_reach(self, db: dbpool.Pool) -> None:
        """The tenant role is granted no table without tenant_id (the migrations' record)."""
        with pytest.raises(errors.ApplianceError, match="permission denied"):
            async with tenancy.tenant_transaction(db, A) as conn:
                await conn.fetch("SELECT * FROM appliance.schema_migrations")


class TestWriting:
    async def test_inserting_a_row_of_another_tenant_is_refused(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """An INSERT with globex's id from acme's context fails with TenantIsolationError."""
        with pytest.raises(errors.TenantIsolationError, match='policy for table "budgets"'):
            async with tenancy.tenant_transaction(db, A) as conn:
                await conn.execute(
                    "INSERT INTO appliance.budgets (tenant_id, scope, usd_limit, set_by)"
                    " VALUES ($1, 'task', 1, 'mallory')",
                    B,
                )
        assert [b.scope for b in await costs.list_budgets(db, tenant_id=B)] == ["month"]

    async def test_moving_a_row_to_another_tenant_is_refused(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """An UPDATE that sets globex's id on acme's row fails with TenantIsolationError."""
        with pytest.raises(errors.TenantIsolationError, match='policy for table "tasks"'):
            async with tenancy.tenant_transaction(db, A) as conn:
                await conn.execute("UPDATE appliance.tasks SET tenant_id = $1", B)
        task = await dbtasks.get_task(db, seeded[A])
        assert task is not None
        assert task.tenant_id == A

    async def test_updates_reach_only_their_tenant(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """An UPDATE without a tenant filter changes the context's rows and no other."""
        async with tenancy.tenant_transaction(db, A) as conn:
            status = await conn.execute("UPDATE appliance.tasks SET priority = 7")
        assert status == "UPDATE 1"
        rows = await db.fetch("SELECT tenant_id, priority FROM appliance.tasks ORDER BY 1")
        assert [tuple(row) for row in rows] == [(A, 7), (B, 0)]

    async def test_deletes_reach_only_their_tenant(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """A DELETE without a tenant filter removes the context's rows and no other."""
        async with tenancy.tenant_transaction(db, B) as conn:
            status = await conn.execute("DELETE FROM appliance.policies")
        assert status == "DELETE 1"
        assert await tenants_in(db, "policies") == {A}

    async def test_the_tenant_row_is_read_only(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """A tenant's context cannot create tenants, not even itself under another name."""
        with pytest.raises(errors.ApplianceError, match="permission denied for table tenants"):
            async with tenancy.tenant_transaction(db, "newco") as conn:
                await dbtenants.create_tenant(conn, tenant_id="newco", name="n", actor="mallory")


class TestServerFunctions:
    async def test_submitting_in_a_tenant_context_is_audited(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """submit_task (task, audit entry, outbox event) runs under the tenant role."""
        async with tenancy.tenant_transaction(db, A) as conn:
            submitted = await submission.submit(
                conn,
                workflows,
                engine.engine_settings(),
                tenant_id=A,
                workflow=WORKFLOW,
                task_input={"n": 1},
                actor="api",
            )
        chain = await dbaudit.list_chain(db, f"task:{submitted.task_id}")
        assert [(e.tenant_id, e.action) for e in chain] == [(A, "task.submitted")]
        assert await dbaudit.find_chain_breaks(db) == []

    async def test_tenant_chain_appends_verify(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """An audited upsert in the tenant's chain (advisory lock, audit_append) verifies."""
        async with tenancy.tenant_transaction(db, B) as conn:
            await costs.set_budget(
                conn, tenant_id=B, scope="month", usd_limit=Decimal(20), actor="api"
            )
            breaks = await dbaudit.find_chain_breaks(conn)
        chain = await dbaudit.list_chain(db, f"tenant:{B}")
        assert [e.action for e in chain][-1] == "budget.set"
        assert breaks == []
        assert await dbaudit.find_chain_breaks(db) == []

    async def test_submitting_for_another_tenant_is_refused(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """submit_task for globex from acme's context fails and writes nothing."""
        with pytest.raises(errors.TenantIsolationError):
            async with tenancy.tenant_transaction(db, A) as conn:
                await submission.submit(
                    conn,
                    workflows,
                    engine.engine_settings(),
                    tenant_id=B,
                    workflow=WORKFLOW,
                    task_input=None,
                    actor="mallory",
                )
        assert len(await dbtasks.list_tasks(db, tenant_id=B)) == 1

    async def test_another_tenants_task_cannot_be_cancelled(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """cancel_task of globex's task from acme's context finds no task."""
        async with tenancy.tenant_transaction(db, A) as conn:
            outcome = await dbtasks.cancel_task(conn, task_id=seeded[B], actor="mallory")
        task = await dbtasks.get_task(db, seeded[B])
        assert outcome is None
        assert task is not None
        assert task.cancel_requested_by is None

    async def test_audit_counts_only_the_tenants_entries(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """Reading the audit log in a tenant's context counts that tenant's chains only."""
        async with tenancy.tenant_transaction(db, A) as conn:
            entries, chains = await dbaudit.count_audit_entries(conn)
        expected = await db.fetchrow(
            "SELECT count(*) AS entries, count(DISTINCT chain) AS chains"
            " FROM appliance.audit_entries WHERE tenant_id = $1",
            A,
        )
        assert expected is not None
        assert (entries, chains) == (expected["entries"], expected["chains"])


class TestPooledConnection:
    async def test_no_tenant_and_no_role_is_left_behind(
        self, database_dsn: str, seeded: dict[str, int]
    ) -> None:
        """The transaction after a tenant's one, on the same connection, is the owner's again."""
        async with single_connection(database_dsn) as pool:
            async with tenancy.tenant_transaction(pool, A) as conn:
                inside = await conn.fetchrow(CONTEXT)
            async with pool.acquire() as conn:
                after = await conn.fetchrow(CONTEXT)
                tenants = await tenants_in(conn, "tasks")
        assert inside is not None
        assert after is not None
        assert (inside["role"], inside["tenant"]) == (TENANT_ROLE, A)
        assert after["pid"] == inside["pid"]
        assert (after["role"], after["tenant"] or None) == (after["session"], None)
        assert tenants == {A, B}

    async def test_the_next_tenant_sees_only_its_rows(
        self, database_dsn: str, seeded: dict[str, int]
    ) -> None:
        """On one reused connection, globex's transaction after acme's sees globex's rows."""
        async with single_connection(database_dsn) as pool:
            async with tenancy.tenant_transaction(pool, A) as conn:
                first = await tenants_in(conn, "audit_entries")
            async with tenancy.tenant_transaction(pool, B) as conn:
                second = await tenants_in(conn, "audit_entries")
        assert (first, second) == ({A}, {B})

    async def test_a_failed_tenant_transaction_leaves_nothing(
        self, database_dsn: str, seeded: dict[str, int]
    ) -> None:
        """A tenant's transaction that raised is rolled back with its role and tenant."""
        async with single_connection(database_dsn) as pool:
            with pytest.raises(errors.TenantIsolationError):
                async with tenancy.tenant_transaction(pool, A) as conn:
                    await conn.execute("UPDATE appliance.steps SET tenant_id = $1", B)
            async with pool.acquire() as conn:
                after = await conn.fetchrow(CONTEXT)
        assert after is not None
        assert (after["role"], after["tenant"] or None) == (after["session"], None)


class TestKnownLimits:
    async def test_the_tenant_role_cannot_lift_the_policies(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """The tenant role may not disable, unforce or drop the policies (not the owner)."""
        for statement in (
            "ALTER TABLE appliance.tasks DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE appliance.tasks NO FORCE ROW LEVEL SECURITY",
            "DROP POLICY tenant_isolation ON appliance.tasks",
        ):
            with pytest.raises(errors.ApplianceError, match="must be owner"):
                async with tenancy.tenant_transaction(db, A) as conn:
                    await conn.execute(statement)

    async def test_reset_role_escapes_the_tenant_context(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """Documented limit: the session user is the owner, so RESET ROLE leaves the role."""
        async with tenancy.tenant_transaction(db, A) as conn:
            await conn.execute("RESET ROLE")
            assert await tenants_in(conn, "tasks") == {A, B}

    async def test_set_config_changes_the_tenant(
        self, db: dbpool.Pool, seeded: dict[str, int]
    ) -> None:
        """Documented limit: SQL run in the transaction can set another tenant."""
        async with tenancy.tenant_transaction(db, A) as conn:
            await conn.execute("SELECT set_config('appliance.tenant', $1, true)", B)
            assert await tenants_in(conn, "tasks") == {B}


@pytest_asyncio.fixture(loop_scope="session", scope="class")
async def owned(server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A database created, migrated and seeded by a login role that is not a superuser."""
    suffix = uuid.uuid4().hex[:12]
    role, database = f"appliance_rls_owner_{suffix}", f"appliance_rls_{suffix}"
    password = uuid.uuid4().hex
    parts = urllib.parse.urlsplit(postgres.with_database(server_dsn, database))
    dsn = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{role}:{password}@{parts.netloc.rpartition('@')[2]}")
    )
    admin = await asyncpg.connect(server_dsn)
    try:
        attributes = f"LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE PASSWORD '{password}'"
        await admin.execute(f'CREATE ROLE "{role}" {attributes}')
        await admin.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        pool = await dbpool.create_pool(dsn, min_size=1, max_size=4)
        try:
            for tenant in (A, B):
                await dbtenants.create_tenant(pool, tenant_id=tenant, name=tenant, actor="test")
            await seed_both(pool, tmp_path_factory.mktemp("owned"))
        finally:
            await pool.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


@contextlib.asynccontextmanager
async def owner_pool(dsn: str) -> AsyncIterator[dbpool.Pool]:
    """A pool of the owner that is not a superuser."""
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


class TestOwner:
    async def test_the_owner_is_held_by_the_policies(self, owned: str) -> None:
        """The owner is not a superuser, and the migration let it switch to the tenant role."""
        async with owner_pool(owned) as pool:
            row = await pool.fetchrow(
                "SELECT rolsuper, rolbypassrls, pg_has_role(rolname, $1, 'MEMBER') AS member"
                " FROM pg_roles WHERE rolname = current_user",
                TENANT_ROLE,
            )
        assert row is not None
        assert tuple(row) == (False, False, True)

    async def test_the_owner_sees_every_tenant(self, owned: str) -> None:
        """Through owner_access, the owner reads both tenants' rows of every tenant table."""
        async with owner_pool(owned) as pool:
            tables = await tenant_tables(pool)
            seen = {table: await tenants_in(pool, table) for table in tables}
        assert seen == {table: {A, B} for table in tables}

    async def test_forced_security_binds_the_owner(self, owned: str) -> None:
        """Without owner_access the owner would see nothing: FORCE applies the policies to it."""
        async with owner_pool(owned) as pool, pool.acquire() as conn, rolled_back(conn):
            await conn.execute("DROP POLICY owner_access ON appliance.tasks")
            assert await tenants_in(conn, "tasks") == set()

    async def test_the_owner_claims_across_tenants(self, owned: str) -> None:
        """The engine's claim, run as the owner, takes queued tasks of both tenants."""
        config = engine.engine_settings()
        async with owner_pool(owned) as pool:
            for tenant in (A, B):
                await engine.submit(pool, workflows, config, workflow=WORKFLOW, tenant_id=tenant)
            claimed = await dbtasks.claim_tasks(
                pool,
                worker="w",
                node="n1",
                limit=10,
                lease_seconds=60,
                workflows=[WORKFLOW],
                tenant_share=10,
            )
        assert sorted(task.tenant_id for task in claimed) == [A, B]

    async def test_the_owners_tenant_transaction_sees_one_tenant(self, owned: str) -> None:
        """A tenant's transaction opened by the owner (SET ROLE by membership) sees one tenant."""
        async with owner_pool(owned) as pool:
            tables = await tenant_tables(pool)
            async with tenancy.tenant_transaction(pool, B) as conn:
                seen = {table: await tenants_in(conn, table) for table in tables}
        assert seen == {table: {B} for table in tables}
