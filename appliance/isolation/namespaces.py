"""The namespaces a tool process enters before it fences itself in (`confinement.confine`).

`enter_mount_namespace(hidden, kept, scratch)`: a user and mount namespace of its own (uid and
gid mapped to themselves), `/` made private; then, walking the paths from the top down:
- an empty tmpfs over each hidden directory, `/dev/null` bound over each hidden file (it reads
  as empty); hidden paths that do not exist are ignored;
- each kept path that lies beneath a hidden directory (the call's scratch directory, the code
  the process imports) put back: a copy of its mount, taken before any mask, moved there; a
  hidden path beneath a kept one is masked again after it;
- `/etc/resolv.conf` (wherever its link leads) reading as the host's plus `options use-vc`, so
  the resolver asks over TCP (the seccomp filter refuses UDP sockets).
Then the masks are made read-only.

`enter_pid_namespace()`: the caller stays outside as a waiter; its child is the namespace's
init, and the init's child, the first process inside, is the one that returns and runs the
call. The init reaps orphans and leaves when that process ends; the kernel then kills whatever
else the call left in the namespace (a daemon that setsid()s, a process that ignores SIGTERM)
and reaps it before the init is gone. The waiter leaves with the first process's status (its
exit code, or death by the same signal), so the supervisor reads it as before. On SIGTERM the
waiter kills the init, which ends everything the call started, then leaves. The waiter dies
with its parent (the daemon) and the init with the waiter (PR_SET_PDEATHSIG).

`mount_proc()`: a /proc of the new PID namespace over the host's, so the call sees its own
processes only. The kernel refuses it where part of the host's /proc is covered by another
mount (systemd's ProtectKernelTunables= and ProtectKernelLogs= do that, as the shipped unit
does); there an empty, read-only tmpfs covers /proc instead, and the call sees no process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

RESOLV_CONF = "/etc/resolv.conf"
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1 << 0
MS_NOSUID = 1 << 1
MS_NODEV = 1 << 2
MS_NOEXEC = 1 << 3
MS_REMOUNT = 1 << 5
MS_BIND = 1 << 12
MS_REC = 1 << 14
MS_PRIVATE = 1 << 18
_SEALED = MS_NOSUID | MS_NODEV | MS_NOEXEC
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
# Linux >= 5.2, the same numbers on every architecture.
_OPEN_TREE = 428
_MOVE_MOUNT = 429
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_STATUS_BYTES = 4
_MAX_DESCRIPTORS = 1 << 20


def check(result: int, what: str) -> int:
    """`result`, or OSError with errno's text when it is negative."""
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    source_, target_, fstype_, data_ = (
        None if s is None else s.encode() for s in (source, target, fstype, data)
    )
    check(libc.mount(source_, target_, fstype_, ctypes.c_ulong(flags), data_), f"mount {target}")


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (kill -9 included)."""
    if sys.platform.startswith("linux"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _beneath(path: str, parent: str) -> bool:
    """Whether `path` lies strictly beneath `parent`."""
    return path != parent and os.path.commonpath([path, parent]) == parent


def _existing(paths: Iterable[str]) -> set[str]:
    return {os.path.realpath(p) for p in paths if os.path.exists(p)}


def enter_user_namespace() -> None:
    """A user and mount namespace of its own, the ids mapped to themselves, `/` private."""
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def enter_mount_namespace(hidden: Sequence[str], kept: Sequence[str], scratch: str) -> None:
    """Enter a user and mount namespace that hides `hidden` but keeps `kept` (module doc)."""
    resolver = _resolver()
    enter_user_namespace()
    masked = _existing(hidden)
    restored = {
        path
        for path in _existing(kept)
        if path not in masked and any(_beneath(path, m) for m in masked if os.path.isdir(m))
    }
    trees = {path: (_clone(path), os.path.isdir(path)) for path in restored}
    if resolver is not None:
        target, text = resolver
        trees[target] = (_staged(os.path.realpath(scratch), text), False)
    masks: list[str] = []
    try:
        for path in sorted(masked | trees.keys(), key=lambda p: (p.count("/"), p)):
            if path in trees:
                _attach(*trees[path], path)
            elif os.path.isdir(path):
                mount("tmpfs", path, "tmpfs", _SEALED, "mode=0555,size=4k")
                masks.append(path)
            elif os.path.exists(path):  # not when a mask above it took it away
                mount(os.devnull, path, None, MS_BIND)
    finally:
        for fd, _ in trees.values():
            os.close(fd)
    for path in masks:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _SEALED)


def _resolver() -> tuple[str, str] | None:
    """Where /etc/resolv.conf leads and what it should say inside, or None without one."""
    target = os.path.realpath(RESOLV_CONF)
    try:
        with open(target, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    return target, text.rstrip("\n") + "\noptions use-vc\n"


def _clone(path: str) -> int:
    """A detached copy of the mount tree at `path` (open_tree), as a file descriptor."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE
    fd = libc.syscall(
        ctypes.c_long(_OPEN_TREE), ctypes.c_int(_AT_FDCWD), path.encode(), ctypes.c_uint(flags)
    )
    return check(int(fd), f"open_tree {path}")


def _attach(tree: int, is_dir: bool, path: str) -> None:
    """Move the detached `tree` to `path`, making the mount point inside a mask if needed."""
    if not os.path.lexists(path):
        os.makedirs(path if is_dir else os.path.dirname(path), exist_ok=True)
        if not is_dir:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
    done = libc.syscall(
        ctypes.c_long(_MOVE_MOUNT),
        ctypes.c_int(tree),
        b"",
        ctypes.c_int(_AT_FDCWD),
        path.encode(),
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
    )
    check(int(done), f"move_mount {path}")


def _staged(directory: str, text: str) -> int:
    """A detached mount of one read-only file holding `text`: written in a tmpfs stacked on
    `directory` for the moment (then taken away again), so no path shows where it came from."""
    mount("tmpfs", directory, "tmpfs", _SEALED, "mode=0700,size=64k")
    try:
        path = os.path.join(directory, "staged")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        return _clone(path)
    finally:
        check(libc.umount2(directory.encode(), _MNT_DETACH), f"umount {directory}")


def mount_proc() -> None:
    """A /proc showing this PID namespace only, over the host's; where the kernel refuses one
    (module doc), an empty read-only /proc: the call then sees no process at all."""
    try:
        mount("proc", "/proc", "proc", _SEALED)
    except PermissionError:
        mount("tmpfs", "/proc", "tmpfs", _SEALED | MS_RDONLY, "mode=0555,size=4k")


def enter_pid_namespace() -> None:
    """Return as the first process of a new PID namespace, under an init (module doc)."""
    check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    status_read, status_write = os.pipe()
    alive_read, alive_write = os.pipe()  # EOF once the waiter is gone
    init = os.fork()
    if init:
        os.close(status_write)
        os.close(alive_read)
        _wait_outside(init, status_read, alive_write)
    os.close(status_read)
    os.close(alive_write)
    try:
        die_with_parent()
        if select.select([alive_read], [], [], 0)[0]:  # the waiter died before PDEATHSIG was set
            os._exit(1)
        first = os.fork()
    except BaseException as exc:  # noqa: BLE001 - the init must never return into the caller
        print(f"appliance.isolation: the PID namespace's init failed: {exc}", file=sys.stderr)
        os._exit(71)
    if first:
        _reap_inside(first, status_write, alive_read)
    os.close(status_write)
    os.close(alive_read)


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor but stdin, stdout, stderr and `keep` (the channel included)."""
    top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if top in (resource.RLIM_INFINITY, -1) or top > _MAX_DESCRIPTORS:
        top = _MAX_DESCRIPTORS
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, top)


def _pidfd(pid: int) -> int | None:
    """A descriptor of process `pid` (Linux >= 5.3), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _wait_outside(init: int, status_read: int, alive_write: int) -> NoReturn:
    """The waiter: leave as the call's first process left, once the init is gone."""
    try:
        _close_all_but({status_read, alive_write})
        handle = _pidfd(init)  # this very process, even once its number is free again

        def end(_signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                if handle is None:
                    os.kill(init, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(handle, signal.SIGKILL)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, end)
        _, status = os.waitpid(init, 0)
        report = os.read(status_read, _STATUS_BYTES)
        if len(report) == _STATUS_BYTES:
            status = int.from_bytes(report, "little")
    except BaseException as exc:  # noqa: BLE001 - never return into the caller
        print(f"appliance.isolation: the PID namespace's waiter failed: {exc}", file=sys.stderr)
        os._exit(71)
    _leave_as(status)


def _leave_as(status: int) -> NoReturn:
    """Exit with the code in a wait status, or die of its signal (without a core)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {number})
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 70)


def _reap_inside(first: int, status_write: int, alive_read: int) -> NoReturn:
    """The init: reap every child; report the first process's status when it ends, and go."""
    try:
        _close_all_but({status_write, alive_read})
        while True:
            pid, status = os.wait()
            if pid == first:
                os.write(status_write, status.to_bytes(_STATUS_BYTES, "little"))
                break
    finally:
        os._exit(0)
