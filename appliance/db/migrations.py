"""The migrations runner: `migrations/NNNN_name.sql`, applied in order, each once, then the
current definitions of `migrations/functions/*.sql`.

Each file runs in its own transaction under an advisory lock (two starting daemons never
migrate at once) and is recorded with its SHA-256; a recorded migration whose text changed
since is refused, because released migrations are never edited. The files of `functions/` are
the other way round: they hold the current truth of functions (the engine's state machine,
`functions/engine.sql`), made only of `CREATE OR REPLACE`, and each is applied again, after
the numbered migrations, whenever its text differs from the one recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import logging
import re
from pathlib import Path

from appliance import errors
from appliance.db import pool, sql

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_FUNCTIONS_FILE = re.compile(r"^([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6170706C69616E63  # "applianc"
_Q = sql.load("migrations")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclasses.dataclass(frozen=True, slots=True)
class Functions:
    """A file of `migrations/functions/`: functions as they are now, applied when changed."""

    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"functions/{self.name}.sql"


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    applied: tuple[int, ...]
    pending: tuple[Migration, ...]
    stale: tuple[Functions, ...] = ()  # function files not applied in their present text

    @property
    def current(self) -> bool:
        return not self.pending and not self.stale

    @property
    def to_apply(self) -> tuple[Migration | Functions, ...]:
        """What `migrate` runs, in its order."""
        return (*self.pending, *self.stale)


def migrations_dir() -> Path:
    """The shipped migrations: package data in a wheel, the repo's folder in a checkout."""
    packaged = Path(str(importlib.resources.files("appliance"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def available(folder: Path | None = None) -> list[Migration]:
    """Every migration file, in version order; refuses gaps and duplicates."""
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise errors.SchemaError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise errors.SchemaError(
                f"{folder}: expected migration {expected:04d}, found {migration.filename}"
            )
    if not found:
        raise errors.SchemaError(f"{folder}: no migrations found")
    return found


def function_files(folder: Path | None = None) -> list[Functions]:
    """The files of `functions/` in the migrations folder, in name order (maybe none)."""
    found: list[Functions] = []
    for path in sorted(((folder or migrations_dir()) / "functions").glob("*.sql")):
        match = _FUNCTIONS_FILE.match(path.name)
        if not match:
            raise errors.SchemaError(f"{path}: function files are named name.sql")
        found.append(Functions(match[1], path.read_text(encoding="utf-8")))
    return found


async def status(conn: pool.Connection, folder: Path | None = None) -> Status:
    """Which migrations are applied and which are pending, and which function files are stale;
    refuses changed migrations."""
    known = available(folder)
    with pool.translated():
        exists = await conn.fetchval(_Q["find_migrations_table"])
        rows = await conn.fetch(_Q["list_applied_migrations"]) if exists else []
        has_functions = await conn.fetchval(_Q["find_functions_table"])
        recorded = await conn.fetch(_Q["list_applied_functions"]) if has_functions else []
    applied = {row["version"]: row["checksum"] for row in rows}
    by_version = {m.version: m for m in known}
    for version, checksum in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise errors.SchemaError(
                f"the database has migration {version:04d}, which this version does not ship; "
                "it was migrated by a newer appliance"
            )
        if migration.checksum != checksum:
            raise errors.SchemaError(
                f"migration {migration.filename} changed after it was applied "
                f"(recorded sha256 {checksum[:12]}, file {migration.checksum[:12]}); "
                "released migrations are never edited: add a new one"
            )
    pending = tuple(m for m in known if m.version not in applied)
    current = {row["name"]: row["checksum"] for row in recorded}
    stale = tuple(f for f in function_files(folder) if current.get(f.name) != f.checksum)
    return Status(applied=tuple(sorted(applied)), pending=pending, stale=stale)


async def migrate(conn: pool.Connection, folder: Path | None = None) -> list[Migration | Functions]:
    """Apply the pending migrations, then the function files whose text changed, under the
    advisory lock; return those applied."""
    with pool.translated():
        await conn.execute(_Q["lock_migrations"], _LOCK_KEY)
    try:
        with pool.translated():
            await conn.execute(_Q["create_migrations_schema"])
            await conn.execute(_Q["create_migrations_table"])
            await conn.execute(_Q["create_functions_table"])
        pending = (await status(conn, folder)).pending
        for migration in pending:
            with pool.translated():
                async with conn.transaction():
                    await conn.execute(migration.text)
                    await conn.execute(
                        _Q["record_migration"],
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            log.info(
                "migration applied: %s",
                migration.filename,
                extra={"event": "db.migrated", "version": migration.version},
            )
        stale = (await status(conn, folder)).stale
        for functions in stale:
            with pool.translated():
                async with conn.transaction():
                    await conn.execute(functions.text)
                    await conn.execute(_Q["record_functions"], functions.name, functions.checksum)
            log.info(
                "functions applied: %s",
                functions.filename,
                extra={"event": "db.functions_applied", "file": functions.filename},
            )
        return [*pending, *stale]
    finally:
        with pool.translated():
            await conn.execute(_Q["unlock_migrations"], _LOCK_KEY)
