"""Tools an agent may call: registered by name with a description, a JSON input schema, and
what the policy needs to know of them.

A tool call is a step of the agent's task, so it runs once: on resume its checkpointed result
is handed back. An agent may call only the tools its definition lists.

Every tool declares its action class (read, write, destructive, financial, customer_facing),
the integrations whose secrets it may lease, and whether repeating it with the same
idempotency key is safe. A tool runs in its own confined process (`appliance.isolation`)
unless it is part of the appliance itself and declared `isolated=False`: code from elsewhere
never runs inside the control plane.

Each tool records where it came from (`origins`: the appliance, a module of
`engine.workflow_modules`, an installed distribution's entry point); a second function under
a taken name is refused, naming both origins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import errors, origins

ACTION_CLASSES = ("read", "write", "destructive", "financial", "customer_facing")


@dataclasses.dataclass(frozen=True)
class Call:
    """What a tool function is given besides its arguments.

    `services` is the agent runtime for a tool of the appliance's own that runs in the control
    plane, and the control plane's proxy (`isolation.child.ControlPlane`: leases, the task) in
    a tool process. `idempotency_key` is the same for every attempt of the same step.
    """

    tenant_id: str
    task_id: int
    services: Any
    idempotency_key: str = ""


ToolFn = Callable[[Call, dict[str, Any]], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    fn: ToolFn
    action_class: str
    integrations: tuple[str, ...] = ()
    idempotent: bool = False
    isolated: bool = True
    origin: origins.Origin = dataclasses.field(kw_only=True)

    @property
    def module(self) -> str:
        """The module that defines the tool (a tool process imports it)."""
        return self.fn.__module__

    @property
    def writes(self) -> bool:
        """Whether a call has a side effect outside (everything but `read`)."""
        return self.action_class != "read"

    def definition(self) -> dict[str, Any]:
        """The tool as the Messages API takes it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


class Toolbox:
    """The tools this process knows."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def tool(
        self,
        name: str,
        description: str,
        input_schema: dict[str, Any],
        *,
        action_class: str,
        integrations: tuple[str, ...] = (),
        idempotent: bool = False,
        isolated: bool = True,
    ) -> Callable[[ToolFn], ToolFn]:
        """Register the decorated coroutine function as a tool."""
        if action_class not in ACTION_CLASSES:
            raise errors.ConfigError(
                f"tool {name!r}: action class {action_class!r} is not one of "
                f"{', '.join(ACTION_CLASSES)}"
            )

        def register(fn: ToolFn) -> ToolFn:
            if not isolated and not origins.built_in(fn.__module__):
                raise errors.ConfigError(
                    f"tool {name!r} of {fn.__module__} must run isolated: only the "
                    "appliance's own tools run inside the control plane"
                )
            origin = origins.current(fn.__module__)
            existing = self._tools.get(name)
            if existing is not None:
                if existing.fn is not fn:
                    raise errors.DuplicateNameError(
                        f"tool {name!r} is registered twice: by "
                        f"{existing.origin.of(existing.module)} and by {origin.of(fn.__module__)}"
                    )
                return fn
            self._tools[name] = Tool(
                name,
                description,
                input_schema,
                fn,
                action_class,
                tuple(integrations),
                idempotent,
                isolated,
                origin=origin,
            )
            return fn

        return register

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise errors.UnknownToolError(f"unknown tool {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def tools(self) -> list[Tool]:
        """Every registered tool, by name."""
        return [self._tools[name] for name in self.names()]

    def definitions(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """The definitions of these tools, sorted by name (a stable, cacheable prefix)."""
        return [self.get(name).definition() for name in sorted(set(names))]


toolbox = Toolbox()
