"""A network namespace with a `tailscale0` and a LAN interface, and the probes that run inside.

`namespace()` creates `ap<hex>` (a fresh name each time, so parallel runs never meet), moves one
end of a veth pair into it (this kernel has no dummy interfaces) and renames it `tailscale0`
with a tailnet address (100.100.1.2/24), moves one end of a second pair in as `eth0` with the
box's "LAN" addresses (192.168.50.2/24, fd00:50::2/64, fe80::50:2/64), then brings them and
`lo` up. On the way out it deletes the pairs and the namespace, whatever happened.
`NamespaceUnavailableError` says why no namespace can be made here (not Linux, not root, no
`ip`, no netns or veth support); the tests skip with that reason.

Run inside the namespace (`Namespace.command(...)`):
- `python -m tests.support.netns serve ADDRESS [--port N] [--declare-public] [--twin]` serves
  an aiohttp app on ADDRESS (port 0 unless given), declares its own socket public (the way the
  daemon declares its ingress) if asked, opens an IPv6-only `[::]` socket on the same port in
  the same process with `--twin`, runs the box-wide check and prints one JSON line
  `{"port", "ok", "text", "json", "visible": {"proc_net", "proc_sys"}}`;
- `python -m tests.support.netns hold ADDRESS [--port N] [--udp] [--v6only 0|1] [--name NAME]`
  listens on ADDRESS (`%iface` for a link-local one), renames itself NAME (its
  /proc/<pid>/comm), prints `{"port": ..., "pid": ...}` and holds the socket until its stdin
  closes;
- `python -m tests.support.netns get URL` prints `{"status", "headers", "body"}` of a GET.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from appliance.db import pool as dbpool

ROOT = Path(__file__).resolve().parents[2]
TAILNET_ADDRESS = "100.100.1.2/24"
INTERFACE = "tailscale0"
LAN_INTERFACE = "eth0"
LAN_ADDRESSES = ("192.168.50.2/24", "fd00:50::2/64", "fe80::50:2/64")
LAN_V4 = "192.168.50.2"
LAN_V6 = "fd00:50::2"
LINK_LOCAL = f"fe80::50:2%{LAN_INTERFACE}"
IP_SECONDS = 30.0
PROBE_SECONDS = 60.0
HARDENED_PROC_OPTIONS = "subset=pid,hidepid=invisible"
PR_SET_NAME = 15


class NamespaceUnavailableError(Exception):
    """No network namespace can be made here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    host_end: str  # the veth end left in the host's namespace (tailscale0's pair)
    address: str  # tailscale0's address, without the prefix length
    lan_end: str = ""  # the host's end of eth0's pair

    def command(self, *args: str) -> list[str]:
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def probe(self, *args: str, hardened_proc: bool = False) -> list[str]:
        """This module run as a probe inside the namespace.

        `hardened_proc`: under a /proc mounted `subset=pid,hidepid=invisible`, which is what
        systemd's `ProcSubset=pid` + `ProtectProc=invisible` do (no /proc/net, no /proc/sys).
        """
        program = [sys.executable, "-m", "tests.support.netns", *args]
        if hardened_proc:
            remount = f'mount -t proc -o {HARDENED_PROC_OPTIONS} proc /proc && exec "$@"'
            program = ["unshare", "--mount", "--propagation", "private"]
            program += ["sh", "-c", remount, "sh", sys.executable, "-m", "tests.support.netns"]
            program += args
        return self.command(*program)


def environment() -> dict[str, str]:
    """This process's environment with the repository importable."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; with `check`, a failure raises with ip's own message."""
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_SECONDS, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _require_support() -> None:
    if not sys.platform.startswith("linux"):
        raise NamespaceUnavailableError("network namespaces are a Linux feature")
    if os.geteuid() != 0:
        raise NamespaceUnavailableError("creating a network namespace needs root")
    if shutil.which("ip") is None:
        raise NamespaceUnavailableError("iproute2's `ip` is not installed")


@contextlib.contextmanager
def namespace(address: str = TAILNET_ADDRESS) -> Iterator[Namespace]:
    """A fresh namespace whose `tailscale0` holds `address` and `eth0` the LAN addresses;
    removed on exit."""
    _require_support()
    tag = uuid.uuid4().hex[:8]
    created = Namespace(
        name=f"ap{tag}",
        host_end=f"ap{tag}h",
        address=address.partition("/")[0],
        lan_end=f"ap{tag}l",
    )
    added = ip("netns", "add", created.name, check=False)
    if added.returncode != 0:
        raise NamespaceUnavailableError(f"`ip netns add` failed: {added.stderr.strip()}")
    try:
        _move_in(created, created.host_end, f"ap{tag}n", INTERFACE)
        ip("-n", created.name, "addr", "add", address, "dev", INTERFACE)
        _move_in(created, created.lan_end, f"ap{tag}m", LAN_INTERFACE)
        for lan in LAN_ADDRESSES:
            extra = ["nodad"] if ":" in lan else []  # usable at once, no duplicate detection
            ip("-n", created.name, "addr", "add", lan, "dev", LAN_INTERFACE, *extra)
        for interface in (INTERFACE, LAN_INTERFACE, "lo"):
            ip("-n", created.name, "link", "set", interface, "up")
        yield created
    finally:
        for end in (created.host_end, created.lan_end):
            ip("link", "del", end, check=False)  # takes the peer with it
        ip("netns", "del", created.name, check=False)


def _move_in(created: Namespace, host_end: str, peer: str, interface: str) -> None:
    """A veth pair: `host_end` stays (up), `peer` goes into the namespace as `interface`."""
    pair = ip("link", "add", host_end, "type", "veth", "peer", "name", peer, check=False)
    if pair.returncode != 0:
        raise NamespaceUnavailableError(f"cannot create a veth pair: {pair.stderr.strip()}")
    ip("link", "set", peer, "netns", created.name)
    ip("-n", created.name, "link", "set", peer, "name", interface)
    ip("link", "set", host_end, "up")


def exists(created: Namespace) -> tuple[bool, bool]:
    """Whether the namespace and the host's veth ends (any of them) still exist."""
    names = ip("netns", "list").stdout.split()
    links = [ip("link", "show", end, check=False) for end in (created.host_end, created.lan_end)]
    return created.name in names, any(link.returncode == 0 for link in links)


def run_probe(created: Namespace, *args: str, hardened_proc: bool = False) -> dict[str, Any]:
    """Run a probe to completion inside the namespace; its JSON line."""
    if hardened_proc and shutil.which("unshare") is None:
        raise NamespaceUnavailableError("util-linux's `unshare` is not installed")
    result = subprocess.run(
        created.probe(*args, hardened_proc=hardened_proc),
        capture_output=True,
        text=True,
        timeout=PROBE_SECONDS,
        env=environment(),
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"probe {args} exited {result.returncode}: {result.stderr}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@contextlib.contextmanager
def holding(
    created: Namespace,
    address: str,
    *,
    port: int = 0,
    udp: bool = False,
    v6only: bool | None = None,
    name: str | None = None,
) -> Iterator[dict[str, Any]]:
    """A separate process inside the namespace listening on `address`; its port and pid."""
    args = ["hold", address, "--port", str(port)]
    if udp:
        args.append("--udp")
    if v6only is not None:
        args += ["--v6only", str(int(v6only))]
    if name is not None:
        args += ["--name", name]
    process = subprocess.Popen(
        created.probe(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = process.stdout.readline()  # the holder prints once it listens
        if not line:
            raise RuntimeError(f"holder exited {process.wait(PROBE_SECONDS)} before listening")
        answer: dict[str, Any] = json.loads(line)
        yield answer
    finally:
        process.stdin.close()
        try:
            process.wait(PROBE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


async def socket_dsn(pool: dbpool.Pool, dsn: str) -> str | None:
    """`dsn` through the server's unix socket, which a process inside a namespace still
    reaches (the file system is shared, the loopback is not); None when it has none."""
    parts = urllib.parse.urlsplit(dsn)
    if "host=/" in parts.query:
        return dsn
    directories = str(await pool.fetchval("SHOW unix_socket_directories"))
    folder = directories.partition(",")[0].strip()
    if not folder.startswith("/"):
        return None
    port = str(await pool.fetchval("SHOW port"))
    user = urllib.parse.quote(parts.username or "postgres")
    password = f":{urllib.parse.quote(parts.password)}" if parts.password else ""
    query = urllib.parse.urlencode({"host": folder, "port": port})
    return f"postgresql://{user}{password}@{parts.path}?{query}"


def get(created: Namespace, url: str) -> dict[str, Any]:
    """GET `url` from inside the namespace: `{"status", "headers", "body"}`."""
    return run_probe(created, "get", url)


def bind(
    address: str, port: int, *, udp: bool = False, v6only: bool | None = None
) -> socket.socket:
    """A socket bound to `address` (`fe80::1%eth0` for a link-local one), listening if TCP."""
    host, _, interface = address.partition("%")
    six = ":" in host
    item = socket.socket(
        socket.AF_INET6 if six else socket.AF_INET,
        socket.SOCK_DGRAM if udp else socket.SOCK_STREAM,
    )
    try:
        if six and v6only is not None:
            item.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        scope = socket.if_nametoindex(interface) if interface else 0
        item.bind((host, port, 0, scope) if six else (host, port))
        if not udp:
            item.listen()
    except OSError:
        item.close()
        raise
    return item


async def _serve(address: str, *, port: int, declare_public: bool, twin: bool) -> dict[str, Any]:
    from aiohttp import web

    from appliance.mesh import exposure, listeners

    runner = web.AppRunner(web.Application())
    await runner.setup()
    extra: list[socket.socket] = []
    try:
        site = web.TCPSite(runner, address, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        public = listeners.own_public_sockets(runner.addresses) if declare_public else frozenset()
        if twin:
            extra.append(bind("::", bound, v6only=True))
        result = exposure.run_check(exposure.Policy(public=public), box_wide=True)
        visible = {"proc_net": Path("/proc/net").exists(), "proc_sys": Path("/proc/sys").exists()}
        return {
            "port": bound,
            "ok": result.passed,
            "text": result.text(),
            "json": result.as_json(),
            "visible": visible,
        }
    finally:
        for item in extra:
            item.close()
        await runner.cleanup()


def _hold(address: str, *, port: int, udp: bool, v6only: bool | None, name: str | None) -> None:
    if name is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)  # what /proc/<pid>/comm shows
    with bind(address, port, udp=udp, v6only=v6only) as listener:
        bound = listener.getsockname()[1]
        print(json.dumps({"port": bound, "pid": os.getpid()}), flush=True)
        sys.stdin.read()


async def _get(url: str) -> dict[str, Any]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PROBE_SECONDS / 4)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return {
            "status": response.status,
            "headers": dict(response.headers),
            "body": await response.json(content_type=None),
        }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve on ADDRESS, then run the box-wide check")
    serve.add_argument("address")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--declare-public", action="store_true")
    serve.add_argument("--twin", action="store_true", help="also an IPv6-only [::] on the port")
    hold = commands.add_parser("hold", help="listen on ADDRESS until stdin closes")
    hold.add_argument("address")
    hold.add_argument("--port", type=int, default=0)
    hold.add_argument("--udp", action="store_true")
    hold.add_argument("--v6only", type=int, choices=(0, 1))
    hold.add_argument("--name")
    fetch = commands.add_parser("get", help="GET URL and print status, headers and body")
    fetch.add_argument("url")
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        answer = asyncio.run(
            _serve(
                arguments.address,
                port=arguments.port,
                declare_public=arguments.declare_public,
                twin=arguments.twin,
            )
        )
        print(json.dumps(answer), flush=True)
    elif arguments.command == "get":
        print(json.dumps(asyncio.run(_get(arguments.url))), flush=True)
    else:
        v6only = None if arguments.v6only is None else bool(arguments.v6only)
        _hold(
            arguments.address,
            port=arguments.port,
            udp=arguments.udp,
            v6only=v6only,
            name=arguments.name,
        )


if __name__ == "__main__":
    main()
