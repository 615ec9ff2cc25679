"""The workflow registry and the toolbox: registration, lookup, origins, and the import of
workflow modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import errors, origins
from appliance.agents import tools
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
        assert reg.get("noop") == registry.Workflow(
            "noop", _noop, origin=origins.Origin("import", __name__)
        )

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

    def test_a_module_that_raises_at_import_is_a_config_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any exception of a configured module's import is one ConfigError naming it."""
        (tmp_path / "workflows_for_test_c.py").write_text("raise RuntimeError('no region')\n")
        monkeypatch.syspath_prepend(str(tmp_path))

        with pytest.raises(
            errors.ConfigError, match=r"'workflows_for_test_c' failed: RuntimeError: no region"
        ):
            registry.import_modules(["workflows_for_test_c"])

    def test_what_a_configured_module_registers_is_of_origin_config(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A workflow registered while its configured module is imported records that module."""
        (tmp_path / "workflows_for_test_d.py").write_text(
            "from appliance.engine import registry\n"
            "REGISTRY = registry.Registry()\n"
            "@REGISTRY.workflow('d')\n"
            "async def d(ctx, task_input):\n"
            "    return None\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "workflows_for_test_d", raising=False)

        registry.import_modules(["workflows_for_test_d"])

        found = sys.modules["workflows_for_test_d"].REGISTRY.get("d")
        assert found.origin == origins.Origin("config", "workflows_for_test_d")
        monkeypatch.delitem(sys.modules, "workflows_for_test_d")


PLUGIN = origins.Origin(
    "entry-point",
    "acme_plugin",
    distribution="acme-tools",
    version="2.3.1",
    entry_point="appliance.workflows:acme",
)


async def _tool(call: tools.Call, arguments: dict[str, Any]) -> Any:
    return arguments


async def _other_tool(call: tools.Call, arguments: dict[str, Any]) -> Any:
    return None


class TestOrigins:
    def test_what_registers_while_a_plugin_loads_is_the_plugins(self) -> None:
        """A workflow registered within `loading` records that origin."""
        reg = registry.Registry()

        with origins.loading(PLUGIN):
            reg.workflow("acme.sync")(_noop)

        assert reg.get("acme.sync").origin == PLUGIN

    def test_the_appliances_own_modules_are_built_in_whoever_loads_them(self) -> None:
        """Code of the appliance is built in, even when a plugin's import brings it in."""
        with origins.loading(PLUGIN):
            found = origins.current("appliance.agents.loop")

        assert found == origins.Origin("built-in", "appliance.agents.loop")

    def test_outside_any_load_the_module_is_the_origin(self) -> None:
        """Registered by a module nobody loaded as a plugin: of kind import, named by it."""
        assert origins.current("somewhere.else") == origins.Origin("import", "somewhere.else")

    def test_a_second_workflow_under_a_plugins_name_names_both_origins(self) -> None:
        """The refusal says who registered the name first and who tried again."""
        reg = registry.Registry()
        with origins.loading(PLUGIN):
            reg.workflow("acme.sync")(_noop)

        with pytest.raises(
            errors.DuplicateNameError,
            match=r"'acme.sync' is registered twice: by acme-tools 2.3.1 \(entry point "
            r"appliance.workflows:acme\), in tests.unit.test_registry and by module "
            r"tests.unit.test_registry",
        ):
            reg.workflow("acme.sync")(_other)

    def test_a_second_tool_under_one_name_is_refused_naming_both_origins(self) -> None:
        """A tool name is taken once, whatever its origin."""
        box = tools.Toolbox()
        register = box.tool("lookup", "Look it up.", {"type": "object"}, action_class="read")
        with origins.loading(PLUGIN):
            register(_tool)

        with pytest.raises(errors.DuplicateNameError, match=r"'lookup'.*acme-tools 2.3.1.*and by"):
            register(_other_tool)
        assert box.get("lookup").fn is _tool

    def test_a_tool_registered_again_keeps_its_first_origin(self) -> None:
        """The same function registered twice (a module imported twice) is one tool."""
        box = tools.Toolbox()
        register = box.tool("lookup", "Look it up.", {"type": "object"}, action_class="read")
        with origins.loading(PLUGIN):
            register(_tool)

        register(_tool)

        assert [t.origin for t in box.tools()] == [PLUGIN]
