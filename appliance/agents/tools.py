"""Tools an agent may call: registered by name with a description and a JSON input schema.

A tool call is a step of the agent's task, so it runs once: on resume its checkpointed result
is handed back. An agent may call only the tools its definition lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from appliance import errors


@dataclasses.dataclass(frozen=True)
class Call:
    """What a tool function is given besides its arguments."""

    tenant_id: str
    task_id: int
    services: Any


ToolFn = Callable[[Call, dict[str, Any]], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    fn: ToolFn

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
        self, name: str, description: str, input_schema: dict[str, Any]
    ) -> Callable[[ToolFn], ToolFn]:
        """Register the decorated coroutine function as a tool."""

        def register(fn: ToolFn) -> ToolFn:
            self._tools[name] = Tool(name, description, input_schema, fn)
            return fn

        return register

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "none"
            raise errors.InputError(f"unknown tool {name!r}; known: {known}") from None

    def definitions(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """The definitions of these tools, sorted by name (a stable, cacheable prefix)."""
        return [self.get(name).definition() for name in sorted(set(names))]


toolbox = Toolbox()
