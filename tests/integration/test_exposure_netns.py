"""The box-wide exposure check inside a network namespace of its own, with a `tailscale0`.

The namespace holds only what the test puts there, so the box-wide verdict is the test's alone
(the host itself may well have wildcard listeners). Its `eth0` carries the box's "LAN"
addresses. Skipped, with the reason, where no namespace can be made (not root, no `ip netns`,
no veth).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import daemon, netns

ANY4 = "0.0.0.0"  # noqa: S104 - the wildcard under test, bound only inside the namespace
INGRESS_PORT = 8471  # fixed: nothing else listens in a fresh namespace
CHECK_SECONDS = 60.0


@pytest.fixture
def namespace() -> Iterator[netns.Namespace]:
    """A fresh namespace with `tailscale0` = 100.100.1.2/24 and the LAN on `eth0`."""
    try:
        with netns.namespace() as created:
            yield created
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(f"no network namespace here: {exc}")


def line_for(text: str, endpoint: str) -> str:
    """The report line that names `endpoint`."""
    (line,) = [line for line in text.splitlines() if f" {endpoint} " in line]
    return line


def endpoint(address: str, port: int) -> str:
    host = address.partition("%")[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TestNamespace:
    def test_tailscale0_carries_the_tailnet_address(self, namespace: netns.Namespace) -> None:
        """Inside, `tailscale0` is up with 100.100.1.2."""
        shown = netns.ip("-n", namespace.name, "-4", "addr", "show", netns.INTERFACE).stdout
        assert "inet 100.100.1.2/24" in shown
        assert "UP" in shown

    def test_eth0_carries_the_lan_addresses(self, namespace: netns.Namespace) -> None:
        """Inside, `eth0` has an IPv4 LAN address, a unique-local and a link-local one."""
        shown = netns.ip("-n", namespace.name, "addr", "show", netns.LAN_INTERFACE).stdout
        for address in netns.LAN_ADDRESSES:
            assert address in shown

    def test_namespace_and_veth_are_removed_afterwards(self) -> None:
        """Leaving the block deletes the namespace and the veth pairs."""
        try:
            with netns.namespace() as created:
                assert netns.exists(created) == (True, True)
        except netns.NamespaceUnavailableError as exc:
            pytest.skip(f"no network namespace here: {exc}")
        assert netns.exists(created) == (False, False)

    def test_namespace_is_removed_when_the_block_fails(self) -> None:
        """An error inside the block still removes the namespace and the veth pairs."""
        created: netns.Namespace | None = None
        try:
            with pytest.raises(RuntimeError, match="boom"), netns.namespace() as created:
                raise RuntimeError("boom")
        except netns.NamespaceUnavailableError as exc:
            pytest.skip(f"no network namespace here: {exc}")
        assert created is not None
        assert netns.exists(created) == (False, False)


class TestBoxWideCheck:
    def test_a_listener_on_the_tailnet_address_passes(self, namespace: netns.Namespace) -> None:
        """aiohttp on 100.100.1.2 only: the box-wide check is ok and calls it tailnet."""
        answer = netns.run_probe(namespace, "serve", namespace.address)
        assert answer["ok"] is True
        line = line_for(answer["text"], f"{namespace.address}:{answer['port']}")
        assert line.split()[:2] == ["ok", "tcp"]
        assert "tailnet" in line

    def test_only_the_namespace_sockets_are_seen(self, namespace: netns.Namespace) -> None:
        """The check reads the namespace's tables: one socket, whatever the host has."""
        answer = netns.run_probe(namespace, "serve", namespace.address)
        assert answer["text"].splitlines()[-1].startswith("ok: 1 listening sockets")

    def test_a_wildcard_listener_fails_naming_it(self, namespace: netns.Namespace) -> None:
        """aiohttp on 0.0.0.0: the check fails, naming the address, port and process."""
        answer = netns.run_probe(namespace, "serve", ANY4)
        assert answer["ok"] is False
        line = line_for(answer["text"], f"{ANY4}:{answer['port']}")
        assert line.split()[:4] == ["FAIL", "tcp", f"{ANY4}:{answer['port']}", "EXPOSED"]
        assert "(python" in line

    @pytest.mark.parametrize(
        ("address", "protocol"),
        [(netns.LAN_V4, "tcp"), (netns.LAN_V6, "tcp6"), (netns.LINK_LOCAL, "tcp6")],
        ids=["lan-ipv4", "lan-ipv6", "link-local"],
    )
    def test_a_listener_on_a_lan_address_fails(
        self, namespace: netns.Namespace, address: str, protocol: str
    ) -> None:
        """One specific address of the box that is not the tailnet's: exposed all the same."""
        answer = netns.run_probe(namespace, "serve", address)
        assert answer["ok"] is False
        line = line_for(answer["text"], endpoint(address, answer["port"]))
        assert line.split()[:2] == ["FAIL", protocol]
        assert "EXPOSED" in line

    def test_the_declared_public_socket_passes(self, namespace: netns.Namespace) -> None:
        """The 0.0.0.0 listener passes once that very socket is declared public."""
        answer = netns.run_probe(namespace, "serve", ANY4, "--declare-public")
        assert answer["ok"] is True
        line = line_for(answer["text"], f"{ANY4}:{answer['port']}")
        assert "declared public" in line

    def test_an_ipv6_only_twin_of_the_ingress_port_fails(self, namespace: netns.Namespace) -> None:
        """Another process's `[::]:8471` (IPv6 only) beside the declared IPv4 ingress fails."""
        with netns.holding(namespace, "::", port=INGRESS_PORT, v6only=True) as held:
            answer = netns.run_probe(
                namespace, "serve", ANY4, "--port", str(INGRESS_PORT), "--declare-public"
            )
        assert answer["ok"] is False
        twin = line_for(answer["text"], f"[::]:{INGRESS_PORT} (IPv6 only)")
        assert twin.startswith("FAIL  tcp6")
        assert f"pid {held['pid']} (python" in twin
        assert "declared public" in line_for(answer["text"], f"{ANY4}:{INGRESS_PORT}")

    def test_an_ipv6_only_twin_in_the_same_process_fails(self, namespace: netns.Namespace) -> None:
        """The daemon's own second socket on the ingress port is not the declared one."""
        answer = netns.run_probe(namespace, "serve", ANY4, "--declare-public", "--twin")
        assert answer["ok"] is False
        twin = line_for(answer["text"], f"[::]:{answer['port']} (IPv6 only)")
        assert twin.startswith("FAIL")

    def test_udp_on_the_ingress_port_fails(self, namespace: netns.Namespace) -> None:
        """Declaring the TCP ingress socket does not open UDP on its port."""
        with netns.holding(namespace, ANY4, port=INGRESS_PORT, udp=True):
            answer = netns.run_probe(
                namespace, "serve", ANY4, "--port", str(INGRESS_PORT), "--declare-public"
            )
        assert answer["ok"] is False
        verdicts = {
            (row["protocol"], row["port"]): row["verdict"] for row in answer["json"]["sockets"]
        }
        assert verdicts == {
            ("tcp", INGRESS_PORT): "declared public",
            ("udp", INGRESS_PORT): "EXPOSED",
        }

    @pytest.mark.parametrize("address", [ANY4, "::"])
    def test_udp_41641_belongs_to_tailscaled_only(
        self, namespace: netns.Namespace, address: str
    ) -> None:
        """tailscaled's port held by tailscaled passes; the same socket held by another
        process is exposed and named (the allowance goes by process, not by port)."""
        protocol = "udp6" if address == "::" else "udp"
        with netns.holding(namespace, address, port=41641, udp=True, name="tailscaled") as held:
            allowed = netns.run_probe(namespace, "serve", namespace.address)
        line = line_for(allowed["text"], endpoint(address, 41641))
        assert line.split()[:2] == ["ok", protocol]
        assert f"allow-listed  pid {held['pid']} (tailscaled)" in line
        with netns.holding(namespace, address, port=41641, udp=True) as held:
            answer = netns.run_probe(namespace, "serve", namespace.address)
        assert (allowed["ok"], answer["ok"]) == (True, False)
        line = line_for(answer["text"], endpoint(address, 41641))
        assert line.split()[:2] == ["FAIL", protocol]
        assert f"pid {held['pid']} (python" in line

    def test_a_v4_mapped_address_counts_as_its_ipv4_address(
        self, namespace: netns.Namespace
    ) -> None:
        """IPv6 sockets on ::ffff:127.0.0.1 (loopback: passes) and ::ffff:192.168.50.2 (the
        LAN address: exposed)."""
        with (
            netns.holding(namespace, "::ffff:127.0.0.1", v6only=False) as loopback,
            netns.holding(namespace, f"::ffff:{netns.LAN_V4}", v6only=False) as lan,
        ):
            answer = netns.run_probe(namespace, "serve", namespace.address)
        mapped = f"[::ffff:127.0.0.1]:{loopback['port']}"
        assert line_for(answer["text"], mapped).split()[:4] == ["ok", "tcp6", mapped, "loopback"]
        line = line_for(answer["text"], f"[::ffff:{netns.LAN_V4}]:{lan['port']}")
        assert line.startswith("FAIL")
        assert answer["ok"] is False

    @pytest.mark.parametrize(("v6only", "label"), [(True, "IPv6 only"), (False, "IPv4 too")])
    def test_a_wildcard_ipv6_socket_is_labelled(
        self, namespace: netns.Namespace, v6only: bool, label: str
    ) -> None:
        """Another process's `::` socket says whether it takes IPv4 too (read from the kernel)."""
        with netns.holding(namespace, "::", v6only=v6only) as held:
            answer = netns.run_probe(namespace, "serve", namespace.address)
        line = line_for(answer["text"], f"[::]:{held['port']} ({label})")
        assert line.startswith("FAIL")
        (row,) = [row for row in answer["json"]["sockets"] if row["port"] == held["port"]]
        assert row["ipv6_only"] is v6only

    def test_another_process_wildcard_fails_naming_its_pid(
        self, namespace: netns.Namespace
    ) -> None:
        """Box-wide means every process: a second process's 0.0.0.0 listener is named by pid."""
        with netns.holding(namespace, ANY4) as held:
            answer = netns.run_probe(namespace, "serve", namespace.address)
        assert answer["ok"] is False
        line = line_for(answer["text"], f"{ANY4}:{held['port']}")
        assert line.startswith("FAIL")
        assert f"pid {held['pid']} (python" in line


def exposure_check(
    created: netns.Namespace, folder: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`appliance exposure-check ARGS` run inside the namespace."""
    command = [*daemon.command(), "--config", str(daemon.config_file(folder)), "exposure-check"]
    return subprocess.run(
        created.command(*command, *args),
        capture_output=True,
        text=True,
        env=daemon.environment(None, folder),
        cwd=folder,
        timeout=CHECK_SECONDS,
        check=False,
    )


class TestExposureCheckCommand:
    def test_exit_0_for_a_tailnet_listener_78_for_a_lan_one(
        self, namespace: netns.Namespace, tmp_path: Path
    ) -> None:
        """The gate for install scripts: exit 0 while only the tailnet listens; 78, naming
        protocol, address, port and the holding process, once a LAN listener appears."""
        with netns.holding(namespace, namespace.address):
            clean = exposure_check(namespace, tmp_path)
            with netns.holding(namespace, netns.LAN_V4) as held:
                result = exposure_check(namespace, tmp_path)
        assert clean.returncode == 0, clean.stderr
        assert clean.stdout.splitlines()[-1].startswith("ok: 1 listening sockets")
        assert result.returncode == 78
        assert f"tcp {netns.LAN_V4}:{held['port']}, pid {held['pid']} (python" in result.stderr
        assert "Traceback" not in result.stderr

    def test_json_lists_each_socket_and_still_exits_78(
        self, namespace: netns.Namespace, tmp_path: Path
    ) -> None:
        """`--json`: the verdict of each socket on stdout, the gate's exit code unchanged."""
        with netns.holding(namespace, ANY4, port=41641, udp=True) as held:
            result = exposure_check(namespace, tmp_path, "--json")
        assert result.returncode == 78
        data: dict[str, Any] = json.loads(result.stdout)
        assert (data["passed"], data["violations"]) == (False, 1)
        (row,) = data["sockets"]
        assert (row["protocol"], row["address"], row["port"], row["pid"]) == (
            "udp",
            ANY4,
            41641,
            held["pid"],
        )
        assert row["verdict"] == "EXPOSED"


class TestHardenedProc:
    def test_the_check_works_where_proc_net_is_hidden(self, namespace: netns.Namespace) -> None:
        """Under /proc mounted subset=pid (ProcSubset=pid) the check still names a wildcard."""
        try:
            answer = netns.run_probe(namespace, "serve", ANY4, hardened_proc=True)
        except netns.NamespaceUnavailableError as exc:
            pytest.skip(str(exc))
        assert answer["visible"] == {"proc_net": False, "proc_sys": False}
        assert answer["ok"] is False
        assert line_for(answer["text"], f"{ANY4}:{answer['port']}").startswith("FAIL")
