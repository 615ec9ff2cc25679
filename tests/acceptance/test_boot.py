"""The .deb on a booted Debian 12 box: installed, started, power-cycled, killed, misconfigured.

One box for the module (tests/support/box.py: a cached mmdebstrap root filesystem booted with
systemd-nspawn); the tests run in file order on it, each checking its own outcome. The daemon
runs under the shipped, hardened unit, so the confined tool call here is the proof that the
unit's allowances (RestrictNamespaces=, SystemCallFilter=) are enough for confinement.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import box, boxprobe, installed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROBE = "/usr/lib/appliance/venv/lib/python3.11/site-packages/boxprobe.py"
BAD_CONFIG = "/etc/systemd/system/appliance.service.d/60-bad.conf"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def machine(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[box.Box]:
    """A booted box with the package installed and the test's settings in a drop-in."""
    work = tmp_path_factory.mktemp("box")
    async with box.box(work) as booted:
        await booted.boot()
        booted.put(deb, f"/root/{deb.name}")
        booted.put(Path(boxprobe.__file__), PROBE)
        await booted.run("dpkg", "-i", f"/root/{deb.name}", timeout=600)
        await installed.configure(booted, installed.SETTINGS)
        await booted.run("systemctl", "restart", "appliance.service")
        yield booted
        await booted.poweroff()


class TestInstalled:
    async def test_the_unit_is_active_and_ready(self, machine: box.Box) -> None:
        """Enabled and active, READY=1 given (Status), /readyz answers 200 on the console."""
        shown = await installed.unit(
            machine, "UnitFileState", "ActiveState", "StatusText", "Result"
        )
        assert shown["UnitFileState"] == "enabled"
        assert shown["ActiveState"] == "active"
        assert shown["StatusText"].startswith("ready: edge mode")
        assert await installed.readyz(machine) == (200, {"status": "ready"})

    async def test_exposure_check_passes(self, machine: box.Box) -> None:
        """`appliance exposure-check` over every socket of the box: exit 0."""
        checked = await installed.appliance(machine, "exposure-check", check=False)
        assert checked.code == 0, checked

    async def test_the_installed_units_verify_and_score(self, machine: box.Box) -> None:
        """Inside the box, verify prints nothing and the live unit scores 1.6 or less."""
        units = [
            f"/lib/systemd/system/{u}" for u in ("appliance.service", "appliance-backup.service")
        ]
        verified = await machine.run("systemd-analyze", "verify", *units, check=False)
        assert (verified.code, verified.stdout + verified.stderr) == (0, "")
        scored = await machine.run("systemd-analyze", "security", "--no-pager", "appliance.service")
        level = re.search(r"Overall exposure level for appliance.service: (\d+\.\d)", scored.stdout)
        assert level, scored
        assert float(level.group(1)) <= 1.6

    async def test_postgres_has_no_tcp_listener(self, machine: box.Box) -> None:
        """PostgreSQL answers on its unix socket only: nothing listens on TCP 5432."""
        sockets = await machine.run("cat", "/proc/net/tcp", "/proc/net/tcp6")
        assert f":{5432:04X} " not in sockets.stdout

    async def test_a_confined_tool_call_succeeds(self, machine: box.Box) -> None:
        """An isolated step runs under the hardened unit, fenced in: it sees none of the
        daemon's secrets (state dir, config file, credentials, Postgres socket)."""
        submitted = await installed.appliance(
            machine, "task", "submit", boxprobe.CONFINED, "--input", "{}"
        )
        done = await installed.finished(machine, int(submitted.stdout.split()[0]))
        assert done["state"] == "succeeded", done
        # each reads as an empty directory (masked) or is not there at all (a parent masked)
        seen = done["output"]["seen"]
        for path in ("/var/lib/appliance", "/run/postgresql", "/run/credentials/appliance.service"):
            assert seen[path] in ([], "refused: No such file or directory"), (path, seen[path])
        assert done["output"]["config"] == ""
        # its own PID namespace's init and itself, or, where the unit's ProtectKernelTunables=
        # keeps it from mounting a /proc of its own, an empty one: never the daemon
        assert done["output"]["processes"] in ([], [1, 2]), done["output"]["processes"]

    async def test_doctor_says_every_isolation_layer_applies(self, machine: box.Box) -> None:
        """`appliance doctor`'s isolation line: every layer applies on this host."""
        checks = json.loads(
            (await installed.appliance(machine, "--json", "doctor", check=False)).stdout
        )
        isolation = next(c for c in checks if c["name"] == "tool isolation")
        assert isolation["ok"], isolation

    async def test_the_backup_unit_makes_a_backup(self, machine: box.Box) -> None:
        """The timer is armed; its service writes a backup that `backup list` shows."""
        timers = await machine.run("systemctl", "list-timers", "--all", "--no-pager")
        assert "appliance-backup.timer" in timers.stdout
        await machine.run("systemctl", "start", "appliance-backup.service")
        listed = json.loads((await installed.appliance(machine, "--json", "backup", "list")).stdout)
        assert listed
        assert listed[0]["problem"] is None


class TestPowerCycle:
    async def test_everything_is_back_after_a_power_cycle(self, machine: box.Box) -> None:
        """Halt and boot again: the unit is active, the task and its audit chain are there."""
        submitted = await installed.appliance(
            machine, "task", "submit", boxprobe.CONFINED, "--input", "{}"
        )
        task_id = int(submitted.stdout.split()[0])
        before = await installed.finished(machine, task_id)
        await machine.poweroff()
        await machine.boot()
        await installed.active(machine)
        assert (await installed.readyz(machine))[0] == 200
        # the root setup step ran at this boot, under its hardened unit, and succeeded
        setup = await machine.run(
            "systemctl", "show", "appliance-setup.service", "--property=ActiveState,Result"
        )
        assert sorted(setup.stdout.split()) == ["ActiveState=active", "Result=success"], setup
        assert await installed.task(machine, task_id) == before
        audit = json.loads(
            (await installed.appliance(machine, "--json", "audit", "show", str(task_id))).stdout
        )
        assert len(audit) >= 3
        verified = await installed.appliance(machine, "audit", "verify", check=False)
        assert verified.code == 0, verified


class TestCrash:
    async def test_kill_9_restarts_the_daemon_and_the_task_resumes(self, machine: box.Box) -> None:
        """kill -9 mid-task: systemd starts the daemon again and the task ends from its last
        checkpoint, in a second attempt."""
        before = await installed.active(machine)
        submitted = await installed.appliance(
            machine, "task", "submit", boxprobe.SLOW, "--input", "{}"
        )
        task_id = int(submitted.stdout.split()[0])

        async def running_a_step() -> bool:
            shown = await installed.task(machine, task_id)
            return shown["state"] == "running" and len(shown["steps"]) >= 1

        await installed.eventually(running_a_step, what="the slow task to checkpoint a step")
        await machine.run("kill", "-9", before["MainPID"])

        async def restarted() -> dict[str, str] | None:
            shown = await installed.active(machine)
            return shown if shown["MainPID"] != before["MainPID"] else None

        after = await installed.eventually(restarted, what="systemd to restart the daemon")
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
        done = await installed.finished(machine, task_id)
        assert done["state"] == "succeeded", done
        # the killed attempt, not charged as the task's failure, and the one that finished it
        assert [a["outcome"] for a in done["attempt_history"]] == ["node_restarted", "succeeded"]
        assert done["crashes"] == 1
        assert [s["name"] for s in done["steps"]] == [
            f"pause{n}" for n in range(boxprobe.SLOW_STEPS)
        ]


class TestBadConfig:
    async def test_exit_78_and_no_restart_loop(self, machine: box.Box) -> None:
        """A misconfigured daemon exits 78 and stays down; fixed, it starts again."""
        await machine.run(
            "sh",
            "-c",
            f"cat > {BAD_CONFIG}",
            stdin=b"[Service]\nEnvironment=APPLIANCE_ENGINE__CONCURRENCY=0\n",
        )
        await machine.run("systemctl", "daemon-reload")
        await machine.run("systemctl", "restart", "appliance.service", check=False)

        async def failed() -> dict[str, str] | None:
            shown = await installed.unit(
                machine, "ActiveState", "SubState", "ExecMainStatus", "Result", "NRestarts"
            )
            return shown if shown["ActiveState"] == "failed" else None

        shown = await installed.eventually(failed, what="the unit to fail")
        assert (shown["ExecMainStatus"], shown["Result"]) == ("78", "exit-code")
        # A unit that systemd will restart sits in SubState auto-restart (ActiveState
        # activating) until RestartSec has passed; `failed` means no restart is coming, and
        # NRestarts (reset by the manual restart above) counts none.
        assert (shown["SubState"], shown["NRestarts"]) == ("failed", "0")
        jobs = await machine.run("systemctl", "list-jobs", "--no-legend", "--no-pager")
        assert "appliance.service" not in jobs.stdout
        journal = await machine.run(
            "journalctl", "--unit=appliance.service", "--no-pager", "-n", "20"
        )
        assert "engine.concurrency" in journal.stdout
        await machine.run("rm", BAD_CONFIG)
        await machine.run("systemctl", "daemon-reload")
        await machine.run("systemctl", "restart", "appliance.service")
        await installed.active(machine)
