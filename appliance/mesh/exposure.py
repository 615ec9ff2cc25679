"""The exposure gate: exactly one port of the box may be reachable from the public internet.

That port is the webhook ingress, declared public in the config. Every other listener binds
loopback or the tailnet address. A listening socket on a wildcard address (`0.0.0.0`, `::`,
`::ffff:0.0.0.0`) whose port is neither declared public nor on the allow-list (tailscaled's
UDP 41641) is a violation; a socket bound to one specific address never is.

Where the sockets come from:
- Linux: `/proc/self/net/{tcp,tcp6,udp,udp6}`, never `/proc/net/*` or psutil, which
  `ProcSubset=pid` in the hardened unit hides. Columns after `split()`: `[1]` local
  `HEXIP:HEXPORT`, `[3]` state (`0A` = TCP LISTEN; `07` = an unconnected, bound UDP socket),
  `[7]` uid, `[9]` inode. Addresses are 32-bit words printed in host byte order, so
  `0100007F` is 127.0.0.1 on a little-endian machine. The owner of an inode is found in
  `/proc/<pid>/fd` (`socket:[INODE]`) where we may look; elsewhere the uid column remains.
- macOS: `lsof -nP -i -F pcfPtnT` (TCP files in state LISTEN, UDP files without a peer). Not
  `-iTCP -sTCP:LISTEN -iUDP`: measured with lsof 4.95, the TCP state filter drops every UDP file.

`::` with `net.ipv6.bindv6only` = 0 takes IPv4 connections too (`dual_stack`). A socket that set
`IPV6_V6ONLY` itself looks the same in `/proc`, so `dual_stack` means "may also be IPv4".
Either way a wildcard is a wildcard: the verdict does not depend on it, only the wording.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal, get_args

from appliance import errors

logger = logging.getLogger(__name__)

Protocol = Literal["tcp", "tcp6", "udp", "udp6"]
Family = Literal["tcp", "udp"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ByteOrder = Literal["little", "big"]

PROC = Path("/proc")
TAILSCALED_PORT: tuple[Family, int] = ("udp", 41641)
TAILNET_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)
LSOF_SECONDS = 30.0
ADVICE = (
    "Bind the console and metrics listeners to the tailnet address (or to 127.0.0.1 behind "
    "`tailscale serve`); if the port really is the webhook ingress, declare it public in the "
    "config."
)

_LISTENING_STATE = {"tcp": "0A", "udp": "07"}  # 07 is TCP_CLOSE: a bound, unconnected UDP socket
_STATE_NAME = {"tcp": "LISTEN", "udp": "UNCONN"}  # the names `ss` prints


@dataclasses.dataclass(frozen=True)
class Socket:
    """One listening socket: a TCP socket in LISTEN, or a bound, unconnected UDP socket."""

    protocol: Protocol
    address: Address
    port: int
    inode: int | None  # None where the source does not tell (lsof)
    state: str  # LISTEN (tcp) or UNCONN (udp)
    wildcard: bool
    dual_stack: bool = False  # `::` that also takes IPv4 (bindv6only = 0)
    uid: int | None = None
    pid: int | None = None
    command: str | None = None

    @property
    def family(self) -> Family:
        return "tcp" if self.protocol.startswith("tcp") else "udp"

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:80`, `[::1]:80` or `[::ffff:127.0.0.1]:80`."""
        if isinstance(self.address, ipaddress.IPv6Address):
            mapped = self.address.ipv4_mapped  # Python 3.11 prints these as ::ffff:7f00:1
            host = f"::ffff:{mapped}" if mapped is not None else str(self.address)
            return f"[{host}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def owner(self) -> str:
        """`pid 42 (python3)`, else `uid 106`, else `unknown process`."""
        if self.pid is not None:
            return f"pid {self.pid} ({self.command or '?'})"
        if self.uid is not None:
            return f"uid {self.uid}"
        return "unknown process"

    def describe(self) -> str:
        """`tcp6 [::]:8080 (IPv4 too), pid 42 (python3)`."""
        also = " (IPv4 too)" if self.dual_stack else ""
        return f"{self.protocol} {self.endpoint}{also}, {self.owner}"


def _check_ports(name: str, ports: Collection[tuple[Family, int]]) -> None:
    for entry in ports:
        family, port = entry
        if family not in get_args(Family) or not 1 <= port <= 65535:
            raise errors.ConfigError(
                f"exposure policy: {name} entry {entry!r} is not ('tcp'|'udp', 1..65535)"
            )


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which wildcard listeners may exist: the declared public port(s) and an allow-list."""

    public: frozenset[tuple[Family, int]] = frozenset()
    allowed: frozenset[tuple[Family, int]] = frozenset({TAILSCALED_PORT})

    def __post_init__(self) -> None:
        _check_ports("public", self.public)
        _check_ports("allowed", self.allowed)


class Verdict(enum.Enum):
    """Why a socket passes the gate, or `EXPOSED` when it does not."""

    LOOPBACK = "loopback"
    TAILNET = "tailnet"
    SPECIFIC = "one address"
    PUBLIC = "declared public"
    ALLOWED = "allow-listed"
    EXPOSED = "EXPOSED"


class ExposureError(errors.ConfigError):
    """A port is reachable from outside the tailnet."""

    def __init__(self, sockets: Sequence[Socket]) -> None:
        self.sockets = tuple(sockets)
        listed = "; ".join(item.describe() for item in self.sockets)
        super().__init__(
            f"listening on a wildcard address, reachable from outside the tailnet: {listed}. "
            f"{ADVICE}"
        )


def _plain(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped one (`::ffff:127.0.0.1`), else the address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def verdict(item: Socket, policy: Policy) -> Verdict:
    """Whether `item` passes the gate under `policy`, and why."""
    address = _plain(item.address)
    if not item.wildcard:
        if address.is_loopback:
            return Verdict.LOOPBACK
        if any(address in network for network in TAILNET_NETWORKS):
            return Verdict.TAILNET
        return Verdict.SPECIFIC
    if (item.family, item.port) in policy.public:
        return Verdict.PUBLIC
    if (item.family, item.port) in policy.allowed:
        return Verdict.ALLOWED
    return Verdict.EXPOSED


def violations(sockets: Iterable[Socket], policy: Policy) -> list[Socket]:
    """The sockets that fail the gate."""
    return [item for item in sockets if verdict(item, policy) is Verdict.EXPOSED]


def decode_address(text: str, byteorder: ByteOrder = sys.byteorder) -> Address:
    """An address from `/proc/net/*`: 8 or 32 hex digits, 32-bit words in host byte order."""
    raw = b"".join(
        int(text[start : start + 8], 16).to_bytes(4, byteorder) for start in range(0, len(text), 8)
    )
    return ipaddress.ip_address(raw)


def _is_wildcard(address: Address) -> bool:
    return _plain(address).is_unspecified


def parse_proc_table(
    text: str, protocol: Protocol, *, ipv6_only: bool, byteorder: ByteOrder = sys.byteorder
) -> list[Socket]:
    """The listening sockets in the text of `/proc/self/net/<protocol>`."""
    family: Family = "tcp" if protocol.startswith("tcp") else "udp"
    found = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].endswith(":"):
            continue  # the header
        if fields[3] != _LISTENING_STATE[family]:
            continue
        hex_address, hex_port = fields[1].split(":")
        address = decode_address(hex_address, byteorder)
        found.append(
            Socket(
                protocol=protocol,
                address=address,
                port=int(hex_port, 16),
                inode=int(fields[9]),
                state=_STATE_NAME[family],
                wildcard=_is_wildcard(address),
                dual_stack=address == ipaddress.IPv6Address("::") and not ipv6_only,
                uid=int(fields[7]),
            )
        )
    return found


def ipv6_only_default(proc: Path = PROC) -> bool:
    """Whether a new IPv6 socket takes IPv6 only (`net.ipv6.bindv6only`).

    `ProcSubset=pid` hides `/proc/sys`; then a fresh socket's `IPV6_V6ONLY`, which the kernel
    sets from the same sysctl, answers. False (dual-stack) when neither can be read.
    """
    with contextlib.suppress(OSError, ValueError):
        return int((proc / "sys/net/ipv6/bindv6only").read_text(encoding="ascii")) != 0
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe,
    ):
        return probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
    return False


def _socket_inodes(fd_dir: Path) -> set[int]:
    """The inodes of the sockets among the links in `fd_dir`; empty where we may not look."""
    inodes: set[int] = set()
    try:
        entries = list(os.scandir(fd_dir))
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _command(process_dir: Path) -> str | None:
    try:
        return (process_dir / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _owners(proc: Path, inodes: set[int]) -> dict[int, tuple[int, str | None]]:
    """(pid, command) of the first process holding each inode, where we may look."""
    owners: dict[int, tuple[int, str | None]] = {}
    wanted = set(inodes)
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return owners
    for pid in pids:
        if not wanted:
            break
        held = _socket_inodes(proc / str(pid) / "fd") & wanted
        if held:
            command = _command(proc / str(pid))
            owners.update(dict.fromkeys(held, (pid, command)))
            wanted -= held
    return owners


def _proc_sockets(proc: Path, *, own_only: bool) -> list[Socket]:
    ipv6_only = ipv6_only_default(proc)
    sockets: list[Socket] = []
    for protocol in get_args(Protocol):
        path = proc / "self" / "net" / protocol
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError as exc:
            if protocol.endswith("6"):
                continue  # a kernel without IPv6
            raise errors.DependencyError(
                f"cannot list listening sockets: {path} is missing"
            ) from exc
        except OSError as exc:
            raise errors.DependencyError(f"cannot read {path}: {exc}") from exc
        sockets.extend(parse_proc_table(text, protocol, ipv6_only=ipv6_only))
    if own_only:
        mine = _socket_inodes(proc / "self" / "fd")
        command = _command(proc / "self")
        return [
            dataclasses.replace(item, pid=os.getpid(), command=command)
            for item in sockets
            if item.inode in mine
        ]
    owners = _owners(proc, {item.inode for item in sockets if item.inode is not None})
    return [
        dataclasses.replace(item, pid=owners[item.inode][0], command=owners[item.inode][1])
        if item.inode in owners
        else item
        for item in sockets
    ]


def _lsof_socket(
    pid: int | None, command: str | None, fields: dict[str, str], *, ipv6_only: bool
) -> Socket | None:
    """One file of `lsof -F` output as a listening socket, or None when it is not one."""
    name, kind = fields.get("n", ""), fields.get("P", "").lower()
    if "->" in name or kind not in ("tcp", "udp"):
        return None  # connected, or not an inet socket
    if kind == "tcp" and fields.get("TST=") != "LISTEN":
        return None
    host, _, port = name.rpartition(":")
    six = fields.get("t") == "IPv6"
    protocol: Protocol = "tcp" if kind == "tcp" else "udp"
    if six:
        protocol = "tcp6" if kind == "tcp" else "udp6"
    if host == "*":
        address: Address = ipaddress.IPv6Address("::") if six else ipaddress.IPv4Address(0)
    else:
        address = ipaddress.ip_address(host.strip("[]"))
    return Socket(
        protocol=protocol,
        address=address,
        port=int(port),
        inode=None,
        state=_STATE_NAME[kind],
        wildcard=_is_wildcard(address),
        dual_stack=address == ipaddress.IPv6Address("::") and not ipv6_only,
        pid=pid,
        command=command,
    )


def parse_lsof(output: str, *, ipv6_only: bool = False) -> list[Socket]:
    """The listening sockets in `lsof -nP -i -F pcfPtnT` output (one field per line)."""
    found: list[Socket] = []
    pid: int | None = None
    command: str | None = None
    fields: dict[str, str] = {}

    def flush() -> None:
        if fields:
            item = _lsof_socket(pid, command, fields, ipv6_only=ipv6_only)
            if item is not None:
                found.append(item)
            fields.clear()

    for line in output.splitlines():
        if not line:
            continue
        key, value = line[0], line[1:]
        if key == "p":
            flush()
            pid, command = int(value), None
        elif key == "c":
            command = value
        elif key == "f":
            flush()
            fields["f"] = value
        elif key == "T":
            name, _, state = value.partition("=")
            fields[f"T{name}="] = state
        else:
            fields[key] = value
    flush()
    return found


def _lsof_sockets(*, own_only: bool) -> list[Socket]:
    lsof = shutil.which("lsof") or "/usr/sbin/lsof"
    scope = ["-a", "-p", str(os.getpid())] if own_only else []
    try:
        result = subprocess.run(
            [lsof, "-nP", *scope, "-i", "-F", "pcfPtnT"],
            capture_output=True,
            text=True,
            timeout=LSOF_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise errors.DependencyError(f"cannot list listening sockets with {lsof}: {exc}") from exc
    # lsof exits 1, silently, when nothing matches.
    if result.returncode not in (0, 1) or (result.returncode == 1 and result.stderr.strip()):
        raise errors.DependencyError(
            f"{lsof} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return parse_lsof(result.stdout)


def listening_sockets(*, proc: Path = PROC, own_only: bool = False) -> list[Socket]:
    """Every listening socket of the box (its network namespace), or only this process's."""
    if sys.platform == "darwin":
        found = _lsof_sockets(own_only=own_only)
    else:
        found = _proc_sockets(proc, own_only=own_only)
    return sorted(found, key=lambda item: (item.port, item.protocol, str(item.address)))


def check(policy: Policy, *, own_only: bool) -> list[Socket]:
    """The listening sockets that fail the gate."""
    return violations(listening_sockets(own_only=own_only), policy)


def gate_own_sockets(policy: Policy) -> None:
    """Raise ExposureError if this process listens where it must not (after binding)."""
    sockets = listening_sockets(own_only=True)
    bad = violations(sockets, policy)
    if bad:
        raise ExposureError(bad)
    logger.info(
        "exposure gate passed for %d listening sockets",
        len(sockets),
        extra={"event": "exposure.passed", "sockets": [item.describe() for item in sockets]},
    )


def report(sockets: Sequence[Socket], policy: Policy) -> str:
    """Human lines for `appliance exposure-check`: one per socket, then the conclusion."""
    rows = []
    for item in sockets:
        why = verdict(item, policy)
        mark = "FAIL" if why is Verdict.EXPOSED else "ok"
        endpoint = item.endpoint + (" (IPv4 too)" if item.dual_stack else "")
        rows.append((mark, item.protocol, endpoint, why.value, item.owner))
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]
    bad = violations(sockets, policy)
    if bad:
        lines.append(
            f"FAIL: {len(bad)} of {len(sockets)} listening sockets are reachable from outside "
            f"the tailnet. {ADVICE}"
        )
    else:
        lines.append(
            f"ok: {len(sockets)} listening sockets; none faces outside the tailnet but the "
            "declared public and allow-listed ports."
        )
    return "\n".join(lines)


def run_check(policy: Policy, *, box_wide: bool) -> tuple[bool, str]:
    """(passed, report) for every socket of the box, or only for this process's."""
    sockets = listening_sockets(own_only=not box_wide)
    return not violations(sockets, policy), report(sockets, policy)
