"""The LaunchDaemon plists against launchd.plist(5)'s keys and types, and exit 78 under launchd."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import launchd

ROOT = Path(__file__).resolve().parents[2]
PLISTS = sorted((ROOT / "launchd").glob("*.plist"))

Schema = type | tuple[Any, ...] | dict[str, Any]
_RESOURCES = dict.fromkeys(
    (
        "Core",
        "CPU",
        "Data",
        "FileSize",
        "MemoryLock",
        "NumberOfFiles",
        "NumberOfProcesses",
        "ResidentSetSize",
        "Stack",
    ),
    int,
)
_CALENDAR = dict.fromkeys(("Minute", "Hour", "Day", "Weekday", "Month"), int)
_KEEP_ALIVE = {
    "SuccessfulExit": bool,
    "NetworkState": bool,
    "Crashed": bool,
    "PathState": ("map", bool),
    "OtherJobEnabled": ("map", bool),
    "AfterInitialDemand": ("map", bool),
}
# launchd.plist(5): each key of a job and the type its value must have. ("map", T) is a
# dictionary of strings to T; ("list", T) an array of T; ("any", A, B) either form.
SCHEMA: dict[str, Schema] = {
    "Label": str,
    "Disabled": bool,
    "UserName": str,
    "GroupName": str,
    "inetdCompatibility": {"Wait": bool},
    "LimitLoadToHosts": ("list", str),
    "LimitLoadFromHosts": ("list", str),
    "LimitLoadToSessionType": ("any", str, ("list", str)),
    "Program": str,
    "ProgramArguments": ("list", str),
    "EnableGlobbing": bool,
    "EnableTransactions": bool,
    "EnablePressuredExit": bool,
    "OnDemand": bool,
    "KeepAlive": ("any", bool, _KEEP_ALIVE),
    "RunAtLoad": bool,
    "RootDirectory": str,
    "WorkingDirectory": str,
    "EnvironmentVariables": ("map", str),
    "Umask": int,
    "TimeOut": int,
    "ExitTimeOut": int,
    "ThrottleInterval": int,
    "InitGroups": bool,
    "WatchPaths": ("list", str),
    "QueueDirectories": ("list", str),
    "StartOnMount": bool,
    "StartInterval": int,
    "StartCalendarInterval": ("any", _CALENDAR, ("list", _CALENDAR)),
    "StandardInPath": str,
    "StandardOutPath": str,
    "StandardErrorPath": str,
    "Debug": bool,
    "WaitForDebugger": bool,
    "SoftResourceLimits": _RESOURCES,
    "HardResourceLimits": _RESOURCES,
    "Nice": int,
    "ProcessType": ("enum", "Background", "Standard", "Adaptive", "Interactive"),
    "AbandonProcessGroup": bool,
    "LowPriorityIO": bool,
    "LowPriorityBackgroundIO": bool,
    "MaterializeDatalessFiles": bool,
    "LaunchOnlyOnce": bool,
    "SessionCreate": bool,
    "LegacyTimers": bool,
    "AssociatedBundleIdentifiers": ("any", str, ("list", str)),
}


def problems(value: Any, schema: Schema, where: str) -> list[str]:
    """Every place where `value` does not have the type `schema` says, as `where: why`."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: a dictionary expected, not {type(value).__name__}"]
        found = [
            f"{where}.{key}: not a key of launchd.plist(5)" for key in value if key not in schema
        ]
        for key, item in value.items():
            if key in schema:
                found.extend(problems(item, schema[key], f"{where}.{key}"))
        return found
    if isinstance(schema, tuple):
        kind, *rest = schema
        if kind == "enum":
            return [] if value in rest else [f"{where}: {value!r} is none of {rest}"]
        if kind == "any":
            attempts = [problems(value, option, where) for option in rest]
            return [] if any(not a for a in attempts) else attempts[0]
        if kind == "list" and isinstance(value, list):
            items = dict(enumerate(value))
        elif kind == "map" and isinstance(value, dict):
            items = value
        else:
            return [f"{where}: {'an array' if kind == 'list' else 'a dictionary'} expected"]
        return [
            p for key, item in items.items() for p in problems(item, rest[0], f"{where}[{key}]")
        ]
    # bool is a subclass of int: an integer key must not take a boolean, nor the reverse.
    if type(value) is not schema:
        return [f"{where}: {schema.__name__} expected, not {type(value).__name__}"]
    return []


def check(job: dict[str, Any]) -> list[str]:
    found = problems(job, SCHEMA, "job")
    if "Label" not in job:
        found.append("job: Label is required")
    if "Program" not in job and "ProgramArguments" not in job:
        found.append("job: Program or ProgramArguments is required")
    return found


@pytest.fixture(params=PLISTS, ids=[p.name for p in PLISTS])
def job(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    with path.open("rb") as file:
        loaded: dict[str, Any] = plistlib.load(file)
    return loaded


class TestPlists:
    def test_there_are_plists(self) -> None:
        """launchd/ holds the daemon's job and the nightly backup's."""
        assert [p.name for p in PLISTS] == [
            "com.appliance.backup.plist",
            "com.appliance.daemon.plist",
        ]

    def test_every_key_has_launchds_type(self, job: dict[str, Any]) -> None:
        """Each key is one launchd.plist(5) documents, with the type it documents."""
        assert check(job) == []

    def test_label_names_the_file(self, job: dict[str, Any]) -> None:
        """The Label is the file name without .plist (launchctl bootstrap expects that)."""
        assert f"{job['Label']}.plist" in [p.name for p in PLISTS]

    def test_runs_as_the_service_user(self, job: dict[str, Any]) -> None:
        """_appliance, never root; absolute program path; private umask; a log file."""
        assert (job["UserName"], job["GroupName"]) == ("_appliance", "_appliance")
        assert job["ProgramArguments"][0].startswith("/")
        assert job["Umask"] == 0o077
        assert job["StandardErrorPath"].startswith("/Library/Logs/Appliance/")

    def test_the_daemon_does_not_loop_on_a_bad_config(self) -> None:
        """RunAtLoad, KeepAlive only after a failing exit, and the marker that turns 78 into 0."""
        with (ROOT / "launchd" / "com.appliance.daemon.plist").open("rb") as file:
            daemon = plistlib.load(file)
        assert daemon["RunAtLoad"] is True
        assert daemon["KeepAlive"] == {"SuccessfulExit": False}
        assert daemon["EnvironmentVariables"][launchd.SUPERVISOR] == "launchd"
        assert daemon["Label"] == launchd.LABEL


class TestSchemaCheck:
    @pytest.mark.parametrize(
        ("change", "complaint"),
        [
            ({"RunAtLoad": "true"}, "job.RunAtLoad: bool expected"),
            ({"Umask": True}, "job.Umask: int expected"),
            ({"ProgramArguments": ["/bin/x", 3]}, "job.ProgramArguments[1]: str expected"),
            ({"KeepAlive": {"SuccessfulExit": "no"}}, "job.KeepAlive"),
            ({"StartCalendarInterval": {"Hour": "3"}}, "job.StartCalendarInterval.Hour"),
            ({"RunAtBoot": True}, "job.RunAtBoot: not a key"),
            ({"ProcessType": "Daemon"}, "job.ProcessType"),
        ],
    )
    def test_a_wrong_type_is_named(self, change: dict[str, Any], complaint: str) -> None:
        """The check finds each kind of mistake (the test above can fail)."""
        job = {"Label": "x", "ProgramArguments": ["/bin/x"], **change}
        assert any(p.startswith(complaint) for p in check(job)), check(job)

    def test_a_malformed_file_does_not_load(self) -> None:
        """plistlib refuses XML that is not a property list."""
        with pytest.raises(Exception):  # noqa: B017, PT011 - expat's error type is private
            plistlib.loads(b"<plist><dict><key>Label</key></plist>")


class TestExitUnderLaunchd:
    def test_78_becomes_0_under_launchd(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A configuration error exits 0 under the launchd job, and says what to run."""
        assert launchd.exit_code(78, {launchd.SUPERVISOR: "launchd"}) == 0
        assert "launchctl kickstart -k system/com.appliance.daemon" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("code", "environ"),
        [
            (78, {}),
            (69, {"APPLIANCE_SUPERVISOR": "launchd"}),
            (70, {"APPLIANCE_SUPERVISOR": "launchd"}),
        ],
    )
    def test_every_other_status_is_kept(self, code: int, environ: dict[str, str]) -> None:
        """Outside launchd 78 stays 78; under it, a dependency down or a bug keeps its code."""
        assert launchd.exit_code(code, environ) == code

    @pytest.mark.parametrize(("supervisor", "expected"), [("launchd", 0), (None, 78)])
    def test_the_daemon_with_a_bad_config(
        self, tmp_path: Path, supervisor: str | None, expected: int
    ) -> None:
        """`appliance run` with an invalid setting: 0 under launchd, 78 elsewhere."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env["APPLIANCE_ENGINE__CONCURRENCY"] = "0"
        if supervisor:
            env[launchd.SUPERVISOR] = supervisor
        config = tmp_path / "appliance.toml"
        config.write_text("")
        done = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "--config", str(config), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == expected, done.stderr
        assert "engine.concurrency" in done.stderr
