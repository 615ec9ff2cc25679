"""The engine's state machine has one home, `migrations/functions/engine.sql`: the runner applies
it after the numbered migrations and again whenever its text changes, and a database migrated
before it existed moves forward with its tasks and its audit chains intact."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from appliance import models
from appliance.db import audit as dbaudit
from appliance.db import migrations
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from tests.support import postgres

pytestmark = [pytest.mark.timeout(60)]

FROZEN = 14  # the last numbered migration written before the function files existed
_DEFINITION = re.compile(
    r"CREATE OR REPLACE FUNCTION appliance\.(\w+)\(.*?\$\$(.*?)\$\$", re.DOTALL
)
WORKER = "w1"


def defined() -> dict[str, str]:
    """Each function of the function files, by name, with its body."""
    bodies: dict[str, str] = {}
    for functions in migrations.function_files():
        for match in _DEFINITION.finditer(functions.text):
            assert match[1] not in bodies, f"{match[1]} is defined twice"
            bodies[match[1]] = match[2]
    return bodies


def numbered_only(folder: Path) -> Path:
    """A copy of the shipped numbered migrations, without the function files."""
    folder.mkdir()
    for migration in migrations.available():
        (folder / migration.filename).write_text(migration.text, encoding="utf-8")
    return folder


@pytest_asyncio.fixture(loop_scope="session")
async def blank(server_dsn: str) -> AsyncIterator[dbpool.Pool]:
    """A pool on a database nothing has migrated yet."""
    async with postgres.fresh_database(server_dsn, "functions", migrated=False) as dsn:
        pool = await dbpool.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield pool
        finally:
            await pool.close()


def step(position: int) -> models.PendingStep:
    return models.PendingStep(position, f"s{position}", "1", dt.datetime.now(dt.UTC), 1.0)


async def run_task(pool: dbpool.Pool, *, steps: int) -> int:
    """Submit (as the numbered migrations' submit_task takes it), claim, checkpoint all but the
    last step, and finish a task with the last one."""
    submitted = await pool.fetchval(
        "SELECT task_id FROM appliance.submit_task("
        "'default', 'w', '{}'::json, 0, NULL, 3, NULL, NULL, NULL, 'test', 50)"
    )
    [claimed] = await dbtasks.claim_tasks(
        pool, worker=WORKER, node="n1", limit=1, lease_seconds=30, workflows=["w"], tenant_share=8
    )
    assert claimed.task_id == submitted
    for position in range(steps - 1):
        cancel = await dbtasks.record_step(
            pool, task_id=claimed.task_id, worker=WORKER, attempt=1, step=step(position)
        )
        assert cancel is False
    await dbtasks.finish_task(
        pool,
        task_id=claimed.task_id,
        worker=WORKER,
        attempt=1,
        outcome="succeeded",
        output_json="3",
        error=None,
        retry_at=None,
        step=step(steps - 1),
        node="n1",
        claim=0,
        lease_seconds=30,
        workflows=["w"],
        tenant_share=8,
    )
    return claimed.task_id


class TestTheFile:
    def test_no_later_migration_defines_its_functions(self) -> None:
        """Numbered migrations after the function files leave those functions to them."""
        names = defined()
        assert {"claim_tasks", "finish_task", "record_step", "lease_held"} <= set(names)
        for migration in migrations.available():
            if migration.version <= FROZEN:
                continue
            for name in names:
                redefined = re.search(rf"FUNCTION\s+appliance\.{name}\s*\(", migration.text)
                assert redefined is None, f"{migration.filename} defines {name}: edit the file"

    def test_the_lease_predicate_is_written_once(self) -> None:
        """Only lease_held says what holding a lease is; the queries and functions call it."""
        texts = [f.text for f in migrations.function_files()]
        texts += [p.read_text() for p in Path(dbtasks.__file__).parent.glob("sql/*.sql")]
        assert sum(t.count("attempts = p_attempt") for t in texts) == 1
        assert sum(t.count("appliance.lease_held(t, p_worker, p_attempt)") for t in texts) == 3


@pytest.mark.asyncio(loop_scope="session")
class TestTheDatabase:
    async def test_the_database_runs_what_the_file_says(self, db: dbpool.Pool) -> None:
        """The migrated database's functions have the bodies of the function files."""
        names = defined()
        rows = await db.fetch(
            "SELECT proname, prosrc FROM pg_proc"
            " WHERE pronamespace = 'appliance'::regnamespace AND proname = ANY ($1::text[])",
            list(names),
        )
        assert {row["proname"]: row["prosrc"] for row in rows} == names

    async def test_a_database_of_the_numbered_migrations_moves_forward(
        self, blank: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Tasks and chains written by the frozen functions stay; the file's functions run."""
        async with blank.acquire() as conn:
            await migrations.migrate(conn, numbered_only(tmp_path / "older"))
        await dbtenants.create_tenant(blank, tenant_id="default", name="d", actor="test")
        before = await run_task(blank, steps=1)
        async with blank.acquire() as conn:
            assert [f.filename for f in (await migrations.status(conn)).stale] == [
                "functions/engine.sql"
            ]
            applied = await migrations.migrate(conn)
            assert [m.filename for m in applied] == ["functions/engine.sql"]
            assert (await migrations.status(conn)).current
            assert await migrations.migrate(conn) == []
        after = await run_task(blank, steps=3)
        assert await dbaudit.find_chain_breaks(blank) == []
        for task_id, steps in ((before, 1), (after, 3)):
            task = await dbtasks.get_task(blank, task_id)
            assert task is not None
            assert task.state == "succeeded"
            assert len(await dbtasks.list_steps(blank, task_id)) == steps

    async def test_a_changed_file_is_applied_again(
        self, blank: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A function file whose text changed is stale until migrate applies it, once."""
        folder = tmp_path / "shipped"
        shutil.copytree(migrations.migrations_dir(), folder)
        async with blank.acquire() as conn:
            await migrations.migrate(conn, folder)
            changed = folder / "functions" / "engine.sql"
            changed.write_text(changed.read_text() + "\n-- changed\n", encoding="utf-8")
            assert not (await migrations.status(conn, folder)).current
            assert [m.filename for m in await migrations.migrate(conn, folder)] == [
                "functions/engine.sql"
            ]
            assert await migrations.migrate(conn, folder) == []
            recorded = await conn.fetchval(
                "SELECT checksum FROM appliance.schema_functions WHERE name = 'engine'"
            )
        assert recorded == migrations.Functions("engine", changed.read_text()).checksum
