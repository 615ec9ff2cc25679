"""`appliance doctor`'s tool isolation check: what the host can confine, against the setting."""

from __future__ import annotations

import pytest

from appliance import doctor, settings
from appliance.isolation import confinement


def _host_without_landlock() -> dict[str, bool | int]:
    found: dict[str, bool | int] = dict.fromkeys(confinement.LAYERS, True)
    found.update(landlock_fs=False, landlock_net=False, landlock_scope=False, landlock_abi=0)
    return found


class TestIsolationCheck:
    def test_a_host_that_applies_every_layer_passes(self) -> None:
        """This machine (Linux with Landlock and user namespaces) can confine tools."""
        check = doctor._isolation(settings.Settings())

        assert (check.ok, check.failed) == (True, False), check.detail

    def test_a_missing_layer_fails_when_strict(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Strict isolation on a host without Landlock is a failure naming the layers."""
        monkeypatch.setattr(confinement, "capabilities", _host_without_landlock)

        check = doctor._isolation(settings.Settings())

        assert check.failed
        assert "missing: landlock_fs, landlock_net, landlock_scope" in check.detail

    def test_a_missing_layer_only_warns_when_not_strict(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With isolation.strict = false the same host is a warning, not a failure."""
        monkeypatch.setattr(confinement, "capabilities", _host_without_landlock)
        config = settings.Settings.model_validate({"isolation": {"strict": False}})

        check = doctor._isolation(config)

        assert (check.ok, check.failed, check.severity) == (False, False, "warn")

    @pytest.mark.parametrize("layer", ["pid_namespace", "private_proc", "seccomp"])
    def test_the_process_and_system_call_layers_are_required_too(
        self, monkeypatch: pytest.MonkeyPatch, layer: str
    ) -> None:
        """A host that cannot give a call its own PID namespace, its own /proc or a seccomp
        filter fails the check under strict isolation, naming the layer."""
        found: dict[str, bool | int] = dict.fromkeys(confinement.LAYERS, True)
        found.update({layer: False, "landlock_abi": 7})
        monkeypatch.setattr(confinement, "capabilities", lambda: found)

        check = doctor._isolation(settings.Settings())

        assert check.failed
        assert f"missing: {layer}" in check.detail
        assert "ProtectKernelTunables=" in check.fix
