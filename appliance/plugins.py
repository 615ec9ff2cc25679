"""What the box runs besides its own code: installed distributions' entry points and the
modules of `engine.workflow_modules`.

A distribution extends the box by naming, in its `pyproject.toml`, the modules whose
decorators register its workflows and tools:

    [project.entry-points."appliance.workflows"]
    example = "appliance_example.workflows"

    [project.entry-points."appliance.tools"]
    example = "appliance_example.tools"

`load` imports the appliance's own workflows, then every entry point of both groups (tools
first, since workflows tend to import tools; then by distribution and name, so the order never
depends on the file system), then the configured modules; each registration records its origin
(`origins`): the entry point being loaded when it ran. The daemon loads them at start and
the commands that name workflows or tools before they use the registry. An entry point that
does not load is a `PluginError` (exit 78: systemd does not restart into it) naming the
distribution, its version, the entry point and the error, in one line; a name registered twice
is a `DuplicateNameError` naming both origins.

Loading imports the plugin's modules into the daemon: its workflows run there, like those of
the configured modules. Only its tools' calls run confined (`appliance.isolation`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib import metadata

from appliance import errors, origins
from appliance.engine import registry

GROUPS = ("appliance.tools", "appliance.workflows")
BUILT_IN = ("appliance.agents.loop", "appliance.demo")


class PluginError(errors.ConfigError):
    """An installed plugin's entry point cannot be loaded."""


def load(workflow_modules: Iterable[str]) -> None:
    """Register every workflow and tool the box has (safe to call again: modules import once)."""
    for module in BUILT_IN:
        importlib.import_module(module)
    for entry in _entry_points():
        _load(entry)
    registry.import_modules(workflow_modules)


def _entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points of both groups, in a stable order."""
    found = [entry for group in GROUPS for entry in metadata.entry_points(group=group)]
    return sorted(found, key=lambda e: (GROUPS.index(e.group), _distribution(e)[0], e.name))


def _origin_of(entry: metadata.EntryPoint) -> origins.Origin:
    name, version = _distribution(entry)
    return origins.Origin(
        "entry-point",
        entry.module,
        distribution=name,
        version=version,
        entry_point=f"{entry.group}:{entry.name}",
    )


def _distribution(entry: metadata.EntryPoint) -> tuple[str, str]:
    if entry.dist is None:
        return "(unknown distribution)", "?"
    return entry.dist.name, entry.dist.version


def _load(entry: metadata.EntryPoint) -> None:
    origin = _origin_of(entry)
    try:
        with origins.loading(origin):
            entry.load()
    except errors.DuplicateNameError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {origin}: cannot load {entry.value!r}: {type(exc).__name__}: "
            + " ".join(str(exc).split())
        ) from exc
