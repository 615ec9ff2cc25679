"""Backups of the appliance's database: `appliance backup create|list|restore`.

A backup is one file, `<backup.dir>/appliance-<UTC time>.backup` (mode 0600): a tar archive of

- `manifest.json`: format, time, appliance version, the schema version (migrations applied),
  the fingerprint of the vault master key its secrets are sealed under, and the SHA-256 and
  size of the dump;
- `database.dump`: `pg_dump --format=custom` of the schema `appliance`, taken from the snapshot
  the manifest was read in (pg_dump imports the snapshot a repeatable-read transaction
  exported), so tasks, checkpoints, audit chains, outbox, secrets and costs are consistent.

The vault master key is never in a backup: its secrets are ciphertext that only the same key
opens. A restore therefore refuses a box whose key has another fingerprint, as it refuses a
backup whose dump does not match its checksum, whose schema is newer than this appliance, a
database that other sessions use (a running daemon), and a box holding tasks (unless told to
replace them). It sets the box's schema aside, restores, re-applies row security for the
present owner, migrates forward, verifies every audit chain and opens the vault, and only then
drops the set-aside schema; on any failure the box is put back as it was.

The checksum detects a damaged file, not a forged one: keep backups where only you can write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from appliance import __version__, errors, settings, vault
from appliance.db import audit as dbaudit
from appliance.db import backup as dbbackup
from appliance.db import connection, migrations, pool

log = logging.getLogger(__name__)

FORMAT = "appliance-backup/1"
MANIFEST = "manifest.json"
DUMP = "database.dump"
PREFIX = "appliance-"
SUFFIX = ".backup"
_NAME = re.compile(r"^appliance-\d{8}T\d{6}Z(-\d+)?\.backup$")
_POLICY_ENTRY = re.compile(r"^\d+; \d+ \d+ POLICY ")
_CHUNK = 1 << 20
_ERROR_LINES = 5


class BackupIntegrityError(errors.InputError):
    """The file is not an intact appliance backup."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a backup holds, written beside its dump."""

    created_at: dt.datetime
    appliance_version: str
    database: str
    schema_version: int
    migrations: tuple[str, ...]
    vault_key_fingerprint: str | None
    postgres_version: int
    dump_sha256: str
    dump_bytes: int

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"format": FORMAT, **dataclasses.asdict(self)}
        data["created_at"] = self.created_at.isoformat()
        data["migrations"] = list(self.migrations)
        return json.dumps(data, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """The manifest, or BackupIntegrityError naming what is wrong with it."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BackupIntegrityError(f"{where}: the manifest is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise BackupIntegrityError(f"{where}: the manifest's format is not {FORMAT}")
        try:
            fingerprint = data["vault_key_fingerprint"]
            manifest = cls(
                created_at=dt.datetime.fromisoformat(str(data["created_at"])),
                appliance_version=str(data["appliance_version"]),
                database=str(data["database"]),
                schema_version=int(data["schema_version"]),
                migrations=tuple(str(m) for m in data["migrations"]),
                vault_key_fingerprint=None if fingerprint is None else str(fingerprint),
                postgres_version=int(data["postgres_version"]),
                dump_sha256=str(data["dump_sha256"]),
                dump_bytes=int(data["dump_bytes"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupIntegrityError(f"{where}: the manifest is not valid: {exc}") from exc
        if len(data) != len(dataclasses.fields(cls)):
            raise BackupIntegrityError(f"{where}: the manifest has unknown fields")
        return manifest


@dataclasses.dataclass(frozen=True)
class Listed:
    """One file of the backup folder: its manifest, or why it cannot be read."""

    path: Path
    bytes: int
    manifest: Manifest | None
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a restore brought back."""

    backup: Path
    manifest: Manifest
    rows: dbbackup.RestoredRows
    migrations_applied: tuple[str, ...]
    replaced_tasks: int


def folder(config: settings.Settings) -> Path:
    """Where backups are written: `backup.dir`, else `<state_dir>/backups`."""
    return config.backup.dir or config.state_dir / "backups"


# --- create -------------------------------------------------------------------------------


async def create(config: settings.Settings) -> Listed:
    """Dump the database from one snapshot into a new backup file; prune beyond backup.keep."""
    target = folder(config)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise errors.ConfigError(f"backup.dir {target}: cannot create it: {exc.strerror}") from exc
    with _private_directory(target) as work:
        dump = work / DUMP
        async with (
            connection.open_database(config, pool_size=2) as db,
            db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            snapshot = await dbbackup.export_snapshot(conn)
            status = await migrations.status(conn)
            fingerprint = await dbbackup.get_vault_fingerprint(conn)
            server = await dbbackup.get_server(conn)
            created_at = dt.datetime.now(dt.UTC)
            await _run(
                _tool("pg_dump", server.version),
                "--format=custom",
                "--schema=appliance",
                "--enable-row-security",
                f"--snapshot={snapshot}",
                f"--file={dump}",
                connect=db.dsn,
            )
        digest, size = _digest(dump)
        manifest = Manifest(
            created_at=created_at,
            appliance_version=__version__,
            database=server.database,
            schema_version=max(status.applied, default=0),
            migrations=tuple(
                m.filename for m in migrations.available() if m.version in status.applied
            ),
            vault_key_fingerprint=fingerprint,
            postgres_version=server.version,
            dump_sha256=digest,
            dump_bytes=size,
        )
        path = _write(target, manifest, dump)
    log.info(
        "backup written: %s",
        path,
        extra={"event": "backup.created", "path": str(path), "bytes": path.stat().st_size},
    )
    _prune(target, config.backup.keep)
    return Listed(path, path.stat().st_size, manifest)


def _write(target: Path, manifest: Manifest, dump: Path) -> Path:
    """The tar (manifest first) under a temporary name, then linked to a name of its own."""
    stamp = manifest.created_at.strftime("%Y%m%dT%H%M%SZ")
    temporary = target / f".{PREFIX}{stamp}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            described = manifest.to_json()
            _add(tar, MANIFEST, io.BytesIO(described), len(described), manifest)
            with dump.open("rb") as data:
                _add(tar, DUMP, data, manifest.dump_bytes, manifest)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        for attempt in range(1, 100):
            suffix = "" if attempt == 1 else f"-{attempt}"
            path = target / f"{PREFIX}{stamp}{suffix}{SUFFIX}"
            try:
                os.link(temporary, path)
            except FileExistsError:
                continue
            return path
        raise errors.StateError(f"{target}: too many backups named {PREFIX}{stamp}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int, manifest: Manifest) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(manifest.created_at.timestamp())
    tar.addfile(info, data)


def _prune(target: Path, keep: int) -> None:
    """Delete the oldest backups (by the time in their names) beyond the newest `keep`."""
    for old in _backups(target)[keep:]:
        old.unlink(missing_ok=True)
        log.info("old backup deleted: %s", old, extra={"event": "backup.pruned", "path": str(old)})


def _backups(target: Path) -> list[Path]:
    """The backup files of the folder, newest first (by the time in their names)."""
    return sorted((p for p in target.iterdir() if _NAME.match(p.name)), key=_order, reverse=True)


def _order(path: Path) -> tuple[str, int]:
    stem = path.name[len(PREFIX) : -len(SUFFIX)]
    stamp, _, number = stem.partition("-")
    return stamp, int(number or 1)


# --- list ---------------------------------------------------------------------------------


def list_backups(config: settings.Settings) -> list[Listed]:
    """Every backup file of the folder, newest first, each with its manifest or its problem."""
    target = folder(config)
    if not target.is_dir():
        return []
    found = []
    for path in _backups(target):
        size = path.stat().st_size
        try:
            with tarfile.open(path, "r:") as tar:
                found.append(Listed(path, size, _read_manifest(tar, path)))
        except (BackupIntegrityError, tarfile.TarError, OSError) as exc:
            found.append(Listed(path, size, None, str(exc)))
    return found


def _read_manifest(tar: tarfile.TarFile, path: Path) -> Manifest:
    member = _member(tar, MANIFEST, path)
    extracted = tar.extractfile(member)
    if extracted is None:
        raise BackupIntegrityError(f"{path}: {MANIFEST} is not a file")
    return Manifest.from_json(extracted.read(1 << 20), str(path))


def _member(tar: tarfile.TarFile, name: str, path: Path) -> tarfile.TarInfo:
    try:
        return tar.getmember(name)
    except KeyError as exc:
        raise BackupIntegrityError(f"{path}: not an appliance backup (no {name})") from exc


# --- restore ------------------------------------------------------------------------------


def locate(config: settings.Settings, name: str) -> Path:
    """A backup given as a path, or by its file name in the backup folder."""
    path = Path(name)
    if not path.exists() and path.name == name:
        path = folder(config) / name
    if not path.is_file():
        raise errors.NotFoundError(f"no backup {name} (`appliance backup list` shows them)")
    return path


async def restore(config: settings.Settings, path: Path, *, replace: bool = False) -> Restored:
    """Replace the box's database with the backup's, after every check the module names."""
    with _private_directory(Path(tempfile.gettempdir())) as work:
        manifest, dump = _unpack(path, work)
        known = max((m.version for m in migrations.available()), default=0)
        if manifest.schema_version > known:
            raise errors.StateError(
                f"{path}: the backup has schema version {manifest.schema_version}, this appliance "
                f"knows {known} at most: install appliance {manifest.appliance_version} or newer"
            )
        key = _matching_key(config, manifest, path)
        async with (
            connection.open_database(config, create_cluster=True, pool_size=2) as db,
            db.pool.acquire() as conn,
        ):
            others = await dbbackup.count_other_sessions(conn)
            if others:
                raise errors.LockedError(
                    f"{others} other session(s) use the database: stop the "
                    "daemon first (systemctl stop appliance), then restore"
                )
            await migrations.migrate(conn)  # the role and schema an empty box may lack
            tasks = await dbbackup.count_tasks(conn)
            if tasks and not replace:
                raise errors.StateError(
                    f"this box holds {tasks} task(s) and a restore replaces its whole database: "
                    "back it up first (appliance backup create), then pass --replace"
                )
            pg_restore = _tool("pg_restore", (await dbbackup.get_server(conn)).version)
            listing = await _restore_list(pg_restore, dump, work)
            async with _set_aside(conn):
                await _run(
                    pg_restore,
                    "--single-transaction",
                    "--exit-on-error",
                    "--no-owner",
                    f"--use-list={listing}",
                    str(dump),
                    connect=db.dsn,
                )
                applied = await migrations.migrate(conn)  # an older backup's schema, forward
                await dbbackup.enforce_tenant_isolation(conn)
                breaks = await dbaudit.find_chain_breaks(conn, limit=1)
                if breaks:
                    raise errors.AuditChainError(
                        f"{path}: the restored audit chain {breaks[0].chain} does not verify at "
                        f"#{breaks[0].seq} ({breaks[0].reason}); the box is left as it was"
                    )
                if key is not None:
                    await vault.open_vault(db.pool, key)
                rows = await dbbackup.count_restored_rows(conn)
    log.info(
        "backup restored: %s",
        path,
        extra={"event": "backup.restored", "path": str(path), "tasks": rows.tasks},
    )
    return Restored(path, manifest, rows, tuple(m.filename for m in applied), tasks)


def _unpack(path: Path, work: Path) -> tuple[Manifest, Path]:
    """The manifest, and the dump extracted into `work` after its checksum and size matched."""
    try:
        with tarfile.open(path, "r:") as tar:
            manifest = _read_manifest(tar, path)
            member = _member(tar, DUMP, path)
            source = tar.extractfile(member)
            if source is None:
                raise BackupIntegrityError(f"{path}: {DUMP} is not a file")
            dump = work / DUMP
            digest = hashlib.sha256()
            with dump.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupIntegrityError(f"{path}: not a readable backup: {exc}") from exc
    size = dump.stat().st_size
    if digest.hexdigest() != manifest.dump_sha256 or size != manifest.dump_bytes:
        raise BackupIntegrityError(
            f"{path}: the dump does not match its checksum (sha256 {digest.hexdigest()[:16]}…, "
            f"{size} bytes; the manifest says {manifest.dump_sha256[:16]}…, "
            f"{manifest.dump_bytes} bytes): the file is damaged; restore another backup"
        )
    return manifest, dump


def _matching_key(config: settings.Settings, manifest: Manifest, path: Path) -> bytes | None:
    """This box's vault key, when the backup's secrets need one; it must be theirs."""
    if manifest.vault_key_fingerprint is None:
        return None
    key = vault.configured_key(config)
    offered = vault.fingerprint(key)
    if offered != manifest.vault_key_fingerprint:
        raise vault.KeyMismatchError(
            f"{path}: the backup's secrets are sealed under the vault key with fingerprint "
            f"{manifest.vault_key_fingerprint}, and this box's key has fingerprint {offered}: "
            "put the backed-up box's key in place first (README: Install on a box, the vault key)"
        )
    return key


@contextlib.asynccontextmanager
async def _set_aside(conn: pool.Connection) -> AsyncIterator[None]:
    """The box's schema renamed out of the way; dropped on success, put back on failure."""
    await dbbackup.drop_set_aside_schema(conn)
    await dbbackup.set_schema_aside(conn)
    try:
        yield
    except BaseException:
        await dbbackup.drop_schema(conn)
        await dbbackup.put_schema_back(conn)
        raise
    await dbbackup.drop_set_aside_schema(conn)


async def _restore_list(tool: Path, dump: Path, work: Path) -> Path:
    """The dump's table of contents without its row-security policies: the owner they name
    may not exist here, and `enforce_tenant_isolation()` recreates them for the present one."""
    listing = await _run(tool, "--list", str(dump))
    kept = [line for line in listing.splitlines() if not _POLICY_ENTRY.match(line)]
    path = work / "restore.list"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


# --- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _private_directory(parent: Path) -> Iterator[Path]:
    """A 0700 directory under `parent`, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=".appliance-backup-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


def _tool(name: str, server: int) -> Path:
    """`pg_dump`/`pg_restore` of the server's major version or newer (Debian's, then PATH's)."""
    major = server // 10000
    debian = Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
    homebrew = Path("/opt/homebrew/opt").glob(f"postgresql@*/bin/{name}")
    candidates = [
        *sorted(debian, key=_major, reverse=True),
        *([Path(found)] if (found := shutil.which(name)) else []),
        *sorted(homebrew, key=_major, reverse=True),
    ]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and _major(candidate) >= major:
            return candidate
    raise errors.PostgresBinariesMissingError(
        f"{name} of PostgreSQL {major} or newer was not found (looked in /usr/lib/postgresql/*/bin "
        f"and PATH): apt-get install postgresql-client-{major}"
    )


def _major(path: Path) -> int:
    for part in path.parts:
        head = part.partition("@")[2] or part
        if head.isdigit():
            return int(head)
    return 0


async def _run(tool: Path, *args: str, connect: str | None = None) -> str:
    """Run pg_dump/pg_restore (against the configured database: the password never in argv);
    its standard output."""
    env: Mapping[str, str] = os.environ
    if connect is not None:
        url, env = _libpq(connect)
        args = (*args, f"--dbname={url}")
    process = await asyncio.create_subprocess_exec(
        str(tool),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()[:_ERROR_LINES]
        raise errors.DependencyError(f"{tool.name} failed: " + " / ".join(lines))
    return stdout.decode(errors="replace")


def _libpq(dsn: str) -> tuple[str, Mapping[str, str]]:
    """The DSN without its password (its TLS parameters stay: `db.tls`), and an environment
    carrying the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is not None:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
        dsn = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return dsn, env
