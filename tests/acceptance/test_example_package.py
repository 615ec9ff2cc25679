"""The example plugin (`examples/appliance-example`) installed as an operator installs one: pip
into the appliance's environment (here a throwaway virtualenv that sees the test environment's
packages), offline, without build isolation or dependencies. Then the appliance lists what it
added, and the example's own tests pass in that environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.support import daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLE = daemon.ROOT / "examples" / "appliance-example"
TAIL = 6000  # characters of a failed command's output shown


def _run(command: list[str], *, timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **options
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}\n{(done.stdout + done.stderr)[-TAIL:]}"
    )
    return done


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a virtualenv with the example pip-installed (not editable), which
    sees the packages of the test environment (the appliance, its dependencies, hatchling)."""
    root = tmp_path_factory.mktemp("example") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], timeout=60)
    interpreter = root / "bin" / "python"
    site = _run(
        [str(interpreter), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        timeout=30,
    ).stdout.strip()
    here = sysconfig.get_path("purelib")
    Path(site, "test-environment.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(interpreter),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            str(EXAMPLE),
        ],
        timeout=120,
    )
    return interpreter


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("APPLIANCE_")}


def _listing(python: Path, folder: Path, what: str) -> list[dict[str, Any]]:
    """`appliance --json WHAT list` run by the example's environment."""
    done = _run(
        [str(python), "-m", "appliance.cli", "--json", what, "list"],
        timeout=60,
        cwd=folder,
        env=daemon.environment(None, folder),
    )
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


class TestInstalledExample:
    def test_its_workflow_is_listed_with_the_distribution(
        self, python: Path, tmp_path: Path
    ) -> None:
        """`workflows list` names appliance-example 0.1.0 and its entry point."""
        daemon.config_file(tmp_path)
        [found] = [
            w for w in _listing(python, tmp_path, "workflows") if w["name"] == "example.escalate"
        ]

        assert found["origin"]["kind"] == "entry-point"
        assert (found["origin"]["distribution"], found["origin"]["version"]) == (
            "appliance-example",
            "0.1.0",
        )
        assert found["origin"]["entry_point"] == "appliance.workflows:example"

    def test_its_tool_is_listed_as_an_isolated_write(self, python: Path, tmp_path: Path) -> None:
        """`tools list` gives open_ticket's action class, its isolation and its integration."""
        daemon.config_file(tmp_path)
        [found] = [t for t in _listing(python, tmp_path, "tools") if t["name"] == "open_ticket"]

        assert (found["action_class"], found["isolated"], found["integrations"]) == (
            "write",
            True,
            ["tracker"],
        )
        assert found["origin"]["entry_point"] == "appliance.tools:example"

    def test_its_own_tests_pass(self, python: Path) -> None:
        """The example's tests (tool, policy, workflow, agent) pass where it is installed."""
        _run(
            [
                str(python),
                "-m",
                "pytest",
                "-c",
                str(daemon.ROOT / "pyproject.toml"),
                "--rootdir",
                str(daemon.ROOT),
                "-p",
                "no:cacheprovider",
                "-q",
                str(EXAMPLE / "tests"),
            ],
            timeout=240,
            cwd=daemon.ROOT,
            env=_environment(),
        )
