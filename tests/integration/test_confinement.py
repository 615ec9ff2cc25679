"""The tool process's fence, attacked for real: each test runs a fresh interpreter that confines
itself with `confine(Confinement.from_json(...))`, then tries one thing and prints the outcome
as JSON. Where the attack could pass because the target is simply not there, the same attack
runs unconfined first and must succeed (so no test passes vacuously).

Skipped, with what the host lacks, where not every layer can be applied (not Linux, Landlock
ABI < 6, no user namespaces, no seccomp). The name-resolution tests need root (a network
namespace of their own, with a name server on port 53).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.isolation import confinement
from tests.support import isolation, netns

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


def command(
    attack: str, spec: confinement.Confinement | None, setup: str = "", within: Sequence[str] = ()
) -> list[str]:
    """The probe's command line; `within` is put in front (`ip netns exec NAME`)."""
    return [*within, sys.executable, "-c", PROBE, spec.to_json() if spec else "", attack, setup]


def run(
    attack: str, spec: confinement.Confinement | None, setup: str = "", within: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """The probe, confined by `spec` (or not at all), as a finished process."""
    return subprocess.run(
        command(attack, spec, setup, within),
        capture_output=True,
        text=True,
        timeout=PROBE_SECONDS,
        cwd=ROOT,
        env=netns.environment(),
        check=False,
    )


def probe(
    attack: str, spec: confinement.Confinement | None, setup: str = "", within: Sequence[str] = ()
) -> dict[str, Any]:
    """The probe's report: `result`, or `error` and `errno`; `applied` when confined."""
    finished = run(attack, spec, setup, within)
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
        """No TCP bind at all, not even to an ephemeral port on loopback (seccomp refuses it
        before Landlock's bind rule would)."""
        attack = "import socket; socket.socket().bind(('127.0.0.1', 0))"
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EPERM)


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
        """SIGTERM to a neighbouring process finds no such process (it is outside the PID
        namespace), and the neighbour lives on."""
        attack = f"import os; os.kill({sibling.pid}, {int(signal.SIGTERM)})"
        assert denied(probe(attack, spec_for(tmp_path)), "ProcessLookupError", errno.ESRCH)
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
        assert applied["layers"] == [
            "mount_namespace",
            "pid_namespace",
            "private_proc",
            "no_new_privs",
            "seccomp",
            "rlimits",
        ]
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


LISTENERS = {
    "tcp, unbound (listen() picks 0.0.0.0)": "s = socket.socket(); s.listen()",
    "tcp on 0.0.0.0": "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()",
    "tcp on 127.0.0.1": "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()",
    "tcp6, unbound": "s = socket.socket(socket.AF_INET6); s.listen()",
    "tcp6 on ::": "s = socket.socket(socket.AF_INET6); s.bind(('::', 0)); s.listen()",
    "udp on 0.0.0.0": "s = socket.socket(type=socket.SOCK_DGRAM); s.bind(('0.0.0.0', 0))",
    "udp, sendto binds it": (
        "s = socket.socket(type=socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', 9))"
    ),
    "udp, connect then AF_UNSPEC": (
        "import ctypes, struct; s = socket.socket(type=socket.SOCK_DGRAM);"
        " s.connect(('127.0.0.1', 9)); u = struct.pack('=H14x', 0);"
        " libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.connect(s.fileno(), u, 16): raise OSError(ctypes.get_errno(), 'disconnect')"
    ),
    "udp6 on ::": "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', 0))",
    "udplite": "socket.socket(type=socket.SOCK_DGRAM, proto=136)",
    "sctp": "s = socket.socket(proto=132); s.listen()",
    "icmp (ping socket)": "socket.socket(type=socket.SOCK_DGRAM, proto=socket.IPPROTO_ICMP)",
    "abstract unix socket": "s = socket.socket(socket.AF_UNIX); s.bind('\\0tool'); s.listen()",
    "vsock": "socket.socket(40, socket.SOCK_STREAM)",
}
ACCEPT4 = (
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True); s = socket.socket()\n"
    "if libc.accept4(s.fileno(), None, None, 0) < 0: raise OSError(ctypes.get_errno(), 'a')"
)
IO_URING = (
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
    "params = ctypes.create_string_buffer(120)\n"
    "if libc.syscall(425, 8, params) < 0: raise OSError(ctypes.get_errno(), 'io_uring_setup')\n"
    "result = 'ring'"
)
# i386 `int 0x80` from 64-bit code, through a page of machine code: eax = the call, ebx = the
# first argument (rbx is saved and restored), the result in eax.
INT_0X80 = """
import ctypes, mmap
def int80(number, argument):
    code = (b"\\x53\\xb8" + number.to_bytes(4, "little") + b"\\x89\\xfb\\xb9\\x08\\0\\0\\0"
            + b"\\xcd\\x80\\x5b\\xc3")
    page = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(address)(argument)
"""
I386_GETPID = 20
I386_LISTEN = 363
X32_LISTEN = 0x40000000 | 50


class TestListening:
    @pytest.mark.parametrize("how", list(LISTENERS))
    def test_no_socket_can_take_anything_from_outside(self, tmp_path: Path, how: str) -> None:
        """Each way to a listening or receiving socket is refused with EPERM."""
        report = probe("import socket\n" + LISTENERS[how], spec_for(tmp_path))
        assert denied(report, "PermissionError", errno.EPERM), report

    def test_listening_on_an_unbound_socket_works_unconfined(self) -> None:
        """The kernel itself lets listen() bind the wildcard: the refusal above is the fence's."""
        report = probe("import socket\n" + LISTENERS["tcp, unbound (listen() picks 0.0.0.0)"], None)
        assert "error" not in report

    def test_accept_is_refused(self, tmp_path: Path) -> None:
        """accept4 on a socket is EPERM confined (the kernel alone says EINVAL: not listening)."""
        assert denied(probe("import socket\n" + ACCEPT4, None), "OSError", errno.EINVAL)
        report = probe("import socket\n" + ACCEPT4, spec_for(tmp_path))
        assert denied(report, "PermissionError", errno.EPERM)

    def test_io_uring_is_refused(self, tmp_path: Path) -> None:
        """io_uring, which could accept, bind and listen where seccomp cannot see, is EPERM."""
        if "error" in probe(IO_URING, None):
            pytest.skip("io_uring is not available on this host")
        assert denied(probe(IO_URING, spec_for(tmp_path)), "PermissionError", errno.EPERM)

    def test_outgoing_connections_still_work(self, tmp_path: Path, listener: int) -> None:
        """A tool may connect out over TCP to an egress port, after all the refusals."""
        attack = f"import socket; socket.create_connection(('127.0.0.1', {listener}), 2).close()"
        report = probe(attack + "; result = 'out'", spec_for(tmp_path, egress_ports=(listener,)))
        assert report["result"] == "out"


class TestOtherAbis:
    def test_an_x32_call_kills_the_process(self, tmp_path: Path) -> None:
        """listen() by its x32 number (which a filter of x86_64 numbers would miss): SIGSYS."""
        if os.uname().machine != "x86_64":
            pytest.skip("x32 is an x86_64 ABI")
        attack = (
            "import ctypes, socket; libc = ctypes.CDLL(None, use_errno=True)\n"
            f"result = libc.syscall({X32_LISTEN}, socket.socket().fileno(), 8)"
        )
        finished = run(attack, spec_for(tmp_path))
        assert finished.returncode == -signal.SIGSYS, finished

    def test_an_i386_call_kills_the_process(self, tmp_path: Path) -> None:
        """listen() through `int 0x80` (the i386 ABI, other numbers): SIGSYS."""
        if os.uname().machine != "x86_64":
            pytest.skip("int 0x80 is an x86 ABI")
        getpid = INT_0X80 + f"result = int80({I386_GETPID}, 0)"
        unconfined = run(getpid, None)
        if unconfined.returncode != 0:
            pytest.skip("this kernel runs no i386 system calls (no IA32 emulation)")
        listen = (
            INT_0X80 + f"import socket\nresult = int80({I386_LISTEN}, socket.socket().fileno())"
        )
        finished = run(listen, spec_for(tmp_path))
        assert finished.returncode == -signal.SIGSYS, finished


class TestNamespacesOfItsOwn:
    @pytest.mark.parametrize(
        ("how", "number"),
        [("user and network", 0x10000000 | 0x40000000), ("mount", 0x00020000)],
    )
    def test_unshare_is_refused(self, tmp_path: Path, how: str, number: int) -> None:
        """A namespace of its own (where the tool would hold every capability) is EPERM."""
        attack = (
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True)\n"
            f"if libc.unshare({number}): raise OSError(ctypes.get_errno(), 'unshare')"
        )
        assert denied(probe(attack, spec_for(tmp_path)), "PermissionError", errno.EPERM)

    def test_forking_and_running_commands_still_work(self, tmp_path: Path) -> None:
        """fork, threads and subprocess (clone without namespace flags; clone3 is ENOSYS)."""
        attack = (
            "import os, subprocess, threading\n"
            "pid = os.fork()\n"
            "if pid == 0: os._exit(7)\n"
            "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "out = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout\n"
            "result = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out]"
        )
        assert probe(attack, spec_for(tmp_path))["result"] == [7, "hi\n"]


# Leaves three processes named MARKER: a child in a session of its own, and a daemon that
# forks twice, setsid()s and ignores SIGTERM and SIGHUP. None holds the probe's stdout.
LEAVE_BEHIND = """
import os, signal, subprocess, sys
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.Popen([MARKER, "600"], executable="/bin/sleep", start_new_session=True, **quiet)
daemon = '''
import os, signal, sys
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
for number in (signal.SIGTERM, signal.SIGHUP): signal.signal(number, signal.SIG_IGN)
os.execv("/bin/sleep", [sys.argv[1], "600"])
'''
subprocess.run([sys.executable, "-c", daemon, MARKER], check=True, **quiet)
result = "left"
"""


@pytest.fixture
def marker() -> Iterator[str]:
    """A name for the processes a probe leaves behind; any still alive are killed afterwards."""
    name = f"appliance-leftover-{uuid.uuid4().hex[:12]}"
    yield name
    for pid in isolation.marked(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class TestProcessNamespace:
    def test_the_call_sees_only_its_own_processes(self, tmp_path: Path) -> None:
        """/proc lists the namespace's init and the call itself, nothing of the host."""
        attack = "import os; result = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
        assert len(probe(attack, None)["result"]) > 2
        assert probe(attack, spec_for(tmp_path))["result"] == [1, 2]

    def test_the_daemons_command_line_and_environment_are_not_there(self, tmp_path: Path) -> None:
        """/proc/<the test's pid>/cmdline, readable unconfined, does not exist inside."""
        attack = f"result = len(open('/proc/{os.getpid()}/cmdline', 'rb').read())"
        assert probe(attack, None)["result"] > 0
        report = probe(attack, spec_for(tmp_path))
        assert denied(report, "FileNotFoundError", errno.ENOENT)

    def test_nothing_the_call_started_outlives_it(self, tmp_path: Path, marker: str) -> None:
        """A session leader and a double-forked daemon ignoring SIGTERM are gone when the
        call's process exits (unconfined, the same processes live on)."""
        attack = f"MARKER = {marker!r}\n" + LEAVE_BEHIND
        assert probe(attack, None)["result"] == "left"
        assert len(isolation.marked(marker)) == 2
        for pid in isolation.marked(marker):
            os.kill(pid, signal.SIGKILL)
        assert probe(attack, spec_for(tmp_path))["result"] == "left"
        assert isolation.marked(marker) == []

    def test_sigterm_to_the_call_ends_everything_it_started(
        self, tmp_path: Path, marker: str
    ) -> None:
        """A call still running: SIGTERM to its process (what the supervisor sends) ends the
        call and whatever it started, before that process is gone."""
        attack = f"MARKER = {marker!r}\n" + LEAVE_BEHIND + "import time; time.sleep(600)"
        process = subprocess.Popen(
            command(attack, spec_for(tmp_path)),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + PROBE_SECONDS
            while len(isolation.marked(marker)) < 2:
                assert time.monotonic() < deadline, "the probe did not start its processes"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(PROBE_SECONDS) == -signal.SIGKILL
            assert isolation.marked(marker) == []
        finally:
            process.kill()
            process.wait()

    def test_the_exit_status_is_the_calls(self, tmp_path: Path) -> None:
        """The process the supervisor started leaves with the call's own exit code."""
        assert run("import os; os._exit(9)", spec_for(tmp_path)).returncode == 9


class TestKeptPaths:
    def test_a_kept_path_beneath_a_hidden_directory_stays_visible(self, tmp_path: Path) -> None:
        """Hidden: box/. Kept: box/code (readable) and box/scratch (writable, on the host too);
        box/secret is gone."""
        box = tmp_path / "box"
        (box / "code").mkdir(parents=True)
        (box / "code" / "module.py").write_text("VALUE = 1\n")
        (box / "secret").write_text(KEY)
        (box / "scratch").mkdir()
        spec = spec_for(
            tmp_path,
            scratch_dir=str(box / "scratch"),
            hidden_paths=(str(box),),
            visible_paths=(str(box / "code"),),
        )
        attack = (
            "import os\n"
            f"open({str(box / 'scratch' / 'made')!r}, 'w').write('made')\n"
            f"result = [open({str(box / 'code' / 'module.py')!r}).read(),"
            f" sorted(os.listdir({str(box)!r})), os.path.exists({str(box / 'secret')!r})]"
        )
        assert probe(attack, spec)["result"] == ["VALUE = 1\n", ["code", "scratch"], False]
        assert (box / "scratch" / "made").read_text() == "made"

    def test_a_hidden_path_beneath_a_kept_one_is_masked_again(
        self, tmp_path: Path, key_dir: Path
    ) -> None:
        """Kept: tmp_path/keys' parent; hidden: it and, inside it, keys/ again."""
        outer = tmp_path / "outer"
        outer.mkdir()
        inner = outer / "code"
        (inner / "keys").mkdir(parents=True)
        (inner / "keys" / "master.key").write_text(KEY)
        spec = spec_for(
            tmp_path,
            hidden_paths=(str(outer), str(inner / "keys")),
            visible_paths=(str(inner),),
        )
        attack = f"import os; result = os.path.exists({str(inner / 'keys' / 'master.key')!r})"
        assert probe(attack, spec)["result"] is False


class TestResolverFile:
    def test_a_resolv_conf_that_leads_into_a_hidden_directory_still_reads(
        self, tmp_path: Path
    ) -> None:
        """/etc/resolv.conf as systemd-resolved makes it, a link into /run (hidden): inside,
        the link leads to the host's text plus `options use-vc`; nothing else of /run shows."""
        run_dir = tmp_path / "run"
        (run_dir / "resolve").mkdir(parents=True)
        (run_dir / "resolve" / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
        (run_dir / "tailscale.sock").write_text("")
        link = tmp_path / "resolv.conf"
        link.symlink_to(run_dir / "resolve" / "stub-resolv.conf")
        setup = (
            f"from appliance.isolation import namespaces; namespaces.RESOLV_CONF = {str(link)!r}"
        )
        listing = f"sorted(os.listdir({str(run_dir)!r}))"
        attack = f"import os; result = [open({str(link)!r}).read(), {listing}]"
        spec = spec_for(tmp_path, hidden_paths=(str(run_dir),))
        text, listed = probe(attack, spec, setup)["result"]
        assert text == "nameserver 127.0.0.53\noptions use-vc\n"
        assert listed == ["resolve"]


@contextlib.contextmanager
def name_server(created: netns.Namespace) -> Iterator[None]:
    """Inside `created`: /etc/resolv.conf names 127.0.0.1 (`ip netns exec` mounts
    /etc/netns/NAME/resolv.conf over it), where a TCP-only server answers A with 10.1.2.3."""
    etc = Path("/etc/netns") / created.name
    etc.mkdir(parents=True)
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        server = subprocess.Popen(
            created.command(sys.executable, "-m", "tests.support.dns", "127.0.0.1", "10.1.2.3"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=netns.environment(),
        )
        assert server.stdout is not None
        assert server.stdin is not None
        try:
            assert json.loads(server.stdout.readline()) == {"ready": True}
            yield
        finally:
            server.stdin.close()
            server.wait(PROBE_SECONDS)
            server.stdout.close()
    finally:
        for child in etc.iterdir():
            child.unlink()
        etc.rmdir()


@pytest.fixture
def resolving_namespace() -> Iterator[netns.Namespace]:
    """A network namespace with a name server of its own (`name_server`)."""
    try:
        with netns.namespace() as created, name_server(created):
            yield created
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(f"no network namespace here: {exc}")


class TestNameResolution:
    RESOLVE = (
        "import socket\n"
        "result = [socket.getaddrinfo('tool.example.test', 443, proto=socket.IPPROTO_TCP)"
        "[0][4][0], open('/etc/resolv.conf').read()]"
    )

    def test_names_resolve_over_tcp_while_udp_is_refused(
        self, tmp_path: Path, resolving_namespace: netns.Namespace
    ) -> None:
        """getaddrinfo works inside (the resolver is told `options use-vc`, and TCP to 53 is
        let through), though no UDP socket can be made."""
        within = resolving_namespace.command()
        address, resolv = probe(self.RESOLVE, spec_for(tmp_path), within=within)["result"]
        assert address == "10.1.2.3"
        assert resolv.startswith("nameserver 127.0.0.1\n")
        assert resolv.rstrip().endswith("options use-vc")
        udp = "import socket; socket.socket(type=socket.SOCK_DGRAM)"
        assert denied(probe(udp, spec_for(tmp_path), within=within), "PermissionError", errno.EPERM)

    def test_the_name_server_answers_only_over_tcp(
        self, resolving_namespace: netns.Namespace
    ) -> None:
        """Unconfined, without use-vc, the same lookup fails: the test's server has no UDP."""
        within = resolving_namespace.command()
        report = probe(self.RESOLVE, None, within=within)
        assert report.get("error") == "gaierror"


def as_nobody() -> tuple[list[str], list[str]]:
    """The command prefix that runs as `nobody` and a Python that user can run and import
    this package with (root's own interpreter often lives in a private home); else skip."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as another user needs root and util-linux's setpriv")
    nobody = pwd.getpwnam("nobody")
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    check = "import sys; assert sys.version_info >= (3, 11); import appliance.isolation.confinement"
    for python in (sys.executable, "/usr/bin/python3"):
        tried = subprocess.run(
            [*prefix, python, "-c", check],
            capture_output=True,
            timeout=PROBE_SECONDS,
            cwd="/",
            env=netns.environment(),
            check=False,
        )
        if tried.returncode == 0:
            return prefix, [python]
    pytest.skip("no Python 3.11 that `nobody` may run, with this package readable to it")


class TestUnprivileged:
    def test_every_layer_applies_for_an_unprivileged_user(self) -> None:
        """As `nobody` (the daemon runs as a system user): every layer applies, /proc shows
        the call's two processes, a hidden directory is empty."""
        prefix, python = as_nobody()
        nobody = pwd.getpwnam("nobody")
        base = Path(tempfile.mkdtemp(prefix="appliance-unprivileged-"))
        try:
            base.chmod(0o755)
            (base / "scratch").mkdir()
            os.chown(base / "scratch", nobody.pw_uid, nobody.pw_gid)
            (base / "hidden").mkdir()
            (base / "hidden" / "key").write_text(KEY)
            (base / "hidden" / "key").chmod(0o644)
            spec = dataclasses.replace(
                spec_for(base),
                scratch_dir=str(base / "scratch"),
                hidden_paths=(str(base / "hidden"),),
            )
            attack = (
                "import os; result = [sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),"
                f" os.listdir({str(base / 'hidden')!r}), os.getuid()]"
            )
            finished = subprocess.run(
                [*prefix, *python, "-c", PROBE, spec.to_json(), attack],
                capture_output=True,
                text=True,
                timeout=PROBE_SECONDS,
                cwd="/",
                env=netns.environment(),
                check=False,
            )
        finally:
            shutil.rmtree(base)
        assert finished.returncode == 0, finished.stderr
        report = json.loads(finished.stdout)
        assert report["applied"] == {"layers": list(confinement.LAYERS), "skipped": []}
        assert report["result"] == [[1, 2], [], nobody.pw_uid]


# What systemd's ProtectKernelTunables= does: part of /proc mounted over (read-only).
COVERED_PROC = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'


def covered_proc(script: str = COVERED_PROC) -> list[str]:
    """A command prefix: in a mount namespace of its own, after `script` (by default, with
    /proc/sys mounted over)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting over /proc needs root and util-linux's unshare")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


# What systemd's ProtectProc=invisible with ProcSubset=pid does: a /proc instance of its own.
HIDDEN_PIDS_PROC = 'mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec "$@"'


class TestCoveredProc:
    def test_a_proc_mounted_as_protect_proc_does_is_no_obstacle(self) -> None:
        """/proc remounted hidepid=invisible,subset=pid: every layer still applies."""
        within = covered_proc(HIDDEN_PIDS_PROC)
        attack = "from appliance.isolation import confinement; result = confinement.capabilities()"
        found = probe(attack, None, within=within)["result"]
        assert [layer for layer in confinement.LAYERS if not found[layer]] == []

    def test_doctor_finds_every_layer_where_proc_is_covered(self) -> None:
        """capabilities() tries it: where the kernel refuses a /proc of its own (as under
        ProtectKernelTunables=), the empty /proc that replaces it counts: every layer is there."""
        attack = "from appliance.isolation import confinement; result = confinement.capabilities()"
        found = probe(attack, None, within=covered_proc())["result"]
        assert [layer for layer in confinement.LAYERS if not found[layer]] == []

    @pytest.mark.parametrize("strict", [True, False])
    def test_a_call_sees_an_empty_proc_where_proc_is_covered(
        self, tmp_path: Path, strict: bool
    ) -> None:
        """The call runs in its PID namespace (killed whole) and its /proc shows no process at
        all, neither the host's nor its own; nothing is skipped."""
        attack = "import os; result = os.listdir('/proc')"
        report = probe(attack, spec_for(tmp_path, strict=strict), within=covered_proc())
        assert report["result"] == []
        assert {"pid_namespace", "private_proc"} <= set(report["applied"]["layers"])
        assert report["applied"]["skipped"] == []
