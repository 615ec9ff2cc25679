"""The embedded Postgres supervisor, against the real initdb and pg_ctl."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from appliance import errors
from appliance.db import embedded

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

IS_ROOT = os.geteuid() == 0
# Postgres refuses root, so as root the clusters run as the unprivileged `nobody`.
RUN_AS = "nobody" if IS_ROOT else None
root_only = pytest.mark.skipif(not IS_ROOT, reason="the run-as-root checks apply only as root")


def make_state_dir() -> Path:
    """A short directory under /tmp (unix socket paths are short) that RUN_AS may enter."""
    state_dir = Path(tempfile.mkdtemp(prefix="ape"))
    state_dir.chmod(0o755)
    return state_dir


def postmaster_pid(postgres: embedded.EmbeddedPostgres) -> int:
    """The pid of the running server, from the first line of postmaster.pid."""
    return int((postgres.data_dir / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state directory for a test that starts no server."""
    path = make_state_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def cluster() -> AsyncIterator[embedded.EmbeddedPostgres]:
    """One cluster started on an empty state directory, shared by the module's tests."""
    path = make_state_dir()
    postgres = embedded.EmbeddedPostgres(path, run_as=RUN_AS)
    try:
        await postgres.start()
        yield postgres
    finally:
        await postgres.stop()
        shutil.rmtree(path)


class TestEmbeddedPostgres:
    async def test_start_creates_the_database(self, cluster: embedded.EmbeddedPostgres) -> None:
        """Start on an empty state directory leaves a database that dsn() connects to."""
        connection = await asyncpg.connect(cluster.dsn())
        try:
            assert await connection.fetchval("SELECT current_database()") == "appliance"
        finally:
            await connection.close()

    async def test_server_listens_on_no_tcp_address(
        self, cluster: embedded.EmbeddedPostgres
    ) -> None:
        """The server is reachable over the unix socket only."""
        connection = await asyncpg.connect(cluster.dsn())
        try:
            assert await connection.fetchval("SHOW listen_addresses") == ""
        finally:
            await connection.close()

    async def test_socket_directory_is_private(self, cluster: embedded.EmbeddedPostgres) -> None:
        """The socket directory is mode 0700, which is what makes trust authentication safe."""
        assert cluster.socket_dir.stat().st_mode & 0o777 == 0o700

    async def test_second_start_reuses_the_running_server(
        self, cluster: embedded.EmbeddedPostgres, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A second start() finds the server running and does not start another."""
        pid = postmaster_pid(cluster)
        with caplog.at_level(logging.INFO, logger=embedded.__name__):
            await cluster.start()
        assert postmaster_pid(cluster) == pid
        assert "postgres.reused" in [getattr(record, "event", None) for record in caplog.records]

    async def test_new_supervisor_reuses_a_left_running_server(
        self, cluster: embedded.EmbeddedPostgres
    ) -> None:
        """A server left running by a killed daemon is reused by the next one's start()."""
        pid = postmaster_pid(cluster)
        successor = embedded.EmbeddedPostgres(cluster.data_dir.parent, run_as=RUN_AS)
        await successor.start()
        assert postmaster_pid(cluster) == pid

    async def test_restart_keeps_the_data(self, cluster: embedded.EmbeddedPostgres) -> None:
        """A table created before stop() is still there after the next start()."""
        connection = await asyncpg.connect(cluster.dsn())
        try:
            await connection.execute("CREATE TABLE kept (id int)")
        finally:
            await connection.close()
        await cluster.stop()
        assert not await cluster.is_running()
        await cluster.start()
        connection = await asyncpg.connect(cluster.dsn())
        try:
            assert await connection.fetchval("SELECT to_regclass('kept')::text") == "kept"
        finally:
            await connection.close()

    async def test_stop_twice_is_safe(self, cluster: embedded.EmbeddedPostgres) -> None:
        """A second stop() of a stopped server does nothing."""
        try:
            await cluster.stop()
            await cluster.stop()
            assert not await cluster.is_running()
        finally:
            await cluster.start()

    async def test_stop_before_start_needs_no_binaries(self, state_dir: Path) -> None:
        """stop() on a state directory that never held a server does nothing."""
        await embedded.EmbeddedPostgres(state_dir, search_path=[]).stop()

    @root_only
    async def test_root_without_run_as_is_refused(self, state_dir: Path) -> None:
        """As root with no user to run Postgres as, start() says how to create one."""
        postgres = embedded.EmbeddedPostgres(state_dir, run_as=None)
        with pytest.raises(errors.RunAsRootError, match="useradd"):
            await postgres.start()

    @root_only
    async def test_root_with_unknown_run_as_is_refused(self, state_dir: Path) -> None:
        """As root with a user that does not exist, start() refuses."""
        postgres = embedded.EmbeddedPostgres(state_dir, run_as="no-such-user-xyz")
        with pytest.raises(errors.RunAsRootError, match="no-such-user-xyz"):
            await postgres.start()

    async def test_missing_binaries_say_what_to_install(self, state_dir: Path) -> None:
        """With no initdb, pg_ctl and postgres to be found, start() names the package."""
        postgres = embedded.EmbeddedPostgres(state_dir, run_as=RUN_AS, search_path=[state_dir])
        with pytest.raises(errors.PostgresBinariesMissingError, match="apt-get install postgresql"):
            await postgres.start()

    async def test_data_directory_of_another_major_version_is_refused(
        self, state_dir: Path
    ) -> None:
        """A data directory from another PostgreSQL major version is a config error."""
        (state_dir / "postgres").mkdir(mode=0o700)
        (state_dir / "postgres" / "PG_VERSION").write_text("9.6\n")
        postgres = embedded.EmbeddedPostgres(state_dir, run_as=RUN_AS)
        with pytest.raises(errors.ConfigError, match=r"created by PostgreSQL 9\.6"):
            await postgres.start()

    def test_too_long_state_dir_is_refused(self) -> None:
        """A state directory too long for a unix socket path is a config error."""
        with pytest.raises(errors.ConfigError, match="too long for a unix socket"):
            embedded.EmbeddedPostgres(Path("/tmp") / ("x" * 90))

    def test_invalid_database_name_is_refused(self) -> None:
        """A database name that is not a plain lowercase identifier is a config error."""
        with pytest.raises(errors.ConfigError, match="database name"):
            embedded.EmbeddedPostgres(Path("/tmp/ape"), database='app"; DROP')


USER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from appliance.db import embedded

async def main() -> None:
    cluster = embedded.EmbeddedPostgres(Path(sys.argv[1]), run_as=sys.argv[2] or None)
    async with cluster.use(create=True):
        print("using", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def another_user(state_dir: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process using the cluster of `state_dir` (killed with SIGKILL at the end)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        USER_SCRIPT,
        str(state_dir),
        RUN_AS or "",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(50):
            assert await process.stdout.readline() == b"using\n"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture
def fresh_state_dir() -> Iterator[Path]:
    """A state directory for a cluster of the test's own, its server stopped at the end."""
    path = make_state_dir()
    try:
        yield path
    finally:
        data = path / "postgres"
        if (data / "postmaster.pid").exists():
            pg_ctl = embedded.find_binaries() / "pg_ctl"
            as_user = ["runuser", "-u", RUN_AS, "--"] if RUN_AS else []
            subprocess.run(
                [*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(path)


class TestClusterUsers:
    async def test_the_last_user_to_leave_stops_the_server(self, fresh_state_dir: Path) -> None:
        """use() starts the server for its block and stops it after, when no one else uses it."""
        cluster = embedded.EmbeddedPostgres(fresh_state_dir, run_as=RUN_AS)
        async with cluster.use(create=True):
            assert await cluster.is_running()
        assert not await cluster.is_running()

    async def test_a_server_another_process_uses_is_not_stopped(
        self, fresh_state_dir: Path
    ) -> None:
        """Leaving while another live process uses the server leaves it running."""
        cluster = embedded.EmbeddedPostgres(fresh_state_dir, run_as=RUN_AS)
        async with another_user(fresh_state_dir):
            async with cluster.use(create=True):
                pass
            assert await cluster.is_running()

    async def test_a_server_whose_user_was_killed_is_taken_over_and_stopped(
        self, fresh_state_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After a kill -9 of its user, the next user takes it over and stops it on leaving."""
        cluster = embedded.EmbeddedPostgres(fresh_state_dir, run_as=RUN_AS)
        async with another_user(fresh_state_dir) as user:
            pid = postmaster_pid(cluster)
            user.kill()
            await user.wait()
        assert await cluster.is_running()
        with caplog.at_level(logging.INFO, logger=embedded.__name__):
            async with cluster.use(create=False):
                assert postmaster_pid(cluster) == pid
        assert "postgres.adopted" in [getattr(r, "event", None) for r in caplog.records]
        assert not await cluster.is_running()

    async def test_users_arriving_together_share_one_server(self, fresh_state_dir: Path) -> None:
        """Three users at once: one server, stopped once all three have left."""
        pids: list[int] = []

        async def use_it(cluster: embedded.EmbeddedPostgres) -> None:
            async with cluster.use(create=True):
                pids.append(postmaster_pid(cluster))
                await asyncio.sleep(0.5)

        clusters = [embedded.EmbeddedPostgres(fresh_state_dir, run_as=RUN_AS) for _ in range(3)]
        await asyncio.gather(*(use_it(c) for c in clusters))
        assert len(set(pids)) == 1
        assert not await clusters[0].is_running()

    async def test_without_create_an_empty_state_dir_says_run_init(self, state_dir: Path) -> None:
        """An operator command does not initdb a cluster: it says to run init, touching nothing."""
        target = state_dir / "box"
        cluster = embedded.EmbeddedPostgres(target, run_as=RUN_AS)
        with pytest.raises(errors.ConfigError, match="run `appliance init` first"):
            async with cluster.use(create=False):
                pass
        assert not target.exists()
