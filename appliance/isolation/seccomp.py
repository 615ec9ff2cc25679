"""The system calls a tool process may not make: a seccomp filter, written as classic BPF.

A tool may connect out; it may never take a connection or a datagram from outside, nor build
the means to. The filter (`program`) answers, for the host's own system call ABI only:

    listen, accept, accept4, bind     EPERM: no socket of a tool is ever bound by it, so
                                      nothing listens, and nothing receives what it did not ask
                                      for (Landlock's TCP bind rule misses the wildcard address
                                      that listen() picks for an unbound socket)
    socket(AF_INET/AF_INET6, ...)     EPERM unless SOCK_STREAM over TCP: no UDP (an unbound
                                      datagram socket is bound to the wildcard address by its
                                      first sendto), no SCTP, MPTCP, raw or ICMP sockets
    socket(other families)            EPERM, but AF_UNIX and AF_NETLINK (pathname sockets are
                                      under the mount namespace's masks; netlink reads routes)
    io_uring_setup/enter/register     EPERM: io_uring runs accept, bind and listen itself,
                                      where no filter sees them
    unshare, setns, clone(CLONE_NEW*) EPERM: a namespace of its own would give the tool every
                                      capability again inside it; clone3 is ENOSYS (its flags
                                      are behind a pointer), so libc falls back to clone
    another ABI (i386 `int 0x80`,     the process is killed: the numbers of another ABI name
    x32 on x86_64)                    other calls, and no rule above would apply to them

Name resolution keeps working over TCP: the mount namespace gives the tool a resolv.conf with
`options use-vc` (glibc's resolver then never opens a UDP socket), and Landlock lets TCP
through to port 53. Filters are inherited by every child and cannot be removed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
from collections.abc import Sequence

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_NR = 0
_ARCH = 4
_ARGS = 16

_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JMP_JEQ_K = 0x15
_JMP_JGE_K = 0x35
_JMP_JSET_K = 0x45
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_PR_SET_SECCOMP = 22
_PR_GET_SECCOMP = 21
_SECCOMP_MODE_FILTER = 2

_X32_SYSCALL_BIT = 0x40000000
_SOCK_TYPE_MASK = 0xF
_IPPROTO_TCP = 6
# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, _NEWNET
_CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_CLONE_NEW_ANY |= 0x40000000


class _Abi:
    """One architecture's AUDIT_ARCH value and system call numbers."""

    def __init__(self, arch: int, x32: bool, **numbers: int) -> None:
        self.arch = arch
        self.x32 = x32
        self.numbers = numbers


_ABIS = {
    "x86_64": _Abi(
        0xC000003E,
        True,
        socket=41,
        accept=43,
        bind=49,
        listen=50,
        clone=56,
        unshare=272,
        accept4=288,
        setns=308,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        clone3=435,
    ),
    "aarch64": _Abi(
        0xC00000B7,
        False,
        unshare=97,
        socket=198,
        bind=200,
        listen=201,
        accept=202,
        clone=220,
        accept4=242,
        setns=268,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        clone3=435,
    ),
}
_REFUSED = (
    "listen",
    "accept",
    "accept4",
    "bind",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "unshare",
    "setns",
)


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


Instruction = tuple[int, int, int, int]


def supported() -> bool:
    """Whether this module knows the host's ABI and the kernel has seccomp filters."""
    if platform.machine() not in _ABIS:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)) >= 0


Item = tuple[int, str | int, str | int, int] | str  # an instruction, its jumps by label; a label


def _load(offset: int) -> Item:
    return (_LD_W_ABS, 0, 0, offset)


def _jump(test: int, value: int, target: str) -> Item:
    return (test, target, 0, value)


def _answer(action: int) -> Item:
    return (_RET_K, 0, 0, action)


def program(machine: str) -> list[Instruction]:
    """The filter for `machine` (a `platform.machine()` name), as (code, jt, jf, k) tuples."""
    abi = _ABIS[machine]
    nr = abi.numbers
    refuse = _RET_ERRNO | errno.EPERM
    code: list[Item] = [_load(_ARCH), _jump(_JMP_JEQ_K, abi.arch, "native")]
    code += [_answer(_RET_KILL_PROCESS), "native", _load(_NR)]
    if abi.x32:
        code.append(_jump(_JMP_JGE_K, _X32_SYSCALL_BIT, "kill"))
    code += [_jump(_JMP_JEQ_K, nr[name], "refuse") for name in _REFUSED]
    code += [
        _jump(_JMP_JEQ_K, nr["clone3"], "enosys"),
        _jump(_JMP_JEQ_K, nr["clone"], "clone"),
        _jump(_JMP_JEQ_K, nr["socket"], "socket"),
        _answer(_RET_ALLOW),
        "clone",
        _load(_ARGS),  # flags, low 32 bits
        _jump(_JMP_JSET_K, _CLONE_NEW_ANY, "refuse"),
        _answer(_RET_ALLOW),
        "socket",
        _load(_ARGS),  # domain
        _jump(_JMP_JEQ_K, socket.AF_UNIX, "allow"),
        _jump(_JMP_JEQ_K, socket.AF_NETLINK, "allow"),
        _jump(_JMP_JEQ_K, socket.AF_INET, "inet"),
        _jump(_JMP_JEQ_K, socket.AF_INET6, "inet"),
        _answer(refuse),
        "inet",
        _load(_ARGS + 8),  # type, without SOCK_NONBLOCK and SOCK_CLOEXEC
        (_ALU_AND_K, 0, 0, _SOCK_TYPE_MASK),
        _jump(_JMP_JEQ_K, socket.SOCK_STREAM, "stream"),
        _answer(refuse),
        "stream",
        _load(_ARGS + 16),  # protocol
        _jump(_JMP_JEQ_K, 0, "allow"),
        _jump(_JMP_JEQ_K, _IPPROTO_TCP, "allow"),
        _answer(refuse),
        "allow",
        _answer(_RET_ALLOW),
        "refuse",
        _answer(refuse),
        "enosys",
        _answer(_RET_ERRNO | errno.ENOSYS),
        "kill",
        _answer(_RET_KILL_PROCESS),
    ]
    return _resolve(code)


def _resolve(code: Sequence[Item]) -> list[Instruction]:
    """Labels replaced by the relative jumps BPF takes (from the next instruction)."""
    positions: dict[str, int] = {}
    count = 0
    for item in code:
        if isinstance(item, str):
            positions[item] = count
        else:
            count += 1
    resolved: list[Instruction] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, true, false, k = item
        here = len(resolved) + 1
        offsets = [positions[t] - here if isinstance(t, str) else t for t in (true, false)]
        if not all(0 <= offset <= 255 for offset in offsets):
            raise ValueError(f"a seccomp jump out of range: {item}")
        resolved.append((op, offsets[0], offsets[1], k))
    return resolved


def install() -> None:
    """Load the filter into this process (and all it will start); needs no_new_privs.

    Raises OSError when the kernel refuses it, KeyError on an ABI this module does not know.
    """
    instructions = program(platform.machine())
    array = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), array)
    libc = ctypes.CDLL(None, use_errno=True)
    no = ctypes.c_ulong(0)
    mode = ctypes.c_ulong(_SECCOMP_MODE_FILTER)
    if libc.prctl(_PR_SET_SECCOMP, mode, ctypes.byref(fprog), no, no) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"prctl(PR_SET_SECCOMP): {os.strerror(number)}")
