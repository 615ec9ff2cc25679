"""Upgrading a box in use: this release installed, used, upgraded; then a downgrade refused.

The later release is this tree with a higher version in pyproject.toml and one more migration
(which this release does not ship), built by the same build.sh. The upgrade must keep tasks,
secrets and prices, apply exactly the one new migration (the others keep the time they were
applied at), bring the service back, and leave every audit chain verifying.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from appliance import demo
from tests.support import box, installed, package, prepare

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NEWER = package.newer_version()
FOLDER = "/usr/share/doc/appliance"  # in the daemon's root (RootDirectory= binds /usr)
SECRET = b"ghp_upgrade-canary"
MIGRATIONS_SQL = "SELECT version, applied_at FROM appliance.schema_migrations ORDER BY version"


PROBE_SQL = "SELECT count(*) FROM appliance.upgrade_probe"


@pytest.fixture(scope="module")
def newer(tmp_path_factory: pytest.TempPathFactory, deb: Path) -> Path:
    """The .deb of the later release."""
    compared = subprocess.run(
        ["dpkg", "--compare-versions", NEWER, "gt", package.version()], check=False
    )
    assert compared.returncode == 0, f"{NEWER} must be higher than {package.version()}"
    return prepare.get("newer", tmp_path_factory.mktemp("newer"))


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def machine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[box.Box]:
    """A booted box without the package; the console where installed.CONSOLE says."""
    async with box.box(tmp_path_factory.mktemp("box")) as booted:
        await booted.boot()
        await installed.configure(booted, installed.CONSOLE)
        yield booted
        await booted.poweroff()


async def appliance(machine: box.Box, *args: str, check: bool = True) -> box.Result:
    """An operator command in the box (no test workflows there)."""
    return await installed.appliance(machine, *args, check=check, settings=installed.CONSOLE)


async def install(machine: box.Box, deb: Path, *, check: bool = True) -> box.Result:
    machine.put(deb, f"/root/{deb.name}")
    return await machine.run("dpkg", "-i", f"/root/{deb.name}", check=check, timeout=600)


async def migrations(machine: box.Box) -> list[str]:
    listed = await machine.run(
        "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "appliance", "-c", MIGRATIONS_SQL
    )
    return listed.stdout.splitlines()  # "version|applied_at", one line per migration


class TestUpgrade:
    async def test_data_survives_and_the_new_migration_runs_once(
        self, machine: box.Box, deb: Path, newer: Path
    ) -> None:
        """Tasks, secrets, prices and audit chains survive; only the new migration runs."""
        await install(machine, deb)
        await installed.active(machine)
        submitted = await appliance(
            machine, "task", "submit", demo.WORKFLOW, "--input", json.dumps({"folder": FOLDER})
        )
        task_id = int(submitted.stdout.split()[0])
        before = await installed.finished(machine, task_id)
        assert before["state"] == "succeeded", before
        await machine.run("appliance", "secrets", "set", "github", "token", stdin=SECRET)
        await appliance(machine, "prices", "set", "box-model", "input", "3", "--from", "2025-01-01")
        applied_before = await migrations(machine)

        upgraded = await install(machine, newer)
        assert "refusing" not in upgraded.stderr
        await installed.active(machine)
        assert (await installed.readyz(machine))[0] == 200
        shown = await appliance(machine, "--json", "task", "show", str(task_id))
        assert json.loads(shown.stdout) == before
        secrets = json.loads((await appliance(machine, "--json", "secrets", "list")).stdout)
        assert [(s["integration"], s["name"]) for s in secrets] == [("github", "token")]
        prices = await appliance(machine, "prices", "list")  # (its --json cannot print dates)
        assert "box-model" in prices.stdout
        applied_after = await migrations(machine)
        assert len(applied_after) == len(applied_before) + 1  # one new row, each version once
        assert applied_after[: len(applied_before)] == applied_before  # the old ones untouched
        probe = await machine.run(
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-XAtq",
            "-d",
            "appliance",
            "-c",
            PROBE_SQL,
        )
        assert probe.stdout.strip() == "1"  # the new migration ran, once
        verified = await appliance(machine, "audit", "verify", check=False)
        assert verified.code == 0, verified
        doctor = json.loads((await appliance(machine, "--json", "doctor", check=False)).stdout)
        vault_lines = [c for c in doctor if c["name"] in ("database", "schema")]
        assert all(c["ok"] for c in vault_lines), vault_lines

    async def test_a_downgrade_is_refused(self, machine: box.Box, deb: Path, newer: Path) -> None:
        """Installing this release over the later one fails, says why, and changes nothing."""
        refused = await install(machine, deb, check=False)
        assert refused.code != 0
        assert f"refusing to downgrade from {NEWER} to {package.version()}" in refused.stderr
        status = await machine.run(
            "dpkg-query", "--showformat=${Version} ${Status}", "--show", "appliance"
        )
        assert status.stdout == f"{NEWER} install ok installed"
        await installed.active(machine)
        assert (await installed.readyz(machine))[0] == 200
