"""Builds the .deb the way an operator does (packaging/deb/wheels.sh, then build.sh), for tests.

The wheelhouse is gathered once into the repository's gitignored `.cache/wheelhouse` (the one
step that uses the package registries); each build is then offline. `requirements()` says why
this machine cannot build or boot the package, for a clear skip: the packaging tests need root
(nspawn, dpkg-deb ownership), Debian's python3.11 and the tools scripts/test installs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
BUILD_SECONDS = 900.0
TOOLS = ("dpkg-deb", "lintian", "shellcheck", "mmdebstrap", "systemd-nspawn", "nsenter")
EPOCH = "1700000000"
# The later release of the upgrade test: this tree, a higher version, one more migration.
PROBE_TABLE = "appliance.upgrade_probe"
PROBE_MIGRATION = (
    f"CREATE TABLE {PROBE_TABLE} (made_at timestamptz NOT NULL DEFAULT now());\n"
    f"INSERT INTO {PROBE_TABLE} DEFAULT VALUES;\n"
)


def requirements() -> str | None:
    """Why the packaging tests cannot run here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the packaging and boot tests run as root on Linux (scripts/test as root in CI)"
    python = Path("/usr/bin/python3.11")
    if not python.exists():
        return "the package is built for Debian 12's /usr/bin/python3.11, which is missing"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/test installs them as root)"
    return None


def version(tree: Path = ROOT) -> str:
    """pyproject.toml's version."""
    with (tree / "pyproject.toml").open("rb") as file:
        found: str = tomllib.load(file)["project"]["version"]
    return found


def ensure_wheelhouse() -> Path:
    """The wheelhouse, gathered (again) when it was gathered for other dependencies or by
    another wheels.sh (its stamp: a hash of both) or holds no wheel."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    script = ROOT / "packaging" / "deb" / "wheels.sh"
    recipe = repr((sorted(dependencies), script.read_bytes())).encode()
    stamp = hashlib.sha256(recipe).hexdigest()
    stamp_file = WHEELHOUSE / ".stamp"
    gathered = stamp_file.exists() and stamp_file.read_text(encoding="ascii") == stamp
    if not gathered or not any(WHEELHOUSE.glob("*.whl")):
        subprocess.run(
            [str(script), str(WHEELHOUSE)],
            check=True,
            timeout=BUILD_SECONDS,
            capture_output=True,
        )
        stamp_file.write_text(stamp, encoding="ascii")
    return WHEELHOUSE


def build(out: Path, tree: Path = ROOT, epoch: str = EPOCH) -> Path:
    """Build the .deb of `tree` into `out` (made if missing), offline; its path."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUT": str(out), "WHEELHOUSE": str(ensure_wheelhouse())}
    env["SOURCE_DATE_EPOCH"] = epoch
    done = subprocess.run(
        [str(tree / "packaging" / "deb" / "build.sh")],
        env=env,
        check=False,
        timeout=BUILD_SECONDS,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(f"build.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def newer_tree(target: Path, new_version: str, migration: str) -> Path:
    """A copy of this tree whose pyproject.toml says `new_version` (a later release) and which
    ships one more migration, `migration` (SQL), after this tree's newest."""
    ignore = shutil.ignore_patterns(".venv", ".cache", "dist", ".git", "__pycache__", "*.pyc")
    shutil.copytree(ROOT, target, ignore=ignore)
    project = target / "pyproject.toml"
    text = project.read_text(encoding="utf-8")
    project.write_text(
        text.replace(f'version = "{version()}"', f'version = "{new_version}"', 1),
        encoding="utf-8",
    )
    shipped = sorted((target / "migrations").glob("*.sql"))
    number = int(shipped[-1].name[:4]) + 1
    (target / "migrations" / f"{number:04d}_upgrade_probe.sql").write_text(
        f"-- The later release's one new migration (tests/acceptance/test_upgrade.py)\n{migration}",
        encoding="utf-8",
    )
    return target


def newer_version() -> str:
    """The later release's version: this one's, post-released."""
    return f"{version()}.post1"


def build_newer(out: Path) -> Path:
    """The .deb of the later release (newer_tree with PROBE_MIGRATION), built into `out`."""
    tree = newer_tree(out / "tree", newer_version(), PROBE_MIGRATION)
    return build(out, tree=tree)
