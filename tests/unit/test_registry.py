"""The workflow registry: registration, lookup, and the import of workflow modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import errors
from appliance.engine import context, registry


async def _noop(ctx: context.TaskContext, task_input: Any) -> Any:
    return task_input


async def _other(ctx: context.TaskContext, task_input: Any) -> Any:
    return None


class TestRegistry:
    def test_registered_workflow_is_found_by_name(self) -> None:
        """A decorated function is returned unchanged and found under its name."""
        reg = registry.Registry()

        decorated = reg.workflow("noop")(_noop)

        assert decorated is _noop
        assert reg.get("noop") == registry.Workflow("noop", _noop)

    def test_integration_and_max_attempts_are_kept(self) -> None:
        """The integration and max_attempts given at registration are recorded."""
        reg = registry.Registry()
        reg.workflow("noop", integration="github", max_attempts=7)(_noop)

        found = reg.get("noop")

        assert (found.integration, found.max_attempts) == ("github", 7)

    def test_unknown_name_raises_naming_the_known_ones(self) -> None:
        """Looking up an unknown name raises UnknownWorkflowError listing the registered ones."""
        reg = registry.Registry()
        reg.workflow("beta")(_noop)
        reg.workflow("alpha")(_other)

        with pytest.raises(errors.UnknownWorkflowError, match=r"'gamma'.*alpha, beta"):
            reg.get("gamma")

    def test_unknown_name_in_empty_registry_says_none(self) -> None:
        """An empty registry says no workflow is registered."""
        with pytest.raises(errors.UnknownWorkflowError, match="registered: none"):
            registry.Registry().get("anything")

    def test_second_function_under_one_name_is_refused(self) -> None:
        """Registering another function under a taken name raises ConfigError."""
        reg = registry.Registry()
        reg.workflow("noop")(_noop)

        with pytest.raises(errors.ConfigError, match="'noop' is registered twice"):
            reg.workflow("noop")(_other)
        assert reg.get("noop").fn is _noop

    def test_same_function_may_be_registered_again(self) -> None:
        """Registering the same function again (a module imported twice) is allowed."""
        reg = registry.Registry()
        reg.workflow("noop")(_noop)

        reg.workflow("noop")(_noop)

        assert reg.names() == ["noop"]

    def test_names_are_sorted(self) -> None:
        """names() lists the registered workflows in alphabetical order."""
        reg = registry.Registry()
        for name in ("zeta", "alpha", "mid"):
            reg.workflow(name)(_noop)

        assert reg.names() == ["alpha", "mid", "zeta"]

    def test_registries_are_independent(self) -> None:
        """A workflow registered in one registry is unknown to another."""
        first, second = registry.Registry(), registry.Registry()
        first.workflow("noop")(_noop)

        assert second.names() == []


class TestImportModules:
    def test_configured_module_is_imported(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each configured module is imported (so its decorators run)."""
        (tmp_path / "workflows_for_test_a.py").write_text("IMPORTED = True\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "workflows_for_test_a", raising=False)

        registry.import_modules(["workflows_for_test_a"])

        assert sys.modules["workflows_for_test_a"].IMPORTED is True
        monkeypatch.delitem(sys.modules, "workflows_for_test_a")

    def test_missing_module_is_a_config_error(self) -> None:
        """A module that does not exist raises ConfigError naming it."""
        with pytest.raises(errors.ConfigError, match="'no_such_module_for_tests'"):
            registry.import_modules(["no_such_module_for_tests"])

    def test_module_with_a_broken_import_is_a_config_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A module whose own imports fail raises ConfigError naming the module."""
        (tmp_path / "workflows_for_test_b.py").write_text("import no_such_dependency_xyz\n")
        monkeypatch.syspath_prepend(str(tmp_path))

        with pytest.raises(errors.ConfigError, match=r"'workflows_for_test_b'.*no_such_dependency"):
            registry.import_modules(["workflows_for_test_b"])
