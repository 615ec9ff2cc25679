"""The systemd units, checked by systemd's own tools on this host (no boot needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "appliance.service"
# 1.5 without the per-call PID namespace (RestrictNamespaces=~pid costs 0.1): README, "Install
# on a box", says why the unit allows it.
MOST_EXPOSURE = 1.6
DEFAULT_CONNECTION_CAP = 1000  # the webhook port's total connection cap (ingress)

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=true`'s overall exposure of the unit file."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


class TestHardening:
    def test_exposure_is_at_most_one_point_six(self) -> None:
        """The daemon's unit scores 1.6 or less with systemd's own assessment."""
        assert exposure(UNIT) <= MOST_EXPOSURE

    def test_the_backup_unit_is_tighter_still(self) -> None:
        """The backup job needs no network and no namespaces: it scores lower than the daemon."""
        assert exposure(ROOT / "systemd" / "appliance-backup.service") < exposure(UNIT)

    @pytest.mark.parametrize(
        "weakened",
        ["RootDirectory=", "RestrictNamespaces=", "SystemCallFilter=~@privileged"],
    )
    def test_the_score_would_notice_a_missing_line(self, weakened: str, tmp_path: Path) -> None:
        """Without one of its hardening lines the unit scores more than 1.6 (the gate can fail)."""
        lines = UNIT.read_text(encoding="utf-8").splitlines()
        unit = tmp_path / "appliance.service"
        unit.write_text("\n".join(x for x in lines if not x.startswith(weakened)) + "\n")
        assert exposure(unit) > MOST_EXPOSURE

    def test_tool_confinement_is_allowed_no_more(self) -> None:
        """Namespaces: user, mount and PID only (tool calls confine themselves in them); system
        calls: systemd's service set plus the mount calls the masks need, pidfd_open, seccomp
        and Landlock's three, privileged ones denied."""
        found = directives(UNIT)
        assert found["RestrictNamespaces"] == ["user mnt pid"]
        allowed = [word for line in found["SystemCallFilter"][:2] for word in line.split()]
        assert allowed[0] == "@system-service"
        assert sorted(allowed[1:]) == sorted(
            [
                *("mount", "umount2", "open_tree", "move_mount", "pidfd_open", "seccomp"),
                *("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"),
            ]
        )
        assert found["SystemCallFilter"][2] == "~@privileged @resources"


class TestServiceContract:
    def test_notify_with_a_watchdog(self) -> None:
        """Type=notify, so READY/STOPPING/STATUS count, and WatchdogSec for the pings."""
        found = directives(UNIT)
        assert found["Type"] == ["notify"]
        assert found["WatchdogSec"] == ["30s"]

    def test_a_bad_config_is_not_restarted(self) -> None:
        """Restart=on-failure, except exit 78 (misconfigured), which a restart cannot fix."""
        found = directives(UNIT)
        assert found["Restart"] == ["on-failure"]
        assert found["RestartPreventExitStatus"] == ["78"]

    def test_descriptors_for_the_connection_cap(self) -> None:
        """LimitNOFILE leaves room for the public port's connection cap several times over."""
        assert int(directives(UNIT)["LimitNOFILE"][0]) >= 4 * DEFAULT_CONNECTION_CAP

    def test_after_postgres_and_tailscaled(self) -> None:
        """Started after PostgreSQL and tailscaled; the vault key arrives as a credential."""
        found = directives(UNIT)
        after = found["After"][0].split()
        assert {"postgresql.service", "tailscaled.service"} <= set(after)
        assert found["LoadCredentialEncrypted"][0].startswith("appliance-vault-key:")
        assert found["User"] == ["appliance"]
        assert found["StateDirectory"] == ["appliance"]
        assert found["ConfigurationDirectory"] == ["appliance"]

    def test_the_provisioning_step_runs_as_root_before_each_start(self) -> None:
        """appliance.service wants appliance-provision.service and starts after it; the step
        is a oneshot as root, with three capabilities, no network and a score under 2."""
        found = directives(UNIT)
        wanted = " ".join(found["Wants"]).split()
        after = " ".join(found["After"]).split()
        assert "appliance-provision.service" in wanted
        assert "appliance-provision.service" in after
        step = ROOT / "systemd" / "appliance-provision.service"
        provision = directives(step)
        assert provision["Type"] == ["oneshot"]
        assert "User" not in provision
        assert provision["ExecStart"][0].endswith("provision --stage")
        assert provision["CapabilityBoundingSet"] == ["CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER"]
        assert provision["PrivateNetwork"] == ["yes"]
        assert exposure(step) < 2.0

    def test_the_timer_backs_up_nightly(self) -> None:
        """The timer fires daily and catches up a missed night."""
        found = directives(ROOT / "systemd" / "appliance-backup.timer")
        assert found["OnCalendar"] == ["*-*-* 03:15:00"]
        assert found["Persistent"] == ["true"]
        service = directives(ROOT / "systemd" / "appliance-backup.service")
        assert service["ExecStart"][0].endswith("backup create")
