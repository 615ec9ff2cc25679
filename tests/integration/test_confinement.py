"""The tool process's fence, attacked for real: each test runs a fresh interpreter that confines
itself with `confine(Confinement.from_json(...))`, then tries one thing and prints the outcome
as JSON. Where the attack could pass because the target is simply not there, the same attack
runs unconfined first and must succeed (so no test passes vacuously).

Skipped, with what the host lacks, where not every layer can be applied (not Linux, Landlock
ABI < 6, no user namespaces).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.isolation import confinement

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_PORT = 5432
POSTGRES_SOCKET = Path("/var/run/postgresql/.s.PGSQL.5432")
KEY = "the master key"
PROBE_SECONDS = 10.0

# argv: SPEC (empty: unconfined) ATTACK [SETUP]. SETUP runs before confine(), with `confinement`
# in scope; ATTACK after it, and leaves what it found in `result`.
PROBE = """
import json, sys
from appliance.isolation import confinement

spec, attack = sys.argv[1], sys.argv[2]
exec(sys.argv[3] if len(sys.argv) > 3 else "", {"confinement": confinement})
report = {}
if spec:
    applied = confinement.confine(confinement.Confinement.from_json(spec))
    report["applied"] = {"layers": applied.layers, "skipped": applied.skipped}
scope = {}
try:
    exec(attack, scope)
    report["result"] = scope.get("result")
except BaseException as exc:
    report["error"] = type(exc).__name__
    report["errno"] = getattr(exc, "errno", None)
print(json.dumps(report))
"""

HOST = confinement.capabilities()
pytestmark = pytest.mark.skipif(
    not all(HOST[layer] for layer in confinement.LAYERS),
    reason=f"this host cannot apply every confinement layer: {HOST}",
)


def spec_for(tmp_path: Path, **overrides: Any) -> confinement.Confinement:
    """A strict spec with `tmp_path/scratch` as its scratch dir and generous limits."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    spec = confinement.Confinement(
        memory_bytes=512 * 1024 * 1024,
        cpu_seconds=10,
        open_files=64,
        scratch_dir=str(scratch),
        hidden_paths=(),
    )
    return dataclasses.replace(spec, **overrides)


def run(
    attack: str, spec: confinement.Confinement | None, setup: str = ""
) -> subprocess.CompletedProcess[str]:
    """The probe, confined by `spec` (or not at all), as a finished process."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, spec.to_json() if spec else "", attack, setup],
        capture_output=True,
        text=True,
        timeout=PROBE_SECONDS,
        cwd=ROOT,
        check=False,
    )


def probe(attack: str, spec: confinement.Confinement | None, setup: str = "") -> dict[str, Any]:
    """The probe's report: `result`, or `error` and `errno`; `applied` when confined."""
    finished = run(attack, spec, setup)
    assert finished.returncode == 0, finished.stderr
    report: dict[str, Any] = json.loads(finished.stdout)
    return report


def denied(report: dict[str, Any], error: str, code: int) -> bool:
    return report.get("error") == error and report.get("errno") == code


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 (connections wait in its backlog); its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """A directory holding a 0600 key file, as the vault keeps its master key."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    key = directory / "master.key"
    key.write_text(KEY)
    key.chmod(0o600)
    return directory


@pytest.fixture
def sibling() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping process started by the test: a neighbour of the tool process."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


class TestNetwork:
    def test_connecting_to_postgres_is_denied(self, tmp_path: Path) -> None:
        """TCP to 127.0.0.1:5432, which answers unconfined, is refused with EACCES."""
        attack = f"import socket; socket.create_connection(('127.0.0.1', {POSTGRES_PORT}), 2)"
        if "error" in probe(attack, None):
            pytest.skip(f"no Postgres listens on 127.0.0.1:{POSTGRES_PORT}")
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EACCES)

    def test_connecting_to_an_egress_port_is_allowed(self, tmp_path: Path, listener: int) -> None:
        """TCP to a port listed in egress_ports connects: the rule is not "deny all"."""
        attack = f"import socket; socket.create_connection(('127.0.0.1', {listener}), 2)"
        report = probe(
            attack + "; result = 'connected'", spec_for(tmp_path, egress_ports=(listener,))
        )
        assert report["result"] == "connected"

    def test_binding_a_tcp_port_is_denied(self, tmp_path: Path) -> None:
        """No TCP bind at all, not even to an ephemeral port on loopback."""
        attack = "import socket; socket.socket().bind(('127.0.0.1', 0))"
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EACCES)


class TestHiddenPaths:
    def test_postgres_socket_directory_is_hidden(self, tmp_path: Path) -> None:
        """The Postgres unix socket, reachable unconfined, is gone once its directory is hidden."""
        if not POSTGRES_SOCKET.exists():
            pytest.skip(f"no Postgres unix socket at {POSTGRES_SOCKET}")
        attack = f"import socket; socket.socket(socket.AF_UNIX).connect({str(POSTGRES_SOCKET)!r})"
        assert probe(attack + "; result = 'connected'", None)["result"] == "connected"
        spec = spec_for(tmp_path, hidden_paths=(str(POSTGRES_SOCKET.parent),))
        assert denied(probe(attack, spec), "FileNotFoundError", errno.ENOENT)

    def test_key_in_a_hidden_directory_cannot_be_read(self, tmp_path: Path, key_dir: Path) -> None:
        """The 0600 key file, readable unconfined, does not exist inside."""
        attack = f"result = open({str(key_dir / 'master.key')!r}).read()"
        assert probe(attack, None)["result"] == KEY
        spec = spec_for(tmp_path, hidden_paths=(str(key_dir),))
        assert denied(probe(attack, spec), "FileNotFoundError", errno.ENOENT)

    def test_hidden_file_reads_empty(self, tmp_path: Path, key_dir: Path) -> None:
        """A hidden file (not its directory) is /dev/null inside: it reads as empty."""
        key = str(key_dir / "master.key")
        report = probe(f"result = open({key!r}).read()", spec_for(tmp_path, hidden_paths=(key,)))
        assert report["result"] == ""

    def test_masks_cannot_be_unmounted(self, tmp_path: Path, key_dir: Path) -> None:
        """umount of a mask is EPERM (Landlock forbids mount changes); the key stays hidden."""
        attack = (
            "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True)\n"
            f"status = libc.umount2({str(key_dir).encode()!r}, 2)\n"
            "result = [status, ctypes.get_errno()]\n"
            f"result.append(os.path.exists({str(key_dir / 'master.key')!r}))"
        )
        report = probe(attack, spec_for(tmp_path, hidden_paths=(str(key_dir),)))
        assert report["result"] == [-1, errno.EPERM, False]

    def test_missing_hidden_path_is_ignored(self, tmp_path: Path) -> None:
        """A hidden path that does not exist is skipped, not an error."""
        spec = spec_for(tmp_path, hidden_paths=(str(tmp_path / "absent"),))
        assert "mount_namespace" in probe("result = 1", spec)["applied"]["layers"]


class TestWrites:
    def test_writing_outside_scratch_is_denied(self, tmp_path: Path) -> None:
        """A file outside scratch_dir cannot be created, even in a directory the uid owns."""
        outside = tmp_path / "outside.txt"
        attack = f"open({str(outside)!r}, 'w').write('x')"
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EACCES)
        assert not outside.exists()

    def test_writing_inside_scratch_is_allowed(self, tmp_path: Path) -> None:
        """Files and directories can be made, renamed and removed beneath scratch_dir."""
        scratch = tmp_path / "scratch"
        attack = (
            "import os\n"
            f"os.makedirs({str(scratch / 'a' / 'b')!r})\n"
            f"open({str(scratch / 'a' / 'f')!r}, 'w').write('x')\n"
            f"os.rename({str(scratch / 'a' / 'f')!r}, {str(scratch / 'a' / 'b' / 'g')!r})\n"
            f"os.remove({str(scratch / 'a' / 'b' / 'g')!r})\n"
            f"result = open({str(scratch / 'kept')!r}, 'w').write('kept')"
        )
        assert probe(attack, spec_for(tmp_path))["result"] == 4
        assert (scratch / "kept").read_text() == "kept"

    def test_a_command_can_still_write_to_dev_null(self, tmp_path: Path) -> None:
        """subprocess with DEVNULL works: /dev/null stays writable."""
        attack = (
            "import subprocess\n"
            "result = subprocess.run(['sh', '-c', 'echo hi'], stdout=subprocess.DEVNULL).returncode"
        )
        assert probe(attack, spec_for(tmp_path))["result"] == 0


class TestOtherProcesses:
    def test_signalling_the_parent_is_denied(self, tmp_path: Path) -> None:
        """kill(parent, 0), allowed unconfined, is EPERM: the daemon cannot be signalled."""
        attack = "import os; os.kill(os.getppid(), 0); result = 'signalled'"
        assert probe(attack, None)["result"] == "signalled"
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EPERM)

    def test_terminating_a_sibling_is_denied(
        self, tmp_path: Path, sibling: subprocess.Popen[bytes]
    ) -> None:
        """SIGTERM to a neighbouring process is EPERM, and the neighbour lives on."""
        attack = f"import os; os.kill({sibling.pid}, {int(signal.SIGTERM)})"
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EPERM)
        assert sibling.poll() is None

    def test_reading_the_parents_environment_is_denied(self, tmp_path: Path) -> None:
        """/proc/<parent>/environ, readable unconfined, is EACCES: its memory is out of reach."""
        attack = "import os; result = len(open(f'/proc/{os.getppid()}/environ', 'rb').read())"
        assert probe(attack, None)["result"] > 0
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EACCES)


class TestLimits:
    def test_allocating_beyond_memory_bytes_raises_memory_error(self, tmp_path: Path) -> None:
        """A 1 GiB allocation under a 512 MiB address-space limit is a MemoryError."""
        report = probe("bytearray(1024 * 1024 * 1024)", spec_for(tmp_path))
        assert report["error"] == "MemoryError"

    def test_cpu_loop_is_killed_after_cpu_seconds(self, tmp_path: Path) -> None:
        """A busy loop under a 1 s CPU limit dies of SIGXCPU (or SIGKILL) within a few seconds."""
        started = time.monotonic()
        finished = run("while True: pass", spec_for(tmp_path, cpu_seconds=1))
        assert finished.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
        assert time.monotonic() - started < 4

    def test_opening_beyond_open_files_gives_emfile(self, tmp_path: Path) -> None:
        """With open_files=32, the 33rd descriptor is refused with EMFILE."""
        attack = "import os; result = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]"
        report = probe(attack, spec_for(tmp_path, open_files=32))
        assert denied(report, "OSError", errno.EMFILE)


class TestApplied:
    def test_every_layer_is_reported(self, tmp_path: Path) -> None:
        """On this host every layer applies, in order, and none is skipped."""
        applied = probe("result = 1", spec_for(tmp_path))["applied"]
        assert applied == {"layers": list(confinement.LAYERS), "skipped": []}

    def test_not_strict_applies_the_rest_without_landlock(self, tmp_path: Path) -> None:
        """No Landlock, strict=false: the other layers apply, the Landlock ones are skipped."""
        setup = "confinement.landlock_abi = lambda: 0"
        applied = probe("result = 1", spec_for(tmp_path, strict=False), setup)["applied"]
        assert applied["layers"] == ["mount_namespace", "no_new_privs", "rlimits"]
        skipped = [layer for layer, _ in applied["skipped"]]
        assert skipped == ["landlock_fs", "landlock_net", "landlock_scope"]

    def test_strict_without_landlock_exits_with_confinement_error(self, tmp_path: Path) -> None:
        """Landlock made unavailable, strict=true: the probe dies with a ConfinementError."""
        finished = run("result = 1", spec_for(tmp_path), "confinement.landlock_abi = lambda: 0")
        assert finished.returncode == 1
        assert "ConfinementError" in finished.stderr
        assert "isolation.strict = false" in finished.stderr

    def test_probing_capabilities_leaves_the_caller_in_its_namespaces(self) -> None:
        """capabilities() tries the namespaces in a forked child, never in the caller."""
        before = os.readlink("/proc/self/ns/user"), os.readlink("/proc/self/ns/mnt")
        assert confinement.capabilities()["mount_namespace"] is True
        assert (os.readlink("/proc/self/ns/user"), os.readlink("/proc/self/ns/mnt")) == before
