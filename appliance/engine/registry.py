"""Workflows registered by name: `@registry.workflow("name")` on an async function."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from appliance import errors

if TYPE_CHECKING:
    from appliance.engine import context

WorkflowFn = Callable[["context.TaskContext", Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    fn: WorkflowFn
    integration: str | None = None
    max_attempts: int | None = None


class Registry:
    """The workflows one process knows; a worker claims only tasks of these."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def workflow(
        self, name: str, *, integration: str | None = None, max_attempts: int | None = None
    ) -> Callable[[WorkflowFn], WorkflowFn]:
        """Register the decorated function under `name`."""

        def register(fn: WorkflowFn) -> WorkflowFn:
            existing = self._workflows.get(name)
            if existing is not None and existing.fn is not fn:
                raise errors.ConfigError(f"workflow {name!r} is registered twice")
            self._workflows[name] = Workflow(name, fn, integration, max_attempts)
            return fn

        return register

    def get(self, name: str) -> Workflow:
        """The workflow, or UnknownWorkflowError naming the known ones."""
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise errors.UnknownWorkflowError(
                f"unknown workflow {name!r}; registered: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def without(self, names: Iterable[str]) -> Registry:
        """A copy lacking these workflows: a worker claims none of their tasks."""
        copy = Registry()
        left_out = set(names)
        copy._workflows = {n: w for n, w in self._workflows.items() if n not in left_out}
        return copy


registry = Registry()
workflow = registry.workflow


def import_modules(modules: Iterable[str]) -> None:
    """Import the configured workflow modules, so their decorators register them."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise errors.ConfigError(
                f"engine.workflow_modules: cannot import {module!r}: {exc}"
            ) from exc
