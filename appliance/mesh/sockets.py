"""Every listening socket of the box, with its holder and whether it is IPv6-only.

A listening socket is a TCP socket in LISTEN or a bound, unconnected UDP socket (it takes
datagrams from anyone). "The box" is the network namespace this process runs in: sockets of
other namespaces (containers, `ip netns`) have tables of their own and are out of scope, as are
raw, packet and SCTP sockets.

Linux:
- The tables: `/proc/self/net/{tcp,tcp6,udp,udp6}`, never `/proc/net/*` or psutil, which
  `ProcSubset=pid` in the hardened unit hides. Columns after `split()`: `[1]` local
  `HEXIP:HEXPORT`, `[3]` state (`0A` = TCP LISTEN; `07` = an unconnected, bound UDP socket),
  `[7]` uid, `[9]` inode. Addresses are 32-bit words printed in host byte order, so
  `0100007F` is 127.0.0.1 on a little-endian machine.
- The holder: the process whose `/proc/<pid>/fd` links to `socket:[INODE]`, this process
  first (so a socket it shares with a child counts as its own), where we may look (root, or the
  same user; `ProtectProc=invisible` hides others). Elsewhere only the uid column remains.
- IPV6_V6ONLY (a `::` socket that has it does not take IPv4): the tables do not show it. The
  kernel exposes it through sock_diag netlink, as the attribute INET_DIAG_SKV6ONLY it adds to
  every AF_INET6 socket of a dump (`ss -e` prints it as `v6only:1`): one dump of the listening
  TCP sockets and one of the unconnected UDP sockets, matched to the tables by inode. Where
  netlink is refused (`RestrictAddressFamilies=` without AF_NETLINK), our own sockets answer
  `getsockopt(IPV6_V6ONLY)` on a duplicate of our descriptor; another process's is unknown.

macOS: `lsof -nP -i -F pcfPtnT` (TCP files in state LISTEN, UDP files without a peer), whose
files carry the holder's pid, command and descriptor but no inode. Not `-iTCP -sTCP:LISTEN
-iUDP`: measured with lsof 4.95, the TCP state filter drops every UDP file. lsof prints an
IPv6 socket bound to `::ffff:127.0.0.1` as `127.0.0.1`. IPV6_V6ONLY: `getsockopt` on our own
descriptors; unknown for other processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, get_args

from appliance import errors

Protocol = Literal["tcp", "tcp6", "udp", "udp6"]
Family = Literal["tcp", "udp"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ByteOrder = Literal["little", "big"]

PROC = Path("/proc")
LSOF_SECONDS = 30.0

_LISTENING_STATE = {"tcp": "0A", "udp": "07"}  # 07 is TCP_CLOSE: a bound, unconnected UDP socket
_STATE_NAME = {"tcp": "LISTEN", "udp": "UNCONN"}  # the names `ss` prints
_COMM_CHARS = 15  # the kernel keeps this many characters of a command name (TASK_COMM_LEN - 1)


@dataclasses.dataclass(frozen=True)
class Socket:
    """One listening socket: a TCP socket in LISTEN, or a bound, unconnected UDP socket."""

    protocol: Protocol
    address: Address
    port: int
    inode: int | None  # None where the source does not tell (lsof)
    state: str  # LISTEN (tcp) or UNCONN (udp)
    v6only: bool | None = None  # IPV6_V6ONLY of an IPv6 socket; None: IPv4, or not readable
    uid: int | None = None
    pid: int | None = None
    command: str | None = None
    fd: int | None = None  # the holder's descriptor, where known (lsof, our own sockets)

    @property
    def family(self) -> Family:
        return "tcp" if self.protocol.startswith("tcp") else "udp"

    @property
    def plain_address(self) -> Address:
        """The address, an IPv4-mapped one (`::ffff:10.0.0.1`) as the IPv4 address it is."""
        return plain(self.address)

    @property
    def wildcard(self) -> bool:
        """Bound to every address: `0.0.0.0`, `::` or `::ffff:0.0.0.0`."""
        return self.plain_address.is_unspecified

    @property
    def stack(self) -> str:
        """For a `::` socket, which IP versions it takes; empty for any other address."""
        if self.address != ipaddress.IPv6Address("::"):
            return ""
        if self.v6only is None:
            return "IPV6_V6ONLY unknown"
        return "IPv6 only" if self.v6only else "IPv4 too"

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
        """`pid 42 (python3)`, else `uid 106 (no visible holder)`, else `unknown process`."""
        if self.pid is not None:
            return f"pid {self.pid} ({self.command or '?'})"
        if self.uid is not None:
            return f"uid {self.uid} (no visible holder)"
        return "unknown process"

    def describe(self) -> str:
        """`tcp6 [::]:8471 (IPv6 only), pid 42 (python3)`."""
        stack = f" ({self.stack})" if self.stack else ""
        return f"{self.protocol} {self.endpoint}{stack}, {self.owner}"


def plain(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped one (`::ffff:127.0.0.1`), else the address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def command_name(name: str) -> str:
    """`name` as the kernel keeps a command name (its first 15 characters)."""
    return name[:_COMM_CHARS]


# ---- /proc ---------------------------------------------------------------------------------


def decode_address(text: str, byteorder: ByteOrder = sys.byteorder) -> Address:
    """An address from `/proc/net/*`: 8 or 32 hex digits, 32-bit words in host byte order."""
    raw = b"".join(
        int(text[start : start + 8], 16).to_bytes(4, byteorder) for start in range(0, len(text), 8)
    )
    return ipaddress.ip_address(raw)


def parse_proc_table(
    text: str, protocol: Protocol, *, byteorder: ByteOrder = sys.byteorder
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
        found.append(
            Socket(
                protocol=protocol,
                address=decode_address(hex_address, byteorder),
                port=int(hex_port, 16),
                inode=int(fields[9]),
                state=_STATE_NAME[family],
                uid=int(fields[7]),
            )
        )
    return found


def _socket_fds(fd_dir: Path) -> dict[int, int]:
    """{inode: descriptor} of the sockets among the links in `fd_dir`; empty where hidden."""
    found: dict[int, int] = {}
    try:
        entries = list(os.scandir(fd_dir))
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target.endswith("]") and entry.name.isdigit():
            found.setdefault(int(target[len("socket:[") : -1]), int(entry.name))
    return found


def _command(process_dir: Path) -> str | None:
    try:
        return (process_dir / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _owners(proc: Path, inodes: set[int]) -> dict[int, tuple[int, str | None]]:
    """(pid, command) of a process holding each inode, this process first, where we may look."""
    owners: dict[int, tuple[int, str | None]] = {}
    wanted = set(inodes)
    try:
        others = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        others = []
    me = os.getpid()
    for pid in [me, *(pid for pid in others if pid != me)]:
        if not wanted:
            break
        where = proc / ("self" if pid == me else str(pid))
        held = set(_socket_fds(where / "fd")) & wanted
        if held:
            owners.update(dict.fromkeys(held, (pid, _command(where))))
            wanted -= held
    return owners


def parent_pid(pid: int, proc: Path = PROC) -> int | None:
    """The parent of `pid` (field 4 of `/proc/<pid>/stat`), or None where we may not look."""
    try:
        text = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command, in parentheses, may hold spaces
    return int(fields[1]) if len(fields) > 1 else None


def descends_from(pid: int, ancestor: int, proc: Path = PROC) -> bool:
    """Whether `ancestor` is `pid` or one of its ancestors, as far as /proc shows."""
    seen: set[int] = set()
    current: int | None = pid
    while current is not None and current > 0 and current not in seen:
        if current == ancestor:
            return True
        seen.add(current)
        current = parent_pid(current, proc)
    return False


# ---- IPV6_V6ONLY ---------------------------------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x001 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_DIAG_REQUEST = struct.Struct("=BBBBI48x")  # family, protocol, extensions, pad, states, sockid
_DIAG_MESSAGE_BYTES = 72  # struct inet_diag_msg
_DIAG_UID_INODE = struct.Struct("=II")  # at offset 64 of inet_diag_msg
_ATTRIBUTE = struct.Struct("=HH")  # struct rtattr: length, type
INET_DIAG_SKV6ONLY = 11
_LISTEN_STATES = {"tcp": 1 << 10, "udp": 1 << 7}  # TCP_LISTEN; TCP_CLOSE (unconnected UDP)
_IP_PROTOCOL = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def diag_request(family: int, protocol: int, states: int, sequence: int = 1) -> bytes:
    """A sock_diag dump request (SOCK_DIAG_BY_FAMILY) for the sockets in `states`."""
    body = _DIAG_REQUEST.pack(family, protocol, 0, 0, states)
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, sequence, 0
    )
    return header + body


def parse_diag_messages(data: bytes, found: dict[int, bool]) -> bool:
    """Add {inode: v6only} of the inet_diag messages in `data` to `found`; True at the end."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size:
            return True  # malformed: stop rather than loop
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
            raise OSError(-code, os.strerror(-code))
        body = data[offset + _NLMSG_HEADER.size : offset + length]
        if len(body) >= _DIAG_MESSAGE_BYTES:
            _, inode = _DIAG_UID_INODE.unpack_from(body, 64)
            position = _DIAG_MESSAGE_BYTES
            while position + _ATTRIBUTE.size <= len(body):
                size, attribute = _ATTRIBUTE.unpack_from(body, position)
                if size < _ATTRIBUTE.size:
                    break
                if attribute == INET_DIAG_SKV6ONLY and size > _ATTRIBUTE.size:
                    found[inode] = body[position + _ATTRIBUTE.size] != 0
                position += (size + 3) & ~3
        offset += (length + 3) & ~3
    return False


def _diag_v6only(family: Family) -> dict[int, bool]:
    """{inode: v6only} of this namespace's listening AF_INET6 sockets of one protocol."""
    found: dict[int, bool] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(5.0)
        request = diag_request(socket.AF_INET6, _IP_PROTOCOL[family], _LISTEN_STATES[family])
        diag.sendto(request, (0, 0))
        while not parse_diag_messages(diag.recv(1 << 16), found):
            pass
    return found


def kernel_v6only() -> dict[int, bool]:
    """{inode: IPV6_V6ONLY} from sock_diag netlink; empty where netlink is refused."""
    found: dict[int, bool] = {}
    if not sys.platform.startswith("linux"):
        return found
    for family in get_args(Family):
        with contextlib.suppress(OSError):
            found.update(_diag_v6only(family))
    return found


def own_v6only(fd: int) -> bool | None:
    """IPV6_V6ONLY of one of this process's IPv6 sockets, read on a duplicate of `fd`."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None  # closed meanwhile
    try:
        duplicate = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)  # not a socket any more: the descriptor was reused
        return None
    with duplicate:
        if duplicate.family != socket.AF_INET6:
            return None
        try:
            return duplicate.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
        except OSError:
            return None


def _with_v6only(item: Socket, kernel: dict[int, bool], fd: int | None) -> Socket:
    if not item.protocol.endswith("6"):
        return item
    v6only = kernel.get(item.inode) if item.inode is not None else None
    if v6only is None and fd is not None:
        v6only = own_v6only(fd)
    return dataclasses.replace(item, v6only=v6only)


def _proc_sockets(
    proc: Path, *, own_only: bool, attribute: Callable[[Socket], bool] | None
) -> list[Socket]:
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
        sockets.extend(parse_proc_table(text, protocol))
    mine = _socket_fds(proc / "self" / "fd")
    kernel = kernel_v6only() if proc == PROC else {}
    sockets = [
        _with_v6only(item, kernel, mine.get(item.inode) if item.inode is not None else None)
        for item in sockets
    ]
    if own_only:
        command = _command(proc / "self")
        return [
            dataclasses.replace(item, pid=os.getpid(), command=command, fd=mine[item.inode])
            for item in sockets
            if item.inode in mine
        ]
    wanted = {
        item.inode
        for item in sockets
        if item.inode is not None and (attribute is None or attribute(item))
    }
    owners = _owners(proc, wanted)
    return [_attributed(item, owners, mine) for item in sockets]


def _attributed(
    item: Socket, owners: dict[int, tuple[int, str | None]], mine: dict[int, int]
) -> Socket:
    if item.inode not in owners:
        return item
    pid, command = owners[item.inode]
    fd = mine.get(item.inode) if pid == os.getpid() else None
    return dataclasses.replace(item, pid=pid, command=command, fd=fd)


# ---- lsof (macOS) --------------------------------------------------------------------------


def _lsof_socket(pid: int | None, command: str | None, fields: dict[str, str]) -> Socket | None:
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
        address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    descriptor = fields.get("f", "")
    return Socket(
        protocol=protocol,
        address=address,
        port=int(port),
        inode=None,
        state=_STATE_NAME[kind],
        pid=pid,
        command=command,
        fd=int(descriptor) if descriptor.isdigit() else None,
    )


def parse_lsof(output: str) -> list[Socket]:
    """The listening sockets in `lsof -nP -i -F pcfPtnT` output (one field per line)."""
    found: list[Socket] = []
    pid: int | None = None
    command: str | None = None
    fields: dict[str, str] = {}

    def flush() -> None:
        if fields:
            item = _lsof_socket(pid, command, fields)
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
    return own_lsof_v6only(parse_lsof(result.stdout))


def own_lsof_v6only(sockets: Iterable[Socket]) -> list[Socket]:
    """lsof's sockets, with IPV6_V6ONLY read from our own descriptors (lsof does not show it)."""
    me = os.getpid()
    return [
        _with_v6only(item, {}, item.fd if item.pid == me else None) if item.v6only is None else item
        for item in sockets
    ]


def listening_sockets(
    *,
    proc: Path = PROC,
    own_only: bool = False,
    attribute: Callable[[Socket], bool] | None = None,
) -> list[Socket]:
    """Every listening socket of the box (its network namespace), or only this process's.

    `attribute`: look for the holder of only the sockets it accepts (the scan of every
    process's descriptors is the costly part); None looks for every holder.
    """
    if sys.platform == "darwin":
        found = _lsof_sockets(own_only=own_only)
    else:
        found = _proc_sockets(proc, own_only=own_only, attribute=attribute)
    return sorted(found, key=lambda item: (item.port, item.protocol, str(item.address)))
