"""The exposure gate: nothing on the box faces outside the tailnet but the webhook ingress.

The invariant, for every listening socket of the box (`mesh.sockets` lists them):
- it is on a loopback address (127.0.0.0/8, ::1), or
- on a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48), or
- it is the declared public ingress socket itself: the very socket the daemon's webhook
  listener holds (its inode on Linux, its descriptor on macOS, held by the daemon's pid), at
  its address, port and protocol. Another socket on that port is not it: an IPv6-only
  `[::]:8471` beside the IPv4 ingress, UDP on the port, another process's SO_REUSEPORT twin; or
- it is on the allow-list (`mesh.allowed`): protocol, port and the name of the process that
  holds it. tailscaled's UDP 41641 belongs to tailscaled, not to whoever binds the port; or
- (a VPC worker only) it is on the private address its health listener was given.
Anything else is exposed: a wildcard (`0.0.0.0`, `::`), a LAN or public address, a link-local
or unique-local address. An IPv4-mapped address (`::ffff:a.b.c.d`) counts as its IPv4 address.

Limits: 100.64.0.0/10 is also the carrier-grade NAT range, so an uplink address from it would
pass; an allow-list entry trusts the process name, which a process chooses (an unprivileged
process still cannot take a port tailscaled holds); where the holder is hidden from us
(`ProtectProc=invisible`), an allow-list entry accepts a socket of uid 0 on its port, since
only root could then have taken it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any, get_args

from appliance import errors
from appliance.mesh import sockets
from appliance.mesh.sockets import Address, Family, Protocol, Socket

logger = logging.getLogger(__name__)

TAILNET_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)
ADVICE = (
    "Bind the console and metrics listeners to the tailnet address (or to 127.0.0.1 behind "
    "`tailscale serve`); only the daemon's own webhook ingress socket may face outside, and "
    "what `mesh.allowed` names (protocol/port@process)."
)


@dataclasses.dataclass(frozen=True)
class PublicSocket:
    """A socket the daemon holds and declared public: one webhook ingress listener."""

    pid: int
    protocol: Protocol
    address: Address
    port: int
    inode: int | None = None  # Linux
    fd: int | None = None  # macOS: lsof names files by descriptor, not inode

    def matches(self, item: Socket) -> bool:
        """Whether `item` is this very socket (not merely one on the same port)."""
        if (item.protocol, item.address, item.port) != (self.protocol, self.address, self.port):
            return False
        if item.pid is not None and item.pid != self.pid:
            return False
        if self.inode is not None and item.inode is not None:
            return item.inode == self.inode  # the holder may be hidden; the inode is unique
        return self.fd is not None and item.pid == self.pid and item.fd == self.fd

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "protocol": self.protocol,
            "address": str(self.address),
            "port": self.port,
            "inode": self.inode,
            "fd": self.fd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PublicSocket:
        """The socket of `as_json`; ValueError (or KeyError, TypeError) when malformed."""
        protocol = data["protocol"]
        if protocol not in get_args(Protocol):
            raise ValueError(f"unknown protocol {protocol!r}")
        return cls(
            pid=int(data["pid"]),
            protocol=protocol,
            address=ipaddress.ip_address(data["address"]),
            port=int(data["port"]),
            inode=None if data.get("inode") is None else int(data["inode"]),
            fd=None if data.get("fd") is None else int(data["fd"]),
        )


@dataclasses.dataclass(frozen=True)
class Allowance:
    """A listener the operator allows: protocol, port and the process that holds it."""

    family: Family
    port: int
    process: str

    def __post_init__(self) -> None:
        if self.family not in get_args(Family) or not 1 <= self.port <= 65535 or not self.process:
            raise errors.ConfigError(
                f"exposure policy: {self} is not protocol/port@process (udp/41641@tailscaled)"
            )

    def __str__(self) -> str:
        return f"{self.family}/{self.port}@{self.process}"

    @classmethod
    def parse(cls, entry: str) -> Allowance:
        """`udp/41641@tailscaled`; ConfigError naming the entry when it is not that."""
        where, _, process = entry.partition("@")
        family, _, port = where.partition("/")
        if family not in get_args(Family) or not port.isdigit() or not process:
            raise errors.ConfigError(
                f"mesh.allowed: {entry!r} is not protocol/port@process (udp/41641@tailscaled)"
            )
        return cls("tcp" if family == "tcp" else "udp", int(port), process)

    def matches(self, item: Socket) -> bool:
        if (item.family, item.port) != (self.family, self.port):
            return False
        if item.command is not None:
            return item.command == sockets.command_name(self.process)
        return item.pid is None and item.uid == 0  # the holder is hidden from us: see above


@dataclasses.dataclass(frozen=True)
class Policy:
    """The sockets that may face outside: the daemon's public ones, an allow-list, and a VPC
    worker's private health address."""

    public: frozenset[PublicSocket] = frozenset()
    allowed: frozenset[Allowance] = frozenset({Allowance("udp", 41641, "tailscaled")})
    private: frozenset[Address] = frozenset()  # a VPC worker's health listener address


class Verdict(enum.Enum):
    """Why a socket passes the gate, or `EXPOSED` when it does not."""

    LOOPBACK = "loopback"
    TAILNET = "tailnet"
    PUBLIC = "declared public"
    ALLOWED = "allow-listed"
    PRIVATE = "declared private"
    EXPOSED = "EXPOSED"


class ExposureError(errors.ConfigError):
    """A port is reachable from outside the tailnet."""

    def __init__(self, offenders: Sequence[Socket]) -> None:
        self.sockets = tuple(offenders)
        listed = "; ".join(item.describe() for item in self.sockets)
        super().__init__(f"reachable from outside the tailnet: {listed}. {ADVICE}")


def is_local(item: Socket) -> bool:
    """On loopback or on the tailnet: passes whoever holds it."""
    address = item.plain_address
    return address.is_loopback or any(address in network for network in TAILNET_NETWORKS)


def verdict(item: Socket, policy: Policy) -> Verdict:
    """Whether `item` passes the gate under `policy`, and why."""
    address = item.plain_address
    if address.is_loopback:
        return Verdict.LOOPBACK
    if any(address in network for network in TAILNET_NETWORKS):
        return Verdict.TAILNET
    if any(public.matches(item) for public in policy.public):
        return Verdict.PUBLIC
    if any(allowance.matches(item) for allowance in policy.allowed):
        return Verdict.ALLOWED
    if address in policy.private:
        return Verdict.PRIVATE
    return Verdict.EXPOSED


def violations(found: Iterable[Socket], policy: Policy) -> list[Socket]:
    """The sockets that fail the gate."""
    return [item for item in found if verdict(item, policy) is Verdict.EXPOSED]


def socket_json(item: Socket, policy: Policy) -> dict[str, Any]:
    """One socket for `--json` and outbox events: where, which IP versions, who holds it."""
    why = verdict(item, policy)
    return {
        "ok": why is not Verdict.EXPOSED,
        "verdict": why.value,
        "protocol": item.protocol,
        "address": item.endpoint.rpartition(":")[0].strip("[]"),
        "port": item.port,
        "endpoint": item.endpoint,
        "ipv6_only": item.v6only if item.protocol.endswith("6") else None,
        "pid": item.pid,
        "process": item.command,
        "uid": item.uid,
        "inode": item.inode,
    }


@dataclasses.dataclass(frozen=True)
class Result:
    """The gate over a set of listening sockets: each one's verdict, and the conclusion."""

    sockets: tuple[Socket, ...]
    policy: Policy
    notes: tuple[str, ...] = ()

    @property
    def violations(self) -> list[Socket]:
        return violations(self.sockets, self.policy)

    @property
    def passed(self) -> bool:
        return not self.violations

    def text(self) -> str:
        """One line per socket (verdict, protocol, endpoint, why, holder), then the conclusion."""
        rows = []
        for item in self.sockets:
            why = verdict(item, self.policy)
            mark = "FAIL" if why is Verdict.EXPOSED else "ok"
            endpoint = item.endpoint + (f" ({item.stack})" if item.stack else "")
            rows.append((mark, item.protocol, endpoint, why.value, item.owner))
        widths = [max((len(row[column]) for row in rows), default=0) for column in range(4)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
            + "  "
            + row[4]
            for row in rows
        ]
        lines.extend(f"note: {note}" for note in self.notes)
        bad = self.violations
        if bad:
            lines.append(
                f"FAIL: {len(bad)} of {len(self.sockets)} listening sockets are reachable from "
                f"outside the tailnet. {ADVICE}"
            )
        else:
            lines.append(
                f"ok: {len(self.sockets)} listening sockets; none faces outside the tailnet but "
                "the declared public and allow-listed ones."
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "listening": len(self.sockets),
            "violations": len(self.violations),
            "sockets": [socket_json(item, self.policy) for item in self.sockets],
            "notes": list(self.notes),
        }


def gate_own_sockets(policy: Policy) -> None:
    """Raise ExposureError if this process listens where it must not (after binding)."""
    found = sockets.listening_sockets(own_only=True)
    bad = violations(found, policy)
    if bad:
        raise ExposureError(bad)
    logger.info(
        "exposure gate passed for %d listening sockets",
        len(found),
        extra={"event": "exposure.passed", "sockets": [item.describe() for item in found]},
    )


def run_check(policy: Policy, *, box_wide: bool, notes: Collection[str] = ()) -> Result:
    """The gate over every listening socket of the box, or only over this process's."""
    found = sockets.listening_sockets(own_only=not box_wide)
    return Result(tuple(found), policy, tuple(notes))
