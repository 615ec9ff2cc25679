"""The embedded Postgres of an edge box, run as an operator runs it: operator commands work
whether or not the daemon runs (each starts the cluster on demand and stops it again when no
other process uses it), and the cluster a killed daemon left running is stopped by the next
daemon's clean exit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support import daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUN_AS = "nobody" if os.geteuid() == 0 else None
AGENT = 'name = "support"\nmodel = "claude-sonnet-4-6"\npersona = "You answer briefly."\n'
POLICY = '[[rules]]\nname = "no-deletes"\ntools = ["delete_*"]\neffect = "deny"\n'


def postgres_processes(state_dir: Path) -> list[int]:
    """The pids of every process whose command line names the cluster's data directory."""
    data = str(state_dir / "postgres")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and data.encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture
def box() -> Iterator[Path]:
    """A short state directory (unix socket paths are short) the Postgres user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="apc"))
    folder.chmod(0o755)
    try:
        yield folder / "state"
    finally:
        for pid in postgres_processes(folder / "state"):
            os.kill(pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def embedded(state_dir: Path, **more: Any) -> dict[str, Any]:
    """Overrides for the embedded cluster in `state_dir`."""
    settings: dict[str, Any] = {"state_dir": str(state_dir)}
    if RUN_AS:
        settings["database.embedded_user"] = RUN_AS
    return settings | more


async def cli(state_dir: Path, folder: Path, *args: str) -> daemon.Result:
    """`appliance ARGS` on the box's embedded cluster."""
    return await daemon.cli(*args, folder=folder, overrides=embedded(state_dir), timeout=120)


@pytest_asyncio.fixture(loop_scope="session")
async def initialised(box: Path, tmp_path: Path) -> AsyncIterator[Path]:
    """A box after `appliance init`, nothing running."""
    result = await cli(box, tmp_path, "init")
    assert result.code == 0, result.stderr
    assert postgres_processes(box) == []
    yield box


def operator_commands(folder: Path) -> list[tuple[str, ...]]:
    """Every operator command that reads or writes the database, with valid arguments."""
    (folder / "value").write_text("s3cr3t-value")
    (folder / "agent.toml").write_text(AGENT)
    (folder / "policy.toml").write_text(POLICY)
    (folder / "docs").mkdir()
    (folder / "docs" / "handbook.md").write_text("# Refunds\n\nRefunds take five days.\n")
    value = str(folder / "value")
    return [
        ("migrate",),
        ("tenants", "add", "acme"),
        ("tenants", "list"),
        ("secrets", "set", "github", "token", "--from-file", value),
        ("secrets", "list"),
        ("secrets", "rotate", "github", "token", "--from-file", value),
        ("secrets", "delete", "github", "token"),
        ("policy", "apply", str(folder / "policy.toml")),
        ("policy", "show"),
        ("policy", "diff", "1", "1"),
        ("prices", "set", "claude-sonnet-4-6", "input", "3", "--from", "2020-01-01"),
        ("prices", "list"),
        ("agents", "apply", str(folder / "agent.toml")),
        ("agents", "list"),
        ("agents", "show", "support"),
        ("docs", "add", str(folder / "docs"), "--collection", "handbook"),
        ("task", "submit", "demo.folder_digest", "--input", json.dumps({"folder": str(folder)})),
        ("task", "list"),
        ("task", "show", "1"),
        ("task", "cancel", "1"),
        ("task", "retry", "1"),
        ("approvals", "list"),
        ("audit", "verify"),
        ("audit", "show", "1"),
        ("cost",),
        ("budgets", "set", "20"),
    ]


class TestWithoutADaemon:
    async def test_every_operator_command_works_and_leaves_nothing_running(
        self, initialised: Path, tmp_path: Path
    ) -> None:
        """Each command starts the cluster, does its work, and stops it again."""
        for command in operator_commands(tmp_path):
            result = await cli(initialised, tmp_path, *command)
            assert result.code == 0, f"{' '.join(command)}: exit {result.code}\n{result.stderr}"
            assert postgres_processes(initialised) == [], " ".join(command)

    async def test_doctor_reaches_the_database(self, initialised: Path, tmp_path: Path) -> None:
        """doctor starts the cluster for its checks too (its exit depends on the host)."""
        result = await cli(initialised, tmp_path, "doctor")
        assert "[ok  ] database: reachable" in result.stdout.splitlines(), result.stdout
        assert postgres_processes(initialised) == []


class TestBesideADaemon:
    async def test_commands_while_a_daemon_starts_all_work(
        self, initialised: Path, tmp_path: Path
    ) -> None:
        """Commands racing a starting daemon succeed; its clean stop then stops the cluster."""
        commands = [("tenants", "list"), ("secrets", "list"), ("task", "list"), ("audit", "verify")]
        starting = asyncio.create_task(
            daemon.start(None, tmp_path, overrides=embedded(initialised))
        )
        results = await asyncio.gather(*(cli(initialised, tmp_path, *c) for c in commands))
        running = await starting
        try:
            for command, result in zip(commands, results, strict=True):
                assert result.code == 0, f"{' '.join(command)}\n{result.stderr}"
            assert await running.get("/readyz") == (200, {"status": "ready"})
        finally:
            assert await running.terminate() == 0
        assert postgres_processes(initialised) == []

    async def test_a_command_leaves_the_daemons_cluster_running(
        self, initialised: Path, tmp_path: Path
    ) -> None:
        """A command run beside a daemon does not stop the server the daemon uses."""
        async with daemon.running(None, tmp_path, overrides=embedded(initialised)) as running:
            before = postgres_processes(initialised)
            result = await cli(initialised, tmp_path, "tenants", "list")
            assert result.code == 0, result.stderr
            assert postgres_processes(initialised) == before != []
            assert await running.get("/readyz") == (200, {"status": "ready"})
            assert await running.terminate() == 0
        assert postgres_processes(initialised) == []


class TestAfterAKill:
    async def test_the_next_daemon_stops_the_cluster_a_killed_one_left(
        self, initialised: Path, tmp_path: Path
    ) -> None:
        """kill -9, a new daemon, a clean stop: no Postgres process of the state dir is left."""
        first = await daemon.start(None, tmp_path, name="first", overrides=embedded(initialised))
        await first.kill()
        assert postgres_processes(initialised) != []
        second = await daemon.start(None, tmp_path, name="second", overrides=embedded(initialised))
        assert second.count("postgres.adopted") == 1
        assert await second.terminate() == 0
        assert postgres_processes(initialised) == []
