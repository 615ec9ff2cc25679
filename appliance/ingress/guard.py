"""What strangers may hold on the public port: connections, unverified body bytes, log lines,
and the open-files limit the connection cap is sized against. Pure bookkeeping, no I/O but
the process's own resource limit.

- `Connections` caps the connections open at once, in total and per source address (an IPv6
  address counts by its /64, which one host usually holds whole). A connection over a cap is
  answered 503 and closed at once, so it costs a descriptor for a moment only.
- `BodyBudget` caps the bytes of request bodies being received across all connections: a body
  is counted from its first byte (its whole Content-Length up front, when it declares one)
  until its request is answered. A body that does not fit is refused with 503 and Retry-After,
  before it is read when its length is declared.
- `Throttle` keeps a client's mistakes from flooding the log: at most one line per kind of
  mistake per period; the next line says how many were left out.
- `raise_open_files_limit` lifts the soft RLIMIT_NOFILE to the hard one at start, and
  `connection_cap` fits the configured cap under it, leaving `RESERVED_DESCRIPTORS` (plus the
  Postgres pool and the listener's accept burst) for everything else the daemon opens: the
  console, Postgres, tool processes, watched folders, log files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

RESERVED_DESCRIPTORS = 256
"""Descriptors kept free for the rest of the daemon whatever happens on the public port."""
ACCEPT_BURST = 128
"""The listen backlog: connections accepted in one go before those over the cap are closed."""
MINIMUM_CONNECTIONS = 8
"""Fewer connections than this left by the open-files limit is a configuration error."""
IPV6_PREFIX = 64


def address_key(peer: object) -> str:
    """The source a connection counts against: its IPv4 address, or its IPv6 /64."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class Connections:
    """Open connections, in total and per source (`address_key`), under their caps."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = min(per_address, total)
        self._open: dict[str, int] = {}
        self.count = 0

    def admit(self, source: str) -> bool:
        """Count a new connection from `source`; False (not counted) when a cap is reached."""
        held = self._open.get(source, 0)
        if self.count >= self.total or held >= self.per_address:
            return False
        self._open[source] = held + 1
        self.count += 1
        return True

    def release(self, source: str) -> None:
        """A connection `admit` counted has closed."""
        held = self._open.get(source, 0)
        if held <= 1:
            self._open.pop(source, None)
        else:
            self._open[source] = held - 1
        self.count = max(0, self.count - 1)

    def held_by(self, source: str) -> int:
        return self._open.get(source, 0)


class BodyBudget:
    """Bytes of request bodies in flight across every connection, at most `total`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, size: int) -> bool:
        """Count `size` more bytes; False (nothing counted) when they do not fit."""
        if self.used + size > self.total:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


class Trimmer:
    """Calls `trim_memory` once the body budget has stayed empty for `delay` seconds after
    bodies were held (one pending call at a time)."""

    def __init__(self, budget: BodyBudget, delay: float = 1.0) -> None:
        self._budget = budget
        self._delay = delay
        self._pending = False

    def emptied(self, loop: asyncio.AbstractEventLoop) -> None:
        """The budget has just been given back to empty."""
        if self._pending:
            return
        self._pending = True
        loop.call_later(self._delay, self._trim)

    def _trim(self) -> None:
        self._pending = False
        if self._budget.used == 0:
            trim_memory()


class Throttle:
    """At most one log line per kind per `every` seconds."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None: leave this line out; else log it, with the number left out since the last."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._left_out.pop(kind, 0)


def trim_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).

    Bodies arrive in chunks of 64-256 KiB, below glibc's mmap threshold, so once freed they
    stay in the heap, fragmented, and the process's RSS never comes down after a burst."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim(0)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or as far as the kernel allows);
    the (soft, hard) limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _kernel_ceiling() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a hard limit above the kernel's own ceiling
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, _kernel_ceiling()), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _kernel_ceiling() -> int:
    """Linux's per-process maximum (fs.nr_open); elsewhere a conservative 65,536."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 65_536


def open_descriptors() -> int:
    """How many descriptors this process holds now."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return 0


def fitted_connection_cap(configured: int, *, pool_max: int) -> tuple[int, int]:
    """(the cap on public connections, the soft open-files limit): the configured cap,
    lowered to what fits beside the descriptors held now, the Postgres pool, the accept burst
    and `RESERVED_DESCRIPTORS`."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return configured, limit
    reserved = RESERVED_DESCRIPTORS + pool_max + ACCEPT_BURST
    cap = connection_cap(configured, limit=limit, in_use=open_descriptors(), reserved=reserved)
    return cap, limit


def connection_cap(configured: int, *, limit: int, in_use: int, reserved: int) -> int:
    """The most public connections that fit under the open-files `limit` when `in_use`
    descriptors are held already and `reserved` stay free for the rest of the daemon."""
    return max(0, min(configured, limit - in_use - reserved))
