"""Backups on the real Postgres: a box's database dumped, damaged, refused, restored elsewhere."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from appliance import backup, errors, settings, vault
from appliance.agents import costs
from appliance.db import audit as dbaudit
from appliance.db import migrations, tenancy
from appliance.db import pool as dbpool
from appliance.db import tasks as dbtasks
from appliance.db import tenants as dbtenants
from appliance.engine import context, registry
from tests.support import engine, postgres

pytestmark = pytest.mark.timeout(180)

workflows = registry.Registry()


@workflows.workflow("backup.steps")
async def two_steps(ctx: context.TaskContext, task_input: Any) -> Any:
    """Two checkpointed steps, so each task has a chain of several audit entries."""
    first = await ctx.step("first", _echo, task_input)
    return await ctx.step("second", _echo, {"after": first})


async def _echo(value: Any) -> Any:
    return value


NewDatabase = Callable[[], Awaitable[str]]
SECRET = b"ghp_backup-canary-value"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def new_database(server_dsn: str) -> AsyncIterator[NewDatabase]:
    """Makes empty databases, all dropped at the end of the module."""
    made: list[str] = []
    admin = await asyncpg.connect(server_dsn)

    async def make() -> str:
        name = f"appliance_backup_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return postgres.with_database(server_dsn, name)

    try:
        yield make
    finally:
        for name in made:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclasses.dataclass
class Box:
    """A database with its settings: key file, backup folder."""

    dsn: str
    config: settings.Settings


def key_of(box: Box) -> Path:
    """The box's vault key file."""
    assert box.config.vault.key_file is not None
    return box.config.vault.key_file


def box_config(dsn: str, folder: Path, key_file: Path, **backup_settings: Any) -> settings.Settings:
    return settings.Settings.model_validate(
        {
            "state_dir": str(folder / "state"),
            "database": {"url": dsn},
            "vault": {"source": "file", "key_file": str(key_file)},
            "backup": {"dir": str(folder / "backups"), **backup_settings},
        }
    )


async def populated(dsn: str, config: settings.Settings) -> dict[str, Any]:
    """Migrate, then tenants, finished tasks, a queued one, a secret and a model call."""
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await migrations.migrate(conn)
        for tenant in ("default", "acme"):
            await dbtenants.create_tenant(pool, tenant_id=tenant, name=tenant, actor="test")
        assert config.vault.key_file is not None
        key = vault.read_key_file(config.vault.key_file)
        box = await vault.open_vault(pool, key, initialise=True)
        await vault.set_secret(
            pool,
            box,
            tenant_id="acme",
            integration="github",
            workflow="*",
            name="token",
            value=SECRET,
            actor="test",
        )
        engine_config = engine.engine_settings()
        done = [
            await engine.submit(
                pool,
                workflows,
                engine_config,
                workflow="backup.steps",
                task_input={"n": n},
                tenant_id=tenant,
            )
            for n, tenant in enumerate(("default", "acme", "acme"))
        ]
        async with engine.running_worker(pool, dsn, engine_config, workflows) as running:

            async def finished() -> bool:
                states = [(await dbtasks.get_task(pool, t)) for t in done]
                return all(s is not None and s.state == "succeeded" for s in states)

            await engine.wait_until(finished, what="the tasks to finish", workers=[running])
        await costs.record_call(
            pool,
            tenant_id="acme",
            task_id=done[1],
            position=0,
            agent="writer",
            agent_version=1,
            model="claude-sonnet-4-5",
            request_id=f"req_{uuid.uuid4().hex}",
            latency_ms=12.5,
            usage=costs.Usage(input_tokens=1_000, output_tokens=500),
            cache_note=None,
        )
        return await snapshot(pool)
    finally:
        await pool.close()


async def snapshot(pool: dbpool.Pool) -> dict[str, Any]:
    """What a restore must bring back, read through the product's own queries."""
    tasks = await dbtasks.list_tasks(pool, tenant_id=None, state=None, limit=100)
    entries, chains = await dbaudit.count_audit_entries(pool)
    report = await costs.cost_report(pool, by="tenant")
    return {
        "tasks": sorted((t.task_id, t.tenant_id, t.state, json.dumps(t.output)) for t in tasks),
        "audit": (entries, chains),
        "costs": [(r.tenant_id, r.calls, r.cost_usd) for r in report],
    }


@dataclasses.dataclass
class Made:
    """The module's populated box, what it held, and its backup (never changed by a test)."""

    source: Box
    before: dict[str, Any]
    path: Path
    manifest: backup.Manifest


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def made(new_database: NewDatabase, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One populated box and one backup of it, for the whole module."""
    folder = tmp_path_factory.mktemp("source")
    key_file = folder / "vault.key"
    vault.create_key_file(key_file)
    dsn = await new_database()
    source = Box(dsn, box_config(dsn, folder, key_file))
    before = await populated(dsn, source.config)
    listed = await backup.create(source.config)
    assert listed.manifest is not None
    return Made(source, before, listed.path, listed.manifest)


@pytest.fixture
def copy(made: Made, tmp_path: Path) -> Path:
    """This test's own copy of the module's backup file (tests damage theirs)."""
    target = tmp_path / made.path.name
    shutil.copyfile(made.path, target)
    return target


async def with_one_task(dsn: str) -> int:
    """A migrated box of its own holding one queued task; its id."""
    pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrations.migrate(conn)
        await dbtenants.create_tenant(pool, tenant_id="default", name="d", actor="test")
        return await engine.submit(
            pool, workflows, engine.engine_settings(), workflow="backup.steps"
        )
    finally:
        await pool.close()


async def restore_target(new_database: NewDatabase, folder: Path, key_file: Path) -> Box:
    """An empty box (a database without a schema) with this vault key."""
    dsn = await new_database()
    return Box(dsn, box_config(dsn, folder, key_file))


def rewrite(
    path: Path, *, manifest: dict[str, Any] | None = None, dump: bytes | None = None
) -> None:
    """Rewrite a backup file with another manifest and/or dump (the other part kept)."""
    with tarfile.open(path) as tar:
        parts = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    if manifest is not None:
        parts[backup.MANIFEST] = json.dumps(manifest).encode()
    if dump is not None:
        parts[backup.DUMP] = dump
    write_parts(path, parts)


def write_parts(path: Path, parts: dict[str, bytes]) -> None:
    """A tar of exactly these members."""
    with tarfile.open(path, "w") as tar:
        for name, data in parts.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile(backup.MANIFEST).read())  # type: ignore[union-attr]
        dump = tar.extractfile(backup.DUMP).read()  # type: ignore[union-attr]
    return manifest, dump


class TestCreate:
    def test_a_backup_is_a_private_file_with_its_manifest(self, made: Made) -> None:
        """Mode 0600; the manifest names schema, vault key and time; the checksum is the dump's."""
        assert made.path.parent == made.source.config.backup.dir
        assert made.path.stat().st_mode & 0o777 == 0o600
        manifest, dump = read_parts(made.path)
        assert manifest["format"] == backup.FORMAT
        assert manifest["schema_version"] == max(m.version for m in migrations.available())
        key = vault.read_key_file(key_of(made.source))
        assert manifest["vault_key_fingerprint"] == vault.fingerprint(key)
        assert manifest["dump_sha256"] == hashlib.sha256(dump).hexdigest()
        assert manifest["dump_bytes"] == len(dump)
        assert dump.startswith(b"PGDMP")  # pg_dump's custom format

    def test_the_vault_key_is_never_in_a_backup(self, made: Made) -> None:
        """Neither the key (raw or hex) nor the secret's value appears anywhere in the file."""
        key = vault.read_key_file(key_of(made.source))
        data = made.path.read_bytes()
        assert key not in data
        assert key.hex().encode() not in data
        assert SECRET not in data

    async def test_retention_keeps_the_newest(self, made: Made, tmp_path: Path) -> None:
        """With backup.keep = 2, the third backup deletes the oldest one."""
        config = box_config(made.source.dsn, tmp_path, key_of(made.source), keep=2)
        created = [await backup.create(config) for _ in range(3)]
        kept = [b.path for b in backup.list_backups(config)]
        assert kept == [created[2].path, created[1].path]
        assert not created[0].path.exists()

    def test_a_damaged_file_is_listed_with_its_problem(self, made: Made, tmp_path: Path) -> None:
        """A file that is not a backup shows up in the list, named, with why."""
        config = box_config(made.source.dsn, tmp_path, key_of(made.source))
        folder = backup.folder(config)
        folder.mkdir(parents=True)
        good = folder / made.path.name
        shutil.copyfile(made.path, good)
        broken = folder / "appliance-20000101T000000Z.backup"
        broken.write_bytes(b"not a tar file")
        listed = {b.path: b for b in backup.list_backups(config)}
        assert listed[good].manifest == made.manifest
        assert listed[broken].manifest is None
        assert listed[broken].problem


class TestRestore:
    async def test_an_empty_box_gets_everything_back(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """Tasks, audit chains (verified), the secret (with the same key) and costs return."""
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        restored = await backup.restore(target.config, copy)
        assert restored.rows.tasks == len(made.before["tasks"])
        pool = await dbpool.create_pool(target.dsn, min_size=1, max_size=2)
        try:
            assert await snapshot(pool) == made.before
            assert await dbaudit.find_chain_breaks(pool, limit=5) == []
            opened = await vault.open_vault(pool, vault.read_key_file(key_of(made.source)))
            value = await vault.read_secret(
                pool, opened, tenant_id="acme", integration="github", workflow="w", name="token"
            )
            assert value == SECRET
            async with tenancy.tenant_transaction(pool, "default") as conn:
                seen = await dbtasks.list_tasks(conn, tenant_id=None, state=None, limit=100)
            assert {t.tenant_id for t in seen} == {"default"}  # row security holds
        finally:
            await pool.close()

    async def test_a_box_owned_by_an_ordinary_role(
        self, made: Made, copy: Path, server_dsn: str, tmp_path: Path
    ) -> None:
        """As on a packaged box: the role owns its database, is no superuser, restores, backs up."""
        role = f"appliance_owner_{uuid.uuid4().hex[:8]}"
        name = f"appliance_backup_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(server_dsn)
        try:
            try:
                await admin.execute(f'CREATE ROLE "{role}" LOGIN')
            except asyncpg.InsufficientPrivilegeError:
                pytest.skip("the test server does not let this session create roles")
            await admin.execute(f'GRANT appliance_tenant TO "{role}"')
            await admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
            parts = urllib.parse.urlsplit(postgres.with_database(server_dsn, name))
            dsn = urllib.parse.urlunsplit(
                parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}")
            )
            target = Box(dsn, box_config(dsn, tmp_path, key_of(made.source)))
            restored = await backup.restore(target.config, copy)
            assert restored.rows.tasks == len(made.before["tasks"])
            again = await backup.create(target.config)  # and backs up, as the timer does
            assert again.manifest is not None
            assert again.manifest.vault_key_fingerprint == made.manifest.vault_key_fingerprint
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            await admin.close()

    async def test_a_changed_dump_is_refused(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """One byte of the dump changed: the checksum does not match, nothing is restored."""
        _, dump = read_parts(copy)
        changed = bytearray(dump)
        changed[len(changed) // 2] ^= 0xFF
        rewrite(copy, dump=bytes(changed))
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        with pytest.raises(backup.BackupIntegrityError, match="checksum"):
            await backup.restore(target.config, copy)
        assert backup.BackupIntegrityError.exit_code == 65

    @pytest.mark.parametrize(
        "damage",
        ["truncated", "not-a-tar", "no-dump", "manifest-not-json", "manifest-field-missing"],
    )
    async def test_a_damaged_file_is_refused(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path, damage: str
    ) -> None:
        """Every way the file can be damaged is a BackupIntegrityError, never a traceback."""
        manifest, dump = read_parts(copy)
        if damage == "truncated":
            data = copy.read_bytes()
            copy.write_bytes(data[: len(data) // 2])
        elif damage == "not-a-tar":
            copy.write_bytes(os.urandom(4096))
        elif damage == "no-dump":
            write_parts(copy, {backup.MANIFEST: json.dumps(manifest).encode()})
        elif damage == "manifest-not-json":
            write_parts(copy, {backup.MANIFEST: b"{not json", backup.DUMP: dump})
        else:
            del manifest["schema_version"]
            rewrite(copy, manifest=manifest)
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        with pytest.raises(backup.BackupIntegrityError):
            await backup.restore(target.config, copy)

    async def test_another_vault_key_is_refused(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """A box whose key has another fingerprint cannot take the backup: it names both."""
        other_key = tmp_path / "other.key"
        vault.create_key_file(other_key)
        target = await restore_target(new_database, tmp_path, other_key)
        with pytest.raises(vault.KeyMismatchError, match=str(made.manifest.vault_key_fingerprint)):
            await backup.restore(target.config, copy)

    async def test_a_changed_fingerprint_in_the_manifest_is_refused(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """A manifest naming another key fingerprint is refused even with the right key."""
        manifest, _ = read_parts(copy)
        manifest["vault_key_fingerprint"] = "0" * 32
        rewrite(copy, manifest=manifest)
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        with pytest.raises(vault.KeyMismatchError):
            await backup.restore(target.config, copy)

    async def test_a_newer_schema_is_refused(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """A backup from an appliance with more migrations than this one knows is refused."""
        manifest, _ = read_parts(copy)
        manifest["schema_version"] = 9999
        rewrite(copy, manifest=manifest)
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        with pytest.raises(errors.StateError, match="9999"):
            await backup.restore(target.config, copy)

    async def test_a_box_with_tasks_needs_replace(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """Restoring over tasks is refused; with replace, the backup's tasks are what remains."""
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        await with_one_task(target.dsn)
        with pytest.raises(errors.StateError, match="--replace"):
            await backup.restore(target.config, copy)
        restored = await backup.restore(target.config, copy, replace=True)
        assert restored.replaced_tasks == 1
        assert restored.rows.tasks == len(made.before["tasks"])

    async def test_a_running_daemon_blocks_a_restore(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """Another session on the database (a daemon) refuses the restore: exit 75."""
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        other = await asyncpg.connect(target.dsn)
        try:
            with pytest.raises(errors.LockedError, match="systemctl stop appliance"):
                await backup.restore(target.config, copy)
        finally:
            await other.close()

    async def test_a_failing_restore_leaves_the_box_as_it_was(
        self, made: Made, copy: Path, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """A dump pg_restore rejects (its checksum made to match): the box keeps its own task."""
        manifest, dump = read_parts(copy)
        broken = dump[: len(dump) // 2]
        manifest["dump_sha256"] = hashlib.sha256(broken).hexdigest()
        manifest["dump_bytes"] = len(broken)
        rewrite(copy, manifest=manifest, dump=broken)
        target = await restore_target(new_database, tmp_path, key_of(made.source))
        mine = await with_one_task(target.dsn)
        with pytest.raises(errors.DependencyError, match="pg_restore"):
            await backup.restore(target.config, copy, replace=True)
        pool = await dbpool.create_pool(target.dsn, min_size=1, max_size=2)
        try:
            tasks = await dbtasks.list_tasks(pool, tenant_id=None, state=None, limit=10)
            assert [t.task_id for t in tasks] == [mine]
        finally:
            await pool.close()

    async def test_an_older_backup_is_migrated_forward(
        self, made: Made, new_database: NewDatabase, tmp_path: Path
    ) -> None:
        """A backup of an older schema is restored, then each missing migration runs once, and
        the function files its schema did not have."""
        dsn = await new_database()
        older = tmp_path / "older-migrations"
        older.mkdir()
        shipped = migrations.available()
        for migration in shipped[:-2]:
            (older / migration.filename).write_text(migration.text, encoding="utf-8")
        pool = await dbpool.create_pool(dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrations.migrate(conn, older)
                # Written as the first schema has them: today's functions may not exist yet.
                await conn.execute("INSERT INTO appliance.tenants VALUES ('default', 'd')")
                task = await conn.fetchval(
                    "INSERT INTO appliance.tasks (tenant_id, workflow, input)"
                    " VALUES ('default', 'backup.steps', '{}') RETURNING task_id"
                )
        finally:
            await pool.close()
        older_backup = await backup.create(box_config(dsn, tmp_path / "a", key_of(made.source)))
        assert older_backup.manifest is not None
        assert older_backup.manifest.schema_version == shipped[-3].version
        target = await restore_target(new_database, tmp_path / "b", key_of(made.source))
        restored = await backup.restore(target.config, older_backup.path)
        assert restored.migrations_applied == (
            *(m.filename for m in shipped[-2:]),
            *(f.filename for f in migrations.function_files()),
        )
        pool = await dbpool.create_pool(target.dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                assert (await migrations.status(conn)).current
                assert await migrations.migrate(conn) == []  # nothing runs twice
            assert await dbtasks.get_task(pool, task) is not None
        finally:
            await pool.close()
