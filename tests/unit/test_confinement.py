"""The confinement spec and the decisions `confine` takes before it touches the process.

These run inside the test process, so nothing here may confine it: the host is simulated (a
Landlock ABI, another platform), and the `untouched` fixture turns any libc call or setrlimit
into a test failure. The layers themselves are attacked in tests/integration/test_confinement.py.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance import errors
from appliance.isolation import confinement, namespaces, seccomp

SetLimit = tuple[int, tuple[int, int]]


def spec_for(tmp_path: Path, **overrides: Any) -> confinement.Confinement:
    """A strict spec with `tmp_path` as its scratch dir."""
    spec = confinement.Confinement(
        memory_bytes=256 * 1024 * 1024,
        cpu_seconds=1,
        open_files=64,
        scratch_dir=str(tmp_path),
        hidden_paths=("/var/lib/appliance",),
    )
    return dataclasses.replace(spec, **overrides)


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"libc.{name} called: confine went on to apply a layer")


def _refuse_install() -> None:
    raise AssertionError("seccomp.install called: confine went on to apply a layer")


@pytest.fixture
def untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to apply a layer to the test process fails the test instead."""
    monkeypatch.setattr(namespaces, "libc", _Untouchable())
    monkeypatch.setattr(seccomp, "install", _refuse_install)

    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise AssertionError(f"setrlimit({which}, {limits}) called")

    monkeypatch.setattr(resource, "setrlimit", refuse)


@pytest.fixture
def on_macos(monkeypatch: pytest.MonkeyPatch) -> list[SetLimit]:
    """A simulated non-Linux host whose setrlimit calls are recorded, not made."""
    monkeypatch.setattr(namespaces, "libc", _Untouchable())
    monkeypatch.setattr(sys, "platform", "darwin")
    calls: list[SetLimit] = []
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append((which, limits)))
    return calls


class TestSpec:
    def test_round_trips_through_json(self, tmp_path: Path) -> None:
        """from_json(to_json()) gives back an equal spec, tuples included."""
        spec = spec_for(tmp_path, egress_ports=(443, 8443), strict=False)
        assert confinement.Confinement.from_json(spec.to_json()) == spec

    def test_defaults_to_https_only_and_strict(self, tmp_path: Path) -> None:
        """Without egress_ports and strict, TCP goes to 443 only and every layer is required."""
        spec = spec_for(tmp_path)
        assert (spec.egress_ports, spec.strict) == ((443,), True)

    def test_unknown_key_is_refused(self, tmp_path: Path) -> None:
        """A key the spec does not have is a ConfinementError, not silently dropped."""
        text = spec_for(tmp_path).to_json().replace('"strict"', '"strict_mode"')
        with pytest.raises(errors.ConfinementError, match="strict_mode"):
            confinement.Confinement.from_json(text)

    def test_text_that_is_not_json_is_refused(self) -> None:
        """Malformed JSON is a ConfinementError."""
        with pytest.raises(errors.ConfinementError, match="invalid confinement JSON"):
            confinement.Confinement.from_json("{")

    def test_non_positive_limit_is_refused(self, tmp_path: Path) -> None:
        """memory_bytes 0 is refused, naming the field."""
        with pytest.raises(errors.ConfinementError, match="memory_bytes must be a positive"):
            spec_for(tmp_path, memory_bytes=0)

    def test_relative_path_is_refused(self, tmp_path: Path) -> None:
        """A relative hidden path is refused: the process's cwd must not decide what is hidden."""
        with pytest.raises(errors.ConfinementError, match="absolute paths"):
            spec_for(tmp_path, hidden_paths=("state",))

    def test_hiding_the_root_is_refused(self, tmp_path: Path) -> None:
        """Hiding / would hide the interpreter itself: refused up front."""
        with pytest.raises(errors.ConfinementError, match="cannot hide /"):
            spec_for(tmp_path, hidden_paths=("/",))

    def test_scratch_beneath_a_hidden_path_is_accepted(self, tmp_path: Path) -> None:
        """scratch_dir inside a hidden directory is kept visible there, not refused."""
        spec = spec_for(tmp_path, hidden_paths=(str(tmp_path.parent),))
        assert spec.hidden_paths == (str(tmp_path.parent),)

    def test_a_relative_visible_path_is_refused(self, tmp_path: Path) -> None:
        """visible_paths must be absolute, like the hidden ones."""
        with pytest.raises(errors.ConfinementError, match="absolute paths"):
            spec_for(tmp_path, visible_paths=("code",))

    def test_port_out_of_range_is_refused(self, tmp_path: Path) -> None:
        """Port 0 is not a TCP port one can connect to."""
        with pytest.raises(errors.ConfinementError, match="egress_ports"):
            spec_for(tmp_path, egress_ports=(0,))

    def test_error_exits_as_misconfigured(self) -> None:
        """ConfinementError is a ConfigError: exit 78, so systemd does not restart in a loop."""
        assert issubclass(errors.ConfinementError, errors.ConfigError)
        assert errors.ConfinementError.exit_code == 78


@pytest.mark.usefixtures("untouched")
class TestStrict:
    def test_old_landlock_is_refused_before_anything_applies(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Landlock ABI 3 (no network rules, no scopes): refused, naming both layers."""
        monkeypatch.setattr(confinement, "landlock_abi", lambda: 3)
        with pytest.raises(errors.ConfinementError) as raised:
            confinement.confine(spec_for(tmp_path))
        assert "landlock_net: Landlock ABI 3 has no network rules" in raised.value.message
        assert "landlock_scope: Landlock ABI 3 has no scopes" in raised.value.message

    def test_refusal_says_how_to_relax(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The message says strict can be turned off on a host that cannot do better."""
        monkeypatch.setattr(confinement, "landlock_abi", lambda: 0)
        with pytest.raises(errors.ConfinementError, match=r"set isolation\.strict = false"):
            confinement.confine(spec_for(tmp_path))

    def test_non_linux_host_is_refused_naming_every_kernel_layer(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On macOS only rlimits exist: the five other layers are named."""
        monkeypatch.setattr(sys, "platform", "darwin")
        with pytest.raises(errors.ConfinementError) as raised:
            confinement.confine(spec_for(tmp_path))
        missing = [layer for layer in confinement.LAYERS if layer != "rlimits"]
        assert all(f"{layer}: not Linux (darwin)" in raised.value.message for layer in missing)


class TestNotStrict:
    def test_non_linux_host_applies_only_rlimits(
        self, tmp_path: Path, on_macos: list[SetLimit]
    ) -> None:
        """strict=false on macOS: rlimits apply, the five other layers are reported skipped."""
        applied = confinement.confine(spec_for(tmp_path, strict=False))
        assert applied.layers == ("rlimits",)
        assert [layer for layer, _ in applied.skipped] == list(confinement.LAYERS[:-1])

    def test_cpu_hard_limit_is_one_second_above_soft(
        self, tmp_path: Path, on_macos: list[SetLimit]
    ) -> None:
        """RLIMIT_CPU is (cpu_seconds, cpu_seconds + 1): SIGXCPU first, SIGKILL a second later."""
        confinement.confine(spec_for(tmp_path, strict=False, cpu_seconds=5))
        assert (resource.RLIMIT_CPU, (5, 6)) in on_macos

    def test_address_space_is_limited_last(self, tmp_path: Path, on_macos: list[SetLimit]) -> None:
        """RLIMIT_AS is the last limit set, so nothing before it runs short of memory."""
        confinement.confine(spec_for(tmp_path, strict=False))
        assert on_macos[-1] == (resource.RLIMIT_AS, (256 * 1024 * 1024, 256 * 1024 * 1024))

    def test_limit_above_the_hard_one_is_clamped(
        self, tmp_path: Path, on_macos: list[SetLimit], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """open_files above the current hard limit is lowered to it (raising it is not allowed)."""
        monkeypatch.setattr(resource, "getrlimit", lambda which: (32, 32))
        confinement.confine(spec_for(tmp_path, strict=False, open_files=64))
        assert (resource.RLIMIT_NOFILE, (32, 32)) in on_macos


class TestSeccompProgram:
    @pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
    def test_the_filter_checks_the_abi_before_anything_else(self, machine: str) -> None:
        """The first instructions load the ABI and kill a process calling through another."""
        program = seccomp.program(machine)
        load, compare, kill = program[:3]
        assert load == (0x20, 0, 0, 4)  # seccomp_data.arch
        assert compare[:3] == (0x15, 1, 0)
        assert kill == (0x06, 0, 0, 0x80000000)  # SECCOMP_RET_KILL_PROCESS

    def test_x32_calls_are_killed_on_x86_64(self) -> None:
        """On x86_64 a call number with the x32 bit jumps to the kill instruction."""
        program = seccomp.program("x86_64")
        [x32] = [(i, op) for i, op in enumerate(program) if op[0] == 0x35]
        index, (_, jump, _, value) = x32
        assert value == 0x40000000
        assert program[index + 1 + jump] == (0x06, 0, 0, 0x80000000)

    @pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
    def test_every_jump_lands_inside_the_program(self, machine: str) -> None:
        """The labels resolve to instructions of the program, the last one a return."""
        program = seccomp.program(machine)
        for index, (code, true, false, _) in enumerate(program):
            if code != 0x06:  # a return has no jumps
                assert index + 1 + max(true, false) < len(program)
        assert program[-1][0] == 0x06
