"""The box-wide exposure check inside a network namespace of its own, with a `tailscale0`.

The namespace holds only what the test puts there, so the box-wide verdict is the test's alone
(the host itself may well have wildcard listeners). Skipped, with the reason, where no
namespace can be made (not root, no `ip netns`, no veth).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import netns

ANY4 = "0.0.0.0"  # noqa: S104 - the wildcard under test, bound only inside the namespace


@pytest.fixture
def namespace() -> Iterator[netns.Namespace]:
    """A fresh namespace with `tailscale0` = 100.100.1.2/24; removed afterwards."""
    try:
        with netns.namespace() as created:
            yield created
    except netns.NamespaceUnavailableError as exc:
        pytest.skip(f"no network namespace here: {exc}")


def line_for(text: str, endpoint: str) -> str:
    """The report line that names `endpoint`."""
    (line,) = [line for line in text.splitlines() if f" {endpoint} " in line]
    return line


class TestNamespace:
    def test_tailscale0_carries_the_tailnet_address(self, namespace: netns.Namespace) -> None:
        """Inside, `tailscale0` is up with 100.100.1.2."""
        shown = netns.ip("-n", namespace.name, "-4", "addr", "show", netns.INTERFACE).stdout
        assert "inet 100.100.1.2/24" in shown
        assert "UP" in shown

    def test_namespace_and_veth_are_removed_afterwards(self) -> None:
        """Leaving the block deletes the namespace and the veth pair."""
        try:
            with netns.namespace() as created:
                assert netns.exists(created) == (True, True)
        except netns.NamespaceUnavailableError as exc:
            pytest.skip(f"no network namespace here: {exc}")
        assert netns.exists(created) == (False, False)

    def test_namespace_is_removed_when_the_block_fails(self) -> None:
        """An error inside the block still removes the namespace and the veth pair."""
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

    def test_a_declared_public_wildcard_passes(self, namespace: netns.Namespace) -> None:
        """The same 0.0.0.0 listener passes once its port is declared public."""
        answer = netns.run_probe(namespace, "serve", ANY4, "--declare-public")
        assert answer["ok"] is True
        line = line_for(answer["text"], f"{ANY4}:{answer['port']}")
        assert "declared public" in line

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
