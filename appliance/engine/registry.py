"""Workflows registered by name: `@registry.workflow("name")` on an async function.

Each records where it came from (`origins`): the appliance, a module of
`engine.workflow_modules` (`import_modules`), or an installed distribution's entry point
(`appliance.plugins`). A second function under a taken name is refused, naming both origins.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import pydantic

from appliance import errors, origins

if TYPE_CHECKING:
    from appliance.engine import context

WorkflowFn = Callable[["context.TaskContext", Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    fn: WorkflowFn
    integration: str | None = None
    max_attempts: int | None = None
    input_model: type[pydantic.BaseModel] | None = None  # the input it takes, if declared
    origin: origins.Origin = dataclasses.field(kw_only=True)

    @property
    def module(self) -> str:
        """The module that defines the workflow."""
        return self.fn.__module__

    @property
    def input_shape(self) -> str | None:
        """The keys of the input it declares (`{"agent": ..., "version"?: ...}`), if any."""
        return None if self.input_model is None else _shape(self.input_model)

    def check_input(self, task_input: Any) -> None:
        """InputError naming the first way `task_input` does not fit the declared input."""
        if self.input_model is None:
            return
        try:
            self.input_model.model_validate(task_input)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise errors.InputError(
                f"the input of workflow {self.name} does not fit: "
                + (f"{where}: " if where else "")
                + ("unknown key" if first["type"] == "extra_forbidden" else first["msg"])
                + f" (it takes {_shape(self.input_model)})"
            ) from None


class Registry:
    """The workflows one process knows; a worker claims only tasks of these."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def workflow(
        self,
        name: str,
        *,
        integration: str | None = None,
        max_attempts: int | None = None,
        input_model: type[pydantic.BaseModel] | None = None,
    ) -> Callable[[WorkflowFn], WorkflowFn]:
        """Register the decorated function under `name` (`input_model`: the input it takes,
        checked by `appliance task submit` before the task is stored)."""

        def register(fn: WorkflowFn) -> WorkflowFn:
            origin = origins.current(fn.__module__)
            existing = self._workflows.get(name)
            if existing is not None:
                if existing.fn is not fn:
                    raise errors.DuplicateNameError(
                        f"workflow {name!r} is registered twice: by "
                        f"{existing.origin.of(existing.module)} and by {origin.of(fn.__module__)}"
                    )
                return fn
            self._workflows[name] = Workflow(
                name, fn, integration, max_attempts, input_model, origin=origin
            )
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

    def workflows(self) -> list[Workflow]:
        """Every registered workflow, by name."""
        return [self._workflows[name] for name in self.names()]

    def without(self, names: Iterable[str]) -> Registry:
        """A copy lacking these workflows: a worker claims none of their tasks."""
        copy = Registry()
        left_out = set(names)
        copy._workflows = {n: w for n, w in self._workflows.items() if n not in left_out}
        return copy


def _shape(model: type[pydantic.BaseModel]) -> str:
    """`{"agent": ..., "prompt": ..., "version"?: ...}`: the keys of an input, optional ones
    marked."""
    keys = (
        f'"{name}"' + ("" if info.is_required() else "?")
        for name, info in model.model_fields.items()
    )
    return "{" + ", ".join(f"{key}: ..." for key in keys) + "}"


registry = Registry()
workflow = registry.workflow


def import_modules(modules: Iterable[str]) -> None:
    """Import the configured workflow modules, so their decorators register them (and the
    tools they define), each of origin `config`. A module that fails to import is a
    ConfigError naming it with the error's type and text, never a traceback."""
    for module in modules:
        try:
            with origins.loading(origins.Origin("config", module)):
                importlib.import_module(module)
        except errors.DuplicateNameError:
            raise
        except ImportError as exc:
            raise errors.ConfigError(
                f"{origins.CONFIG_KEY}: cannot import {module!r}: {exc}"
            ) from exc
        except Exception as exc:
            raise errors.ConfigError(
                f"{origins.CONFIG_KEY}: importing {module!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
