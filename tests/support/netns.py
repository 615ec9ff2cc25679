"""A network namespace with a `tailscale0` interface, and the probes that run inside one.

`namespace()` creates `ap<hex>`, moves one end of a veth pair into it (this kernel has no dummy
interfaces) and renames it `tailscale0` with a tailnet address (100.100.1.2/24), then brings it
and `lo` up. On the way out it deletes the pair and the namespace, whatever happened.
`NamespaceUnavailableError` says why no namespace can be made here (not Linux, not root, no
`ip`, no netns or veth support); the tests skip with that reason.

Run inside the namespace (`Namespace.command(...)`):
- `python -m tests.support.netns serve ADDRESS [--declare-public]` serves an aiohttp app on
  ADDRESS, port 0, runs the box-wide exposure check and prints one JSON line
  `{"port": ..., "ok": ..., "text": ..., "visible": {"proc_net": ..., "proc_sys": ...}}`;
- `python -m tests.support.netns hold ADDRESS` listens on ADDRESS, port 0, prints
  `{"port": ..., "pid": ...}` and holds the socket until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TAILNET_ADDRESS = "100.100.1.2/24"
INTERFACE = "tailscale0"
IP_SECONDS = 30.0
PROBE_SECONDS = 60.0
HARDENED_PROC_OPTIONS = "subset=pid,hidepid=invisible"


class NamespaceUnavailableError(Exception):
    """No network namespace can be made here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    host_end: str  # the veth end left in the host's namespace
    address: str  # tailscale0's address, without the prefix length

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
    """A fresh namespace whose `tailscale0` holds `address`; removed on exit."""
    _require_support()
    tag = uuid.uuid4().hex[:8]
    created = Namespace(name=f"ap{tag}", host_end=f"ap{tag}h", address=address.partition("/")[0])
    peer = f"ap{tag}n"
    added = ip("netns", "add", created.name, check=False)
    if added.returncode != 0:
        raise NamespaceUnavailableError(f"`ip netns add` failed: {added.stderr.strip()}")
    try:
        pair = ip(
            "link", "add", created.host_end, "type", "veth", "peer", "name", peer, check=False
        )
        if pair.returncode != 0:
            raise NamespaceUnavailableError(f"cannot create a veth pair: {pair.stderr.strip()}")
        ip("link", "set", peer, "netns", created.name)
        ip("-n", created.name, "link", "set", peer, "name", INTERFACE)
        ip("-n", created.name, "addr", "add", address, "dev", INTERFACE)
        ip("-n", created.name, "link", "set", INTERFACE, "up")
        ip("-n", created.name, "link", "set", "lo", "up")
        ip("link", "set", created.host_end, "up")
        yield created
    finally:
        ip("link", "del", created.host_end, check=False)  # takes the peer with it
        ip("netns", "del", created.name, check=False)


def exists(created: Namespace) -> tuple[bool, bool]:
    """Whether the namespace and the host's veth end still exist."""
    names = ip("netns", "list").stdout.split()
    link = ip("link", "show", created.host_end, check=False)
    return created.name in names, link.returncode == 0


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
def holding(created: Namespace, address: str) -> Iterator[dict[str, Any]]:
    """A separate process inside the namespace listening on `address`; its port and pid."""
    process = subprocess.Popen(
        created.probe("hold", address),
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


async def _serve(address: str, *, declare_public: bool) -> dict[str, Any]:
    from aiohttp import web

    from appliance.mesh import exposure

    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        site = web.TCPSite(runner, address, 0)
        await site.start()
        port = int(runner.addresses[0][1])
        public: frozenset[tuple[exposure.Family, int]] = frozenset()
        if declare_public:
            public = frozenset({("tcp", port)})
        ok, text = exposure.run_check(exposure.Policy(public=public), box_wide=True)
        visible = {"proc_net": Path("/proc/net").exists(), "proc_sys": Path("/proc/sys").exists()}
        return {"port": port, "ok": ok, "text": text, "visible": visible}
    finally:
        await runner.cleanup()


def _hold(address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((address, 0))
        listener.listen()
        port = listener.getsockname()[1]
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        sys.stdin.read()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve on ADDRESS, then run the box-wide check")
    serve.add_argument("address")
    serve.add_argument("--declare-public", action="store_true")
    hold = commands.add_parser("hold", help="listen on ADDRESS until stdin closes")
    hold.add_argument("address")
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        answer = asyncio.run(_serve(arguments.address, declare_public=arguments.declare_public))
        print(json.dumps(answer), flush=True)
    else:
        _hold(arguments.address)


if __name__ == "__main__":
    main()
