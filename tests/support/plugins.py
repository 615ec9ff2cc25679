"""Installed distributions made by hand for the tests of entry points: a folder holding modules
and a `NAME-VERSION.dist-info` with `METADATA` and `entry_points.txt`, what pip leaves in
site-packages. On a process's PYTHONPATH, `importlib.metadata` finds it as it finds any
installed distribution."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

from tests.support import daemon


def install(
    folder: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, Mapping[str, str]],
    modules: Mapping[str, str],
) -> Path:
    """Write the distribution into `folder` (made if missing); `entry_points` maps a group to
    its entry points (name to value), `modules` a module name to its source."""
    folder.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = (
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
        for group, entries in entry_points.items()
    )
    (info / "entry_points.txt").write_text("\n".join(groups))
    return folder


def path_with(*folders: Path) -> dict[str, str]:
    """The environment that puts `folders` on a command's path, after the tree's own."""
    return {"PYTHONPATH": os.pathsep.join([str(daemon.ROOT), *map(str, folders)])}
