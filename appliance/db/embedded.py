"""The embedded Postgres: the cluster of the state directory, used when no DSN is set.

Layout under the state directory:

    postgres/       the data directory, initdb'd on the first start (mode 0700)
    run/            the unix socket directory (mode 0700)
    postgres.log    the server's log (pg_ctl -l)

Authentication is `trust`. That is safe only because of two facts kept here: the server listens
on no TCP address at all, and only the owner of `run/` (and root) can reach its socket.

Postgres refuses to run as root, so a daemon running as root runs initdb and pg_ctl as an
unprivileged user (`database.embedded_user`).

Who stops it: every process that uses the cluster (the daemon, and each operator command run
while no daemon is) holds a shared flock(2) on `postgres.users` for as long as it does, taken
through `use()`. The cluster is started and stopped only under the exclusive flock on
`postgres.lock`, and the process that leaves it last stops it; one that finds the users' lock
free but the server running takes it over (its previous user was killed: the kernel dropped
that process's locks) and stops it in turn. So the server that pg_ctl detaches, and that
outlives a daemon killed with kill -9, is stopped by the next daemon's clean exit, or right
after the next operator command when no daemon runs; a cluster another live process uses is
never stopped under it.

    postgres.lock   held while the server is started or stopped (holds that process's pid)
    postgres.users  held (shared) by every process using the server
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import pwd
import re
import shlex
import stat
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import asyncpg

from appliance import errors

logger = logging.getLogger(__name__)

BINARIES = ("initdb", "pg_ctl", "postgres")
PORT = 5432
SOCKET_PATH_LIMIT = 100  # bytes; the kernel's sun_path holds 107 plus the terminating NUL
COMMAND_TIMEOUT = 60.0
PG_CTL_WAIT = 60  # pg_ctl -t; its subprocess gets longer, so pg_ctl reports the timeout itself
CONNECT_TIMEOUT = 10.0
LOG_TAIL_LINES = 20
LOCK_WAIT = 2 * PG_CTL_WAIT + 60  # another process's start or stop takes at most about this
_LOCK_POLL = 0.05

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# pg_ctl hands the data directory and log path (in double quotes) and the -o options (ours in
# single quotes) to /bin/sh, and Postgres splits unix_socket_directories at commas.
_UNSAFE_PATH_CHARACTERS = frozenset("'\"$`\\,")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_HOMEBREW_ROOTS = (Path("/opt/homebrew/opt"), Path("/usr/local/opt"))
_SERVER_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclasses.dataclass(frozen=True)
class _Account:
    """The unprivileged user initdb and pg_ctl run as when the daemon runs as root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


class _FileLock:
    """A flock(2) on a file of the state directory; the kernel drops it when its process dies.

    Locks are per open file: two of these on one file conflict even within one process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            try:
                self._fd = os.open(self.path, flags, 0o600)
            except OSError as exc:
                raise errors.NotAllowedError(
                    f"cannot open the lock file {self.path}: {exc.strerror}; run the command as "
                    "the user the daemon runs as"
                ) from exc
        return self._fd

    def try_lock(self, mode: int) -> bool:
        """Take the lock (fcntl.LOCK_SH or LOCK_EX) if no other holder prevents it."""
        try:
            fcntl.flock(self._open(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def lock(self, mode: int, *, what: str) -> None:
        """Take the lock, waiting up to LOCK_WAIT seconds; LockedError after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        while not self.try_lock(mode):
            if loop.time() >= deadline:
                holder = self.path.read_text(encoding="ascii", errors="replace").strip()
                raise errors.LockedError(
                    f"{what}: process {holder or '(unknown)'} has held {self.path} for over "
                    f"{LOCK_WAIT} s; try again once it is done"
                )
            await asyncio.sleep(_LOCK_POLL)

    def write_holder(self) -> None:
        """Note this process's pid in the file, for the message of whoever waits."""
        fd = self._open()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        """Release the lock (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EmbeddedPostgres:
    """Supervises a Postgres cluster in `<state_dir>/postgres`, reachable only over a socket."""

    def __init__(
        self,
        state_dir: Path,
        *,
        database: str = "appliance",
        role: str = "appliance",
        run_as: str | None = None,
        search_path: Sequence[Path] | None = None,
    ) -> None:
        """Check the names and paths; touch nothing on disk yet.

        `run_as` is the user initdb and pg_ctl run as when this process is root (ignored
        otherwise). `search_path` is the list of directories to look for initdb, pg_ctl and
        postgres in, instead of PATH and the standard Debian and Homebrew locations (for tests,
        and to pin a version).
        """
        self._state_dir = Path(state_dir).absolute()
        self._database = _identifier("database", database)
        self._role = _identifier("role", role)
        self._run_as = run_as
        self._search_path = None if search_path is None else tuple(search_path)
        self._bin_dir: Path | None = None
        self._lock = asyncio.Lock()
        _check_state_dir(self._state_dir, self.socket_dir)

    @property
    def data_dir(self) -> Path:
        return self._state_dir / "postgres"

    @property
    def socket_dir(self) -> Path:
        return self._state_dir / "run"

    @property
    def log_path(self) -> Path:
        return self._state_dir / "postgres.log"

    @property
    def lock_path(self) -> Path:
        return self._state_dir / "postgres.lock"

    @property
    def users_path(self) -> Path:
        return self._state_dir / "postgres.users"

    def dsn(self) -> str:
        """The libpq URL asyncpg connects with: the socket directory, no TCP."""
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        return f"postgresql://{self._role}@/{self._database}?host={host}"

    async def start(self) -> None:
        """Initialise the cluster if new, start it unless running, create the database if needed.

        A start for this process alone: nothing stops the server at its end (see `use()`).
        """
        self._make_state_dir()
        async with self._exclusive("start"):
            await self._start(create=True, orphan=False)

    async def stop(self) -> None:
        """Stop the server (fast shutdown) if it is running, whoever uses it."""
        if not self._state_dir.is_dir():
            return
        async with self._exclusive("stop"):
            await self._stop()

    @contextlib.asynccontextmanager
    async def use(self, *, create: bool) -> AsyncIterator[None]:
        """The running server for the block: started if needed, and stopped after it unless
        another live process still uses it.

        Without `create`, a state directory with no cluster yet is a ConfigError that says to
        run `appliance init` (an operator command does not initdb one by accident).
        """
        if not create and not (self.data_dir / "PG_VERSION").exists():
            raise self._not_initialised()
        self._make_state_dir()
        share = _FileLock(self.users_path)
        try:
            async with self._exclusive("start"):
                await self._start(create=create, orphan=self._join(share))
        except BaseException:
            with contextlib.suppress(errors.ApplianceError):
                await self._leave(share)
            raise
        try:
            yield
        finally:
            await self._leave(share)

    def _join(self, share: _FileLock) -> bool:
        """Take a shared users' lock; True when no other process held one (under the start/stop
        lock, the only one under which exclusive users' locks are taken: granted at once)."""
        alone = share.try_lock(fcntl.LOCK_EX)
        if not share.try_lock(fcntl.LOCK_SH):
            raise errors.LockedError(f"cannot take a shared lock on {self.users_path}")
        return alone

    def _not_initialised(self) -> errors.ConfigError:
        return errors.ConfigError(
            f"there is no embedded Postgres cluster in {self._state_dir} yet; "
            "run `appliance init` first"
        )

    async def _leave(self, share: _FileLock) -> None:
        """Stop using the server; stop it when no other process uses it."""
        try:
            async with self._exclusive("stop"):
                # Not atomic (flock(2)): a failed upgrade may drop the shared lock, which is
                # being given up anyway.
                if share.try_lock(fcntl.LOCK_EX):
                    await self._stop()
        finally:
            share.close()

    @contextlib.asynccontextmanager
    async def _exclusive(self, action: str) -> AsyncIterator[None]:
        """This process alone starts or stops the server (the lock of every process)."""
        async with self._lock:
            mutex = _FileLock(self.lock_path)
            try:
                await mutex.lock(
                    fcntl.LOCK_EX, what=f"cannot {action} the embedded Postgres in {self.data_dir}"
                )
                mutex.write_holder()
                yield
            finally:
                mutex.close()

    async def _start(self, *, create: bool, orphan: bool) -> None:
        self._find_binaries()
        account = self._account()
        self._prepare_directories(account)
        if (self.data_dir / "PG_VERSION").exists():
            await self._check_major_version()
        elif create:
            await self._initdb()
        else:
            raise self._not_initialised()
        if not await self._running():
            await self._pg_ctl_start()
        elif orphan:
            logger.info(
                "took over the running Postgres in %s: the process that used it is gone",
                self.data_dir,
                extra={"event": "postgres.adopted", "data_dir": str(self.data_dir)},
            )
        else:
            logger.info(
                "reusing the running Postgres in %s",
                self.data_dir,
                extra={"event": "postgres.reused", "data_dir": str(self.data_dir)},
            )
        await self._ensure_database()

    async def _stop(self) -> None:
        if not await self._running():
            return
        args = ("-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(PG_CTL_WAIT), "stop")
        result = await self._run("pg_ctl", *args, time_limit=PG_CTL_WAIT + 15)
        if result.returncode != 0 and await self._running():
            raise errors.DependencyError(
                f"pg_ctl could not stop the Postgres in {self.data_dir} "
                f"(exit {result.returncode}): {result.output.strip()}"
            )
        logger.info(
            "stopped the Postgres in %s",
            self.data_dir,
            extra={"event": "postgres.stopped", "data_dir": str(self.data_dir)},
        )

    async def is_running(self) -> bool:
        """Whether a server is running on the data directory (pg_ctl status)."""
        return await self._running()

    async def _running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False  # never started, or stopped cleanly: no need to ask pg_ctl
        result = await self._run("pg_ctl", "status", "-D", str(self.data_dir))
        if result.returncode == 0:
            return True
        if result.returncode in (3, 4):  # not running; no accessible data directory
            return False
        raise errors.DependencyError(
            f"pg_ctl status failed for {self.data_dir} "
            f"(exit {result.returncode}): {result.output.strip()}"
        )

    async def _initdb(self) -> None:
        result = await self._run(
            "initdb",
            *("-D", str(self.data_dir), "-U", self._role, "--auth=trust"),
            *("-E", "UTF8", "--no-locale"),
        )
        if result.returncode != 0:
            raise errors.DependencyError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n"
                f"{_tail(result.output)}"
            )
        logger.info(
            "initialised a Postgres cluster in %s",
            self.data_dir,
            extra={"event": "postgres.initdb", "data_dir": str(self.data_dir)},
        )

    async def _check_major_version(self) -> None:
        on_disk = (self.data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
        result = await self._run("postgres", "--version")
        found = _SERVER_VERSION.search(result.output)
        if result.returncode != 0 or found is None:
            raise errors.DependencyError(
                f"cannot tell the version of {self._find_binaries() / 'postgres'}: "
                f"{result.output.strip()}"
            )
        major, minor = found.groups()
        installed = major if int(major) >= 10 else f"{major}.{minor or 0}"
        if on_disk != installed:
            raise errors.ConfigError(
                f"the Postgres data directory {self.data_dir} was created by PostgreSQL "
                f"{on_disk}, but the server binaries in {self._find_binaries()} are PostgreSQL "
                f"{installed}; install PostgreSQL {on_disk}, or upgrade the cluster with pg_upgrade"
            )

    async def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            "-c unix_socket_permissions=0700"
        )
        args = ("-D", str(self.data_dir), "-w", "-t", str(PG_CTL_WAIT), "-l", str(self.log_path))
        try:
            result = await self._run(
                "pg_ctl", *args, "-o", options, "start", time_limit=PG_CTL_WAIT + 15
            )
        except errors.DependencyError as exc:
            raise errors.DependencyError(self._with_log_tail(exc.message)) from exc
        if result.returncode != 0:
            raise errors.DependencyError(
                self._with_log_tail(
                    f"pg_ctl could not start the Postgres in {self.data_dir} "
                    f"(exit {result.returncode}): {result.output.strip()}"
                )
            )
        logger.info(
            "started the Postgres in %s",
            self.data_dir,
            extra={"event": "postgres.started", "data_dir": str(self.data_dir)},
        )

    async def _ensure_database(self) -> None:
        try:
            connection = await asyncpg.connect(
                host=str(self.socket_dir),
                port=PORT,
                user=self._role,
                database="postgres",
                timeout=CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise errors.DatabaseUnavailableError(
                f"cannot connect to the embedded Postgres in {self.socket_dir}: {exc}"
            ) from exc
        try:
            found = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self._database
            )
            if found is None:
                # The name matched _IDENTIFIER, and the quotes make even a keyword safe.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a racing start()
                    await connection.execute(f'CREATE DATABASE "{self._database}"')
                logger.info(
                    "created the database %s",
                    self._database,
                    extra={"event": "postgres.database_created", "database": self._database},
                )
        except asyncpg.PostgresError as exc:
            raise errors.DatabaseUnavailableError(
                f"cannot create the database {self._database} in the embedded Postgres: {exc}"
            ) from exc
        finally:
            await connection.close()

    def _find_binaries(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_binaries(self._search_path)
        return self._bin_dir

    def _account(self) -> _Account | None:
        """The user to run initdb and pg_ctl as: None for the current (non-root) user."""
        if os.geteuid() != 0:
            return None
        return _service_account(self._run_as, self._state_dir)

    def _make_state_dir(self) -> None:
        """The state directory (for the lock files) if missing; as root, others may traverse it
        only, so the Postgres user reaches its directories."""
        if self._state_dir.is_dir():
            return
        try:
            self._state_dir.mkdir(parents=True, mode=0o700 if os.geteuid() else 0o711)
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot create the state directory {self._state_dir}: {exc.strerror}"
            ) from exc

    def _prepare_directories(self, account: _Account | None) -> None:
        try:
            for directory in (self.data_dir, self.socket_dir):
                directory.mkdir(mode=0o700, exist_ok=True)
                directory.chmod(0o700)
            self.log_path.touch(mode=0o600, exist_ok=True)
            if account is not None:
                for path in (self.data_dir, self.socket_dir, self.log_path):
                    os.chown(path, account.uid, account.gid)
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot prepare the embedded Postgres directories in {self._state_dir}: {exc}"
            ) from exc
        if account is not None:
            _check_reachable(self.data_dir, account)

    async def _run(self, tool: str, *args: str, time_limit: float = COMMAND_TIMEOUT) -> _Result:
        """Run one of the server binaries (as the service user when root), output captured."""
        argv = [str(self._find_binaries() / tool), *args]
        account = self._account()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd="/",  # the service user may not be allowed into ours
                env=env,
                user=None if account is None else account.uid,
                group=None if account is None else account.gid,
                extra_groups=None if account is None else account.groups,
            )
        except OSError as exc:
            raise errors.DependencyError(f"cannot run {shlex.join(argv)}: {exc}") from exc
        try:
            async with asyncio.timeout(time_limit):
                output, _ = await process.communicate()
        except TimeoutError:
            raise errors.DependencyError(
                f"{tool} did not finish within {time_limit:.0f} s: {shlex.join(argv)}"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        returncode = await process.wait()  # at once: communicate() waited for the exit
        return _Result(returncode, output.decode(errors="replace"))

    def _with_log_tail(self, message: str) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"{message}\n(cannot read {self.log_path}: {exc})"
        return f"{message}\nlast lines of {self.log_path}:\n{_tail(text)}"


def find_binaries(search_path: Sequence[Path] | None = None) -> Path:
    """The first directory holding initdb, pg_ctl and postgres, else PostgresBinariesMissingError.

    Looks in `search_path` if given, else on PATH, then the highest-versioned Debian
    /usr/lib/postgresql/*/bin, then Homebrew's postgresql@*/bin.
    """
    if search_path is not None:
        candidates = list(search_path)
        where = ", ".join(str(directory) for directory in candidates) or "(no directories)"
    else:
        path = os.environ.get("PATH", os.defpath)
        candidates = [Path(entry) for entry in path.split(os.pathsep) if entry]
        candidates += _by_version_descending(
            _DEBIAN_ROOT.glob("*/bin"), lambda bin_dir: bin_dir.parent.name
        )
        candidates += _by_version_descending(
            (bin_dir for root in _HOMEBREW_ROOTS for bin_dir in root.glob("postgresql@*/bin")),
            lambda bin_dir: bin_dir.parent.name.partition("@")[2],
        )
        where = f"PATH, {_DEBIAN_ROOT}/*/bin or " + " or ".join(
            f"{root}/postgresql@*/bin" for root in _HOMEBREW_ROOTS
        )
    for directory in candidates:
        if all(_is_executable(directory / name) for name in BINARIES):
            return directory
    raise errors.PostgresBinariesMissingError(
        f"the PostgreSQL server binaries ({', '.join(BINARIES)}) were not found in {where}. "
        "Install them: apt-get install postgresql (Debian/Ubuntu), "
        "brew install postgresql@16 (macOS). Or point the appliance at an existing server "
        "instead: set database.url in the config, or APPLIANCE_DATABASE__URL."
    )


def _by_version_descending(
    bin_dirs: Iterable[Path], version_of: Callable[[Path], str]
) -> list[Path]:
    versioned: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in bin_dirs:
        parts = version_of(bin_dir).split(".")
        if all(part.isdigit() for part in parts):
            versioned.append((tuple(int(part) for part in parts), bin_dir))
    return [bin_dir for _, bin_dir in sorted(versioned, reverse=True)]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _identifier(what: str, name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise errors.ConfigError(
            f"the embedded Postgres {what} name {name!r} is not valid: use lowercase letters, "
            "digits and underscores, not starting with a digit, at most 63 characters"
        )
    return name


def _check_state_dir(state_dir: Path, socket_dir: Path) -> None:
    socket_path = os.fsencode(socket_dir / f".s.PGSQL.{PORT}")
    if len(socket_path) > SOCKET_PATH_LIMIT:
        raise errors.ConfigError(
            f"the state directory path {state_dir} is too long for a unix socket: "
            f"{os.fsdecode(socket_path)} is {len(socket_path)} bytes, the limit is "
            f"{SOCKET_PATH_LIMIT}; choose a shorter state_dir"
        )
    unsafe = sorted(
        {
            char
            for char in str(state_dir)
            if char in _UNSAFE_PATH_CHARACTERS or not char.isprintable()
        }
    )
    if unsafe:
        raise errors.ConfigError(
            f"the state directory path {state_dir} contains {''.join(unsafe)!r}, which pg_ctl "
            "cannot pass through its shell; choose a state_dir without quotes, $, `, \\ or commas"
        )


def _service_account(run_as: str | None, state_dir: Path) -> _Account:
    if run_as is None:
        reason = "no user to run it as is configured"
    else:
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            reason = f"the user {run_as!r} to run it as does not exist"
        else:
            if entry.pw_uid != 0:
                groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
                return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)
            reason = f"the user {run_as!r} to run it as is root too (uid 0)"
    user = run_as or "appliance"
    raise errors.RunAsRootError(
        f"the daemon runs as root and PostgreSQL refuses to, and {reason}. Create the service "
        f"user (`useradd --system --home-dir {state_dir} --shell /usr/sbin/nologin {user}`), "
        "or set database.embedded_user (APPLIANCE_DATABASE__EMBEDDED_USER) to an existing "
        "unprivileged user, or run the daemon as a non-root user."
    )


def _check_reachable(path: Path, account: _Account) -> None:
    """ConfigError unless the account may enter every directory above `path`."""
    for directory in path.parents:
        status = directory.stat()
        if status.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif status.st_gid in account.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not status.st_mode & bit:
            raise errors.ConfigError(
                f"the embedded Postgres runs as {account.name}, which cannot enter {directory} "
                f"(mode {stat.filemode(status.st_mode)}); allow it (`chmod o+x {directory}`) "
                "or choose a state_dir it can reach"
            )


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
