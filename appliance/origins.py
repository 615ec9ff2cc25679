"""Where registered code came from: the appliance itself, a module of `engine.workflow_modules`,
or an entry point of an installed distribution (`appliance.plugins` loads them).

A workflow or a tool records its origin when its decorator runs: the origin being loaded at
that moment (`loading`), except that the appliance's own modules are always built in, whoever
imports them first. Code registered outside any load (a module a test imports itself) is of
kind `import`, named by its module. Imports nothing of ours: the registry, the toolbox and
every tool process read it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Literal

Kind = Literal["built-in", "config", "entry-point", "import"]
CONFIG_KEY = "engine.workflow_modules"
_OWN_PACKAGE = "appliance"


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """What brought registered code in: `module` is the module that was imported (a built-in
    module, a configured one, or the one an entry point names)."""

    kind: Kind
    module: str
    distribution: str | None = None  # an entry point's distribution, with its version
    version: str | None = None
    entry_point: str | None = None  # `group:name`

    def __str__(self) -> str:
        if self.kind == "built-in":
            return f"the appliance ({self.module})"
        if self.kind == "config":
            return f"{CONFIG_KEY} module {self.module}"
        if self.kind == "entry-point":
            return f"{self.distribution} {self.version} (entry point {self.entry_point})"
        return f"module {self.module} (imported, not loaded as a plugin)"

    def of(self, module: str) -> str:
        """This origin, and `module` where the code it brought in lives elsewhere."""
        return str(self) if module == self.module else f"{self}, in {module}"


_loading: contextvars.ContextVar[Origin | None] = contextvars.ContextVar("loading", default=None)


@contextlib.contextmanager
def loading(origin: Origin) -> Iterator[None]:
    """Within this block, what registers (but the appliance's own code) is of `origin`."""
    token = _loading.set(origin)
    try:
        yield
    finally:
        _loading.reset(token)


def built_in(module: str) -> bool:
    """Whether `module` is part of the appliance."""
    return module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + ".")


def current(module: str) -> Origin:
    """The origin of what `module` registers now."""
    if built_in(module):
        return Origin("built-in", module)
    return _loading.get() or Origin("import", module)
