"""The fence a tool process puts up around itself before any tool code runs: `confine(spec)`.

The layers go up in this order (mounts must precede Landlock, which forbids any mount change
afterwards; the address-space limit comes last so it does not squeeze the set-up):

1. `mount_namespace`: a user and mount namespace of its own in which each hidden path is masked
   (an empty read-only tmpfs over a directory, `/dev/null` over a file) and the scratch
   directory and the code the process imports are kept even beneath a hidden directory;
   `/etc/resolv.conf` adds `options use-vc` (`namespaces.enter_mount_namespace`).
2. `pid_namespace`: a PID namespace of its own, under an init that the kernel takes down with
   everything in it when the call's first process ends or the supervisor ends the call: no
   process a call starts outlives it, whatever it forks, setsid()s or ignores.
3. `private_proc`: a /proc of that namespace, so the call sees no process but its own (not the
   daemon's command line, not its environment, not another call); where the kernel refuses one
   (a hardened unit's ProtectKernelTunables=), an empty /proc: the call sees no process at all.
4. `no_new_privs`: nothing the process executes gains privileges; Landlock and seccomp need it.
5. One Landlock ruleset. `landlock_fs`: every write-type right of the host's ABI is denied but
   beneath `scratch_dir` (and on `/dev/null`); reading and executing stay allowed, since the
   masks hide the secrets. A Landlocked process can neither change mounts (the masks stay) nor
   ptrace or read the memory of a process outside its domain. `landlock_net` (ABI >= 4): TCP
   connect only to `egress_ports` and to 53 (name resolution over TCP), TCP bind nowhere.
   `landlock_scope` (ABI >= 6): no signal to, and no abstract unix socket of, a process outside
   the domain (the daemon, its other tools, the namespace's init).
6. `seccomp`: no listen, accept or bind, no socket but TCP, unix and netlink, no io_uring, no
   namespaces of its own, no other system call ABI (`seccomp`).
7. `rlimits`: RLIMIT_CORE 0, RLIMIT_NOFILE, RLIMIT_CPU (hard = soft + 1: SIGXCPU, then SIGKILL;
   it counts the process's whole life), RLIMIT_AS. A limit above the current hard one is clamped
   to it (lowering is all a limit can do).

With `strict`, a layer the host cannot apply is a `ConfinementError`: before anything is
applied when the answer is known up front (not Linux, the Landlock ABI, the architecture),
else when the layer fails. Without it, the rest is applied and `Applied.skipped` says what was
not, and why.

Not covered by any layer: pathname unix sockets outside the hidden paths, reading what the
process's uid may read outside them (the names of the hidden paths too: /proc/self/mountinfo
lists the masks), and where a tool sends what it has over its egress ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from appliance import errors
from appliance.isolation import namespaces, seccomp

LAYERS = (
    "mount_namespace",
    "pid_namespace",
    "private_proc",
    "no_new_privs",
    "landlock_fs",
    "landlock_net",
    "landlock_scope",
    "seccomp",
    "rlimits",
)
_PROBED = ("mount_namespace", "pid_namespace", "private_proc", "seccomp")
DNS_PORT = 53  # TCP to it is always allowed: the resolver is told to use TCP (`options use-vc`)
_RELAX = "on a host that cannot do this, set isolation.strict = false to run with what it supports"

_PR_SET_NO_NEW_PRIVS = 38

# include/uapi/linux/landlock.h. The syscalls are create_ruleset, add_rule, restrict_self.
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_FS_WRITE_FILE = 1 << 1
_FS_TRUNCATE = 1 << 14
_FS_IOCTL_DEV = 1 << 15
_FS_WRITE_RIGHTS_SINCE = (  # (ABI, the write-type rights it added)
    # WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, _DIR, _REG, _SOCK, _FIFO, _BLOCK, _SYM
    (1, _FS_WRITE_FILE | sum(1 << bit for bit in range(4, 13))),
    (2, 1 << 13),  # REFER: link or rename into another directory
    (3, _FS_TRUNCATE),
    (5, _FS_IOCTL_DEV),
)
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1
_NET_ABI = 4
_SCOPE_ABI = 6
_WRITABLE_DEVICES = ("/dev/null",)  # subprocess.DEVNULL and `> /dev/null` open it for writing


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


@dataclasses.dataclass(frozen=True)
class Confinement:
    """What a tool process may do; sent by the supervisor as JSON on the child's stdin."""

    memory_bytes: int  # RLIMIT_AS
    cpu_seconds: int  # RLIMIT_CPU, soft; the hard limit is one second more
    open_files: int  # RLIMIT_NOFILE
    scratch_dir: str  # the only writable directory; kept even beneath a hidden one
    hidden_paths: tuple[str, ...]  # masked from the process; missing ones are ignored
    egress_ports: tuple[int, ...] = (443,)  # TCP connect only to these (and 53); no bind at all
    strict: bool = True  # a layer the host cannot apply is an error, not a skip
    visible_paths: tuple[str, ...] = ()  # kept (read-only) even beneath a hidden directory

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a positive integer"
            for name in ("memory_bytes", "cpu_seconds", "open_files")
            if type(getattr(self, name)) is not int or getattr(self, name) <= 0
        ]
        paths = (self.scratch_dir, *self.hidden_paths, *self.visible_paths)
        if not all(isinstance(path, str) and os.path.isabs(path) for path in paths):
            problems.append("scratch_dir, hidden_paths and visible_paths must be absolute paths")
        elif any(os.path.realpath(p) == "/" for p in self.hidden_paths):
            problems.append("hidden_paths cannot hide /")
        if not all(type(port) is int and 0 < port < 65536 for port in self.egress_ports):
            problems.append("egress_ports must be TCP ports (1-65535)")
        if type(self.strict) is not bool:
            problems.append("strict must be true or false")
        if problems:
            raise errors.ConfinementError(f"invalid confinement: {'; '.join(problems)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        """The spec `to_json` wrote; anything else is a `ConfinementError`."""
        try:
            data = json.loads(text)
            fields: dict[str, Any] = {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in data.items()
            }
            return cls(**fields)
        except (ValueError, TypeError, AttributeError) as exc:
            raise errors.ConfinementError(f"invalid confinement JSON: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Applied:
    """What `confine` applied, in order, and what it skipped with the reason (for the audit)."""

    layers: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def confine(spec: Confinement) -> Applied:
    """Fence this process in as `spec` says; called once, first thing, while single-threaded.

    Irreversible. With `spec.strict`, a `ConfinementError` names the layer that cannot be
    applied (raised before anything is applied when the host's answer is known up front).
    On Linux the caller does not come back from this function: it waits outside the call's
    PID namespace and exits with the status of the process that does come back (the first
    process inside, which runs the call).
    """
    abi = landlock_abi()
    unsupported = _unsupported(abi)
    if spec.strict and unsupported:
        raise errors.ConfinementError(_refusal(unsupported))
    if not os.path.isdir(spec.scratch_dir):
        raise errors.ConfinementError(f"scratch_dir {spec.scratch_dir} is not a directory")
    missing = dict(unsupported)
    layers: list[str] = []
    skipped = list(unsupported)

    def attempt(names: tuple[str, ...], action: Callable[[], object]) -> bool:
        try:
            action()
        except OSError as exc:
            if spec.strict:
                raise errors.ConfinementError(_refusal([(n, str(exc)) for n in names])) from exc
            skipped.extend((name, str(exc)) for name in names)
            return False
        layers.extend(names)
        return True

    if _linux():
        _require_one_thread()
        attempt(("mount_namespace",), lambda: _mount_namespace(spec))
        if attempt(("pid_namespace",), namespaces.enter_pid_namespace):
            attempt(("private_proc",), namespaces.mount_proc)
        else:
            skipped.append(("private_proc", "there is no PID namespace to show"))
        attempt(("no_new_privs",), _no_new_privs)
        landlock = tuple(n for n in LAYERS if n.startswith("landlock_") and n not in missing)
        if landlock:
            attempt(landlock, lambda: _landlock(spec, abi))
        if "seccomp" not in missing:
            attempt(("seccomp",), seccomp.install)
    attempt(("rlimits",), lambda: _rlimits(spec))
    return Applied(layers=tuple(layers), skipped=tuple(skipped))


def _mount_namespace(spec: Confinement) -> None:
    kept = (spec.scratch_dir, *spec.visible_paths)
    namespaces.enter_mount_namespace(spec.hidden_paths, kept, spec.scratch_dir)


def capabilities() -> dict[str, bool | int]:
    """What this host supports, per layer, and its Landlock ABI (for `appliance doctor`).

    The namespaces, the /proc mount and the seccomp filter are tried for real, in a forked
    child that exits at once.
    """
    abi = landlock_abi()
    missing = dict(_unsupported(abi))
    found: dict[str, bool | int] = {layer: layer not in missing for layer in LAYERS}
    tried = _probe() if _linux() else {}
    for layer in _PROBED:  # a layer the probe did not report working does not work
        found[layer] = bool(found[layer]) and tried.get(layer, False)
    found["landlock_abi"] = abi
    return found


def landlock_abi() -> int:
    """The host's Landlock ABI version; 0 when it has none (or this module lacks its syscalls)."""
    numbers = _LANDLOCK_SYSCALLS.get(platform.machine())
    if not _linux() or numbers is None:
        return 0
    version = _syscall(numbers[0], 0, 0, _CREATE_RULESET_VERSION)
    return max(version, 0)


def _linux() -> bool:
    return sys.platform == "linux"


def _unsupported(abi: int) -> list[tuple[str, str]]:
    """The layers this host cannot apply, known without trying, with the reason."""
    if not _linux():
        reason = f"not Linux ({sys.platform})"
        return [(layer, reason) for layer in LAYERS if layer != "rlimits"]
    if abi == 0:
        reason = (
            "Landlock is not available (Linux >= 5.13 with landlock in the lsm= boot list, "
            f"on {'/'.join(_LANDLOCK_SYSCALLS)})"
        )
        missing = [(layer, reason) for layer in LAYERS if layer.startswith("landlock_")]
    else:
        missing = []
    if 0 < abi < _NET_ABI:
        missing.append(
            ("landlock_net", f"Landlock ABI {abi} has no network rules (needs {_NET_ABI})")
        )
    if 0 < abi < _SCOPE_ABI:
        missing.append(("landlock_scope", f"Landlock ABI {abi} has no scopes (needs {_SCOPE_ABI})"))
    if not seccomp.supported():
        missing.append(("seccomp", f"no seccomp filter for {platform.machine()} on this kernel"))
    return missing


def _refusal(layers: list[tuple[str, str]]) -> str:
    named = "; ".join(f"{layer}: {reason}" for layer, reason in layers)
    return f"cannot confine the tool process ({named}); {_RELAX}"


def _require_one_thread() -> None:
    """unshare and Landlock act on the calling thread only: any other would stay unfenced."""
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        raise errors.ConfinementError(
            f"confine() must run before the process starts threads (it has {threads})"
        )


def _check(result: int, what: str) -> int:
    return namespaces.check(result, what)


def _syscall(number: int, *args: int) -> int:
    """A raw syscall; every argument passed as a long (pointers as addresses)."""
    result: int = namespaces.libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return result


def _no_new_privs() -> None:
    no = ctypes.c_ulong(0)
    done = namespaces.libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), no, no, no)
    _check(done, "prctl(NO_NEW_PRIVS)")


def _landlock(spec: Confinement, abi: int) -> None:
    create, add_rule, restrict_self = _LANDLOCK_SYSCALLS[platform.machine()]
    handled_fs = sum(rights for since, rights in _FS_WRITE_RIGHTS_SINCE if abi >= since)
    handled_net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= _NET_ABI else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= _SCOPE_ABI else 0
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    ruleset = _check(
        _syscall(create, ctypes.addressof(attr), ctypes.sizeof(attr), 0), "landlock_create_ruleset"
    )
    try:

        def allow_beneath(path: str, rights: int) -> None:
            beneath = _PathBeneathAttr(rights, os.open(path, os.O_PATH | os.O_CLOEXEC))
            try:
                rule = ctypes.addressof(beneath)
                _check(_syscall(add_rule, ruleset, _RULE_PATH_BENEATH, rule, 0), f"rule {path}")
            finally:
                os.close(beneath.parent_fd)

        allow_beneath(spec.scratch_dir, handled_fs)
        for device in filter(os.path.exists, _WRITABLE_DEVICES):
            allow_beneath(device, handled_fs & (_FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV))
        for port in sorted({*spec.egress_ports, DNS_PORT}) if handled_net else ():
            net = _NetPortAttr(_NET_CONNECT_TCP, port)
            rule = ctypes.addressof(net)
            _check(_syscall(add_rule, ruleset, _RULE_NET_PORT, rule, 0), f"rule port {port}")
        _check(_syscall(restrict_self, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _rlimits(spec: Confinement) -> None:
    """Every limit is tried; the failures are raised together."""
    limits = (  # RLIMIT_AS last: the others may allocate
        ("RLIMIT_CORE", resource.RLIMIT_CORE, 0, 0),
        ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, spec.open_files, spec.open_files),
        ("RLIMIT_CPU", resource.RLIMIT_CPU, spec.cpu_seconds, spec.cpu_seconds + 1),
        ("RLIMIT_AS", resource.RLIMIT_AS, spec.memory_bytes, spec.memory_bytes),
    )
    failures = []
    for name, which, soft, hard in limits:
        ceiling = resource.getrlimit(which)[1]
        limit = hard if ceiling == resource.RLIM_INFINITY else min(hard, ceiling)
        try:
            resource.setrlimit(which, (min(soft, limit), limit))
        except (OSError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise OSError("; ".join(failures))


def _probe() -> dict[str, bool]:
    """Which of the layers that need the kernel's consent apply here: tried in a forked child
    (and its child, the first process of a PID namespace), which report through a pipe."""
    scratch = tempfile.mkdtemp(prefix="appliance-probe-")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: try, and leave without returning into the caller's code
        try:
            os.close(read)
            _try_layers(scratch, write)
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as reports:
            found = [json.loads(line) for line in reports]
        os.waitpid(pid, 0)
    finally:
        os.rmdir(scratch)
    return {layer: works for report in found for layer, works in report.items()}


def _try_layers(scratch: str, report: int) -> None:
    def tell(**found: bool) -> None:
        os.write(report, json.dumps(found).encode() + b"\n")

    try:
        namespaces.enter_mount_namespace((tempfile.gettempdir(),), (scratch,), scratch)
        _check(namespaces.libc.unshare(namespaces.CLONE_NEWPID), "unshare")
    except OSError:
        tell(mount_namespace=False, pid_namespace=False, private_proc=False, seccomp=False)
        return
    tell(mount_namespace=True, pid_namespace=True)
    first = os.fork()  # the first process of the PID namespace
    if first == 0:
        try:
            found = {"private_proc": False, "seccomp": False}
            with contextlib.suppress(OSError):
                namespaces.mount_proc()
                found["private_proc"] = True
            with contextlib.suppress(OSError, KeyError):
                _no_new_privs()
                seccomp.install()
                found["seccomp"] = True
            tell(**found)
        finally:
            os._exit(0)
    os.waitpid(first, 0)
