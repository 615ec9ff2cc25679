"""The exposure gate: /proc and lsof parsing, policy verdicts, and this process's real sockets."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import errors
from appliance.mesh import exposure

# Captured from /proc/self/net/* on the test host (Debian 12, x86_64, little-endian).
TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode"
)
TCP6_HEADER = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
)
TCP_LOOPBACK = (
    "   0: 0100007F:6448 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 "
    "7234 1 000000006aad9804 100 0 0 10 0"
)
TCP_WILDCARD = (
    "   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
    "1207 1 000000000d3bf312 100 0 0 10 0"
)
TCP_ESTABLISHED = (
    "  17: 0100007F:8A20 0100007F:1111 01 00000000:00000000 00:00000000 00000000   106        0 "
    "7236 1 000000006a2e50ad 20 4 30 11 -1"
)
TCP_TIME_WAIT = (
    "  11: 0100007F:9392 0100007F:9BBD 06 00000000:00000000 03:000009A1 00000000     0        0 "
    "0 3 0000000080757ab5"
)
TCP6_WILDCARD = (
    "   0: 00000000000000000000000000000000:CA0F 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 191077 1 000000009a2790b0 100 0 0 10 0"
)
TCP6_LOOPBACK = (
    "   1: 00000000000000000000000001000000:1111 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000   106        0 6037 1 00000000329cebf2 100 0 0 10 0"
)
TCP6_MAPPED_LOOPBACK = (
    "   0: 0000000000000000FFFF00000100007F:B0A7 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 191090 1 0000000000000000 100 0 0 10 0"
)
TCP6_MAPPED_ANY = (
    "   1: 0000000000000000FFFF000000000000:D957 00000000000000000000000000000000:0000 0A "
    "00000000:00000001 00:00000000 00000000     0        0 191091 1 0000000000000000 100 0 0 10 0"
)
UDP_HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode ref pointer drops"
)
UDP_WILDCARD = (
    "  293: 00000000:C119 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
    "191074 2 00000000bea594b9 0"
)
UDP_LOOPBACK = (
    " 4237: 0100007F:9081 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
    "191072 2 00000000298f485f 0"
)
UDP_CONNECTED = (
    " 4240: 0100007F:B7B9 0100007F:9081 01 00000000:00000000 00:00000000 00000000     0        0 "
    "191080 2 0000000000000000 0"
)
UDP6_WILDCARD = (
    " 8851: 00000000000000000000000000000000:A287 00000000000000000000000000000000:0000 07 "
    "00000000:00000000 00:00000000 00000000     0        0 191078 2 000000009d790e3e 0"
)
UDP6_LOOPBACK = (
    "13177: 00000000000000000000000001000000:B36D 00000000000000000000000000000000:0000 07 "
    "00000000:00000000 00:00000000 00000000     0        0 191076 2 00000000e7bbc52d 0"
)

# Captured from `lsof -nP -i -F pcfPtnT` (lsof 4.95, Linux), trimmed to three processes.
LSOF_OUTPUT = """\
p2126
cpostgres
f5
tIPv4
PTCP
n127.0.0.1:5432
TST=LISTEN
TQR=0
TQS=0
p2830
cepmd
f4
tIPv6
PTCP
n[::1]:4369
TST=LISTEN
TQR=0
TQS=0
f5
tIPv4
PTCP
n127.0.0.1:4369->127.0.0.1:35360
TST=ESTABLISHED
TQR=0
TQS=0
p21451
cpython3
f5
tIPv4
PTCP
n*:52525
TST=LISTEN
TQR=0
TQS=0
f6
tIPv4
PUDP
n*:42186
TQR=0
TQS=0
f8
tIPv6
PUDP
n[::1]:38596
TQR=0
TQS=0
f9
tIPv6
PTCP
n*:48779
TST=LISTEN
TQR=0
TQS=0
f13
tIPv4
PUDP
n127.0.0.1:47049->127.0.0.1:54065
TQR=0
TQS=0
"""

ANY4 = "0.0.0.0"  # noqa: S104 - the wildcard under test, never bound outside a test
ADDRESSES = ("127.0.0.1", ANY4, "::1", "::")
NO_ALLOW_LIST = exposure.Policy(allowed=frozenset())


def table(*lines: str, header: str = TCP_HEADER) -> str:
    """A /proc/net table: the header, then `lines`."""
    return "\n".join((header, *lines)) + "\n"


def one(line: str, protocol: exposure.Protocol, *, ipv6_only: bool = False) -> exposure.Socket:
    """The single socket parsed from one table line."""
    header = TCP_HEADER if protocol.startswith("tcp") else UDP_HEADER
    (item,) = exposure.parse_proc_table(table(line, header=header), protocol, ipv6_only=ipv6_only)
    return item


def sock(address: str, port: int = 8080, protocol: exposure.Protocol = "tcp") -> exposure.Socket:
    """A listening socket as the parser would report it."""
    parsed = ipaddress.ip_address(address)
    return exposure.Socket(
        protocol=protocol,
        address=parsed,
        port=port,
        inode=1,
        state="LISTEN" if protocol.startswith("tcp") else "UNCONN",
        wildcard=parsed.is_unspecified,
        dual_stack=address == "::",
    )


def fake_proc(tmp_path: Path, *, bindv6only: str | None = "0") -> Path:
    """A /proc tree: tables with four sockets, 7234 and 191078 held by us, 1207 by pid 4242."""
    proc = tmp_path / "proc"
    net = proc / "self" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(table(TCP_LOOPBACK, TCP_WILDCARD, TCP_ESTABLISHED))
    (net / "tcp6").write_text(table(TCP6_LOOPBACK, header=TCP6_HEADER))
    (net / "udp").write_text(table(header=UDP_HEADER))
    (net / "udp6").write_text(table(UDP6_WILDCARD, header=UDP_HEADER))
    (proc / "self" / "comm").write_text("appliance\n")
    for holder, inodes in (("self", (7234, 191078, 7236)), ("4242", (1207,))):
        fd = proc / holder / "fd"
        fd.mkdir(parents=True)
        (fd / "0").symlink_to("/dev/null")
        for number, inode in enumerate(inodes, start=3):
            (fd / str(number)).symlink_to(f"socket:[{inode}]")
    (proc / "4242" / "comm").write_text("sshd\n")
    if bindv6only is not None:
        sysctl = proc / "sys" / "net" / "ipv6"
        sysctl.mkdir(parents=True)
        (sysctl / "bindv6only").write_text(f"{bindv6only}\n")
    return proc


class TestProcTable:
    def test_ipv4_loopback_listener(self) -> None:
        """`0100007F:6448` in state 0A is 127.0.0.1:25672 listening, not a wildcard."""
        item = one(TCP_LOOPBACK, "tcp")
        assert (item.address, item.port, item.state) == (
            ipaddress.IPv4Address("127.0.0.1"),
            0x6448,
            "LISTEN",
        )
        assert not item.wildcard

    def test_inode_and_uid_columns(self) -> None:
        """Column 9 is the inode and column 7 the uid."""
        item = one(TCP_LOOPBACK, "tcp")
        assert (item.inode, item.uid) == (7234, 106)

    def test_ipv4_wildcard(self) -> None:
        """`00000000:07E8` is 0.0.0.0:2024, a wildcard."""
        item = one(TCP_WILDCARD, "tcp")
        assert (str(item.address), item.port, item.wildcard) == (ANY4, 2024, True)

    def test_ipv6_loopback(self) -> None:
        """Four little-endian words `...01000000` are ::1."""
        item = one(TCP6_LOOPBACK, "tcp6")
        assert (str(item.address), item.port, item.wildcard) == ("::1", 0x1111, False)

    def test_ipv6_wildcard_is_dual_stack_when_bindv6only_is_0(self) -> None:
        """`::` with bindv6only 0 is a wildcard that takes IPv4 too."""
        item = one(TCP6_WILDCARD, "tcp6", ipv6_only=False)
        assert (str(item.address), item.wildcard, item.dual_stack) == ("::", True, True)

    def test_ipv6_wildcard_is_ipv6_only_when_bindv6only_is_1(self) -> None:
        """`::` with bindv6only 1 is still a wildcard, but only for IPv6."""
        item = one(TCP6_WILDCARD, "tcp6", ipv6_only=True)
        assert (item.wildcard, item.dual_stack) == (True, False)

    def test_ipv4_mapped_loopback_is_not_a_wildcard(self) -> None:
        """`...FFFF00000100007F` is ::ffff:127.0.0.1, a specific (loopback) address."""
        item = one(TCP6_MAPPED_LOOPBACK, "tcp6")
        assert (item.endpoint, item.wildcard) == ("[::ffff:127.0.0.1]:45223", False)

    def test_ipv4_mapped_any_is_a_wildcard(self) -> None:
        """::ffff:0.0.0.0 takes IPv4 connections on every address (measured), so it is one."""
        item = one(TCP6_MAPPED_ANY, "tcp6")
        assert (item.endpoint, item.wildcard, item.dual_stack) == (
            "[::ffff:0.0.0.0]:55639",
            True,
            False,
        )

    def test_tcp_sockets_not_listening_are_skipped(self) -> None:
        """ESTABLISHED (01) and TIME_WAIT (06) entries are not listeners."""
        text = table(TCP_ESTABLISHED, TCP_TIME_WAIT, TCP_LOOPBACK)
        assert [item.inode for item in exposure.parse_proc_table(text, "tcp", ipv6_only=False)] == [
            7234
        ]

    def test_unconnected_udp_sockets_are_listening(self) -> None:
        """A bound, unconnected UDP socket (07) counts, with the state UNCONN."""
        item = one(UDP_WILDCARD, "udp")
        assert (str(item.address), item.port, item.state, item.wildcard) == (
            ANY4,
            0xC119,
            "UNCONN",
            True,
        )

    def test_connected_udp_sockets_are_skipped(self) -> None:
        """A connected UDP socket (01) only talks to its peer."""
        text = table(UDP_CONNECTED, UDP_LOOPBACK, header=UDP_HEADER)
        parsed = exposure.parse_proc_table(text, "udp", ipv6_only=False)
        assert [item.inode for item in parsed] == [191072]

    def test_udp6_loopback_and_wildcard(self) -> None:
        """udp6 rows decode like tcp6 ones."""
        text = table(UDP6_LOOPBACK, UDP6_WILDCARD, header=UDP_HEADER)
        parsed = exposure.parse_proc_table(text, "udp6", ipv6_only=False)
        assert [(str(item.address), item.wildcard) for item in parsed] == [
            ("::1", False),
            ("::", True),
        ]

    def test_a_table_with_only_its_header_is_empty(self) -> None:
        """No rows, no sockets."""
        assert exposure.parse_proc_table(table(), "tcp", ipv6_only=False) == []

    def test_big_endian_hosts_print_words_in_network_order(self) -> None:
        """On a big-endian host 127.0.0.1 reads `7F000001`."""
        assert exposure.decode_address("7F000001", "big") == ipaddress.IPv4Address("127.0.0.1")


class TestIpv6OnlyDefault:
    def test_bindv6only_0_means_dual_stack(self, tmp_path: Path) -> None:
        """bindv6only 0: a `::` socket takes IPv4 too."""
        assert exposure.ipv6_only_default(fake_proc(tmp_path, bindv6only="0")) is False

    def test_bindv6only_1_means_ipv6_only(self, tmp_path: Path) -> None:
        """bindv6only 1: a `::` socket takes IPv6 only."""
        assert exposure.ipv6_only_default(fake_proc(tmp_path, bindv6only="1")) is True

    def test_hidden_sysctl_falls_back_to_a_fresh_socket(self, tmp_path: Path) -> None:
        """Without /proc/sys (ProcSubset=pid) a new IPv6 socket's IPV6_V6ONLY answers."""
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            expected = probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
        assert exposure.ipv6_only_default(fake_proc(tmp_path, bindv6only=None)) is expected


class TestListeningSockets:
    def test_box_wide_lists_every_table(self, tmp_path: Path) -> None:
        """All four tables are read; only listeners are kept, sorted by port."""
        found = exposure.listening_sockets(proc=fake_proc(tmp_path))
        assert [(item.protocol, item.endpoint) for item in found] == [
            ("tcp", "0.0.0.0:2024"),
            ("tcp6", "[::1]:4369"),
            ("tcp", "127.0.0.1:25672"),
            ("udp6", "[::]:41607"),
        ]

    def test_box_wide_names_the_owning_process(self, tmp_path: Path) -> None:
        """The inode found in /proc/<pid>/fd gives the pid and its command."""
        found = exposure.listening_sockets(proc=fake_proc(tmp_path))
        assert (found[0].pid, found[0].command) == (4242, "sshd")

    def test_box_wide_owner_unknown_where_no_fd_links_it(self, tmp_path: Path) -> None:
        """A socket no visible process holds keeps only its uid."""
        found = exposure.listening_sockets(proc=fake_proc(tmp_path))
        assert (found[1].pid, found[1].owner) == (None, "uid 106")

    def test_own_only_keeps_the_inodes_of_our_fds(self, tmp_path: Path) -> None:
        """own_only: the sockets linked from /proc/self/fd, attributed to this process."""
        found = exposure.listening_sockets(proc=fake_proc(tmp_path), own_only=True)
        assert [(item.inode, item.pid, item.command) for item in found] == [
            (7234, os.getpid(), "appliance"),
            (191078, os.getpid(), "appliance"),
        ]

    def test_bindv6only_from_proc_marks_dual_stack(self, tmp_path: Path) -> None:
        """The `::` socket is dual-stack under bindv6only 0 and not under 1."""
        dual = exposure.listening_sockets(proc=fake_proc(tmp_path / "a", bindv6only="0"))
        single = exposure.listening_sockets(proc=fake_proc(tmp_path / "b", bindv6only="1"))
        assert (dual[-1].dual_stack, single[-1].dual_stack) == (True, False)

    def test_a_kernel_without_ipv6_has_no_v6_tables(self, tmp_path: Path) -> None:
        """Missing tcp6/udp6 files mean no IPv6 sockets, not an error."""
        proc = fake_proc(tmp_path)
        (proc / "self" / "net" / "tcp6").unlink()
        (proc / "self" / "net" / "udp6").unlink()
        found = exposure.listening_sockets(proc=proc)
        assert {item.protocol for item in found} == {"tcp"}

    def test_a_missing_ipv4_table_is_a_dependency_error(self, tmp_path: Path) -> None:
        """Without /proc/self/net/tcp the gate cannot look, and says so."""
        proc = fake_proc(tmp_path)
        (proc / "self" / "net" / "tcp").unlink()
        with pytest.raises(errors.DependencyError, match="net/tcp is missing"):
            exposure.listening_sockets(proc=proc)


class TestLsof:
    def test_tcp_listeners_and_unconnected_udp_are_kept(self) -> None:
        """LISTEN TCP files and UDP files without a peer; connections are dropped."""
        found = exposure.parse_lsof(LSOF_OUTPUT)
        assert [(item.protocol, item.endpoint, item.state) for item in found] == [
            ("tcp", "127.0.0.1:5432", "LISTEN"),
            ("tcp6", "[::1]:4369", "LISTEN"),
            ("tcp", "0.0.0.0:52525", "LISTEN"),
            ("udp", "0.0.0.0:42186", "UNCONN"),
            ("udp6", "[::1]:38596", "UNCONN"),
            ("tcp6", "[::]:48779", "LISTEN"),
        ]

    def test_star_is_the_wildcard_of_the_file_type(self) -> None:
        """`*:port` is 0.0.0.0 for an IPv4 file and `::` (dual-stack) for an IPv6 one."""
        found = {item.port: item for item in exposure.parse_lsof(LSOF_OUTPUT)}
        assert (found[52525].wildcard, found[52525].dual_stack) == (True, False)
        assert (found[48779].wildcard, found[48779].dual_stack) == (True, True)

    def test_each_file_belongs_to_the_process_before_it(self) -> None:
        """`p` and `c` lines name the owner of the files that follow."""
        found = exposure.parse_lsof(LSOF_OUTPUT)
        assert [(item.pid, item.command) for item in found[:3]] == [
            (2126, "postgres"),
            (2830, "epmd"),
            (21451, "python3"),
        ]

    def test_lsof_gives_no_inode(self) -> None:
        """lsof's NODE is not a /proc inode, so none is kept."""
        assert {item.inode for item in exposure.parse_lsof(LSOF_OUTPUT)} == {None}

    def test_empty_output_means_no_sockets(self) -> None:
        """lsof prints nothing (and exits 1) when nothing matches."""
        assert exposure.parse_lsof("") == []


class TestPolicy:
    def test_a_declared_public_port_may_listen_on_a_wildcard(self) -> None:
        """The webhook ingress on 0.0.0.0 and on `::` passes."""
        policy = exposure.Policy(public=frozenset({("tcp", 8443)}))
        items = [sock(ANY4, 8443), sock("::", 8443, "tcp6")]
        assert [exposure.verdict(item, policy) for item in items] == [exposure.Verdict.PUBLIC] * 2

    def test_tailscaled_udp_is_allowed_by_default(self) -> None:
        """UDP 41641 on a wildcard is on the default allow-list."""
        item = sock(ANY4, 41641, "udp")
        assert exposure.verdict(item, exposure.Policy()) is exposure.Verdict.ALLOWED

    def test_the_allow_list_is_per_protocol_family(self) -> None:
        """TCP 41641 on a wildcard is not tailscaled's port."""
        assert exposure.violations([sock(ANY4, 41641, "tcp")], exposure.Policy())

    def test_a_public_tcp_port_does_not_open_udp(self) -> None:
        """Declaring tcp/8443 public leaves udp/8443 on a wildcard forbidden."""
        policy = exposure.Policy(public=frozenset({("tcp", 8443)}))
        assert exposure.violations([sock("::", 8443, "udp6")], policy)

    def test_any_other_wildcard_fails(self) -> None:
        """0.0.0.0, `::` and ::ffff:0.0.0.0 on an undeclared port all fail."""
        items = [sock(ANY4), sock("::", protocol="tcp6"), one(TCP6_MAPPED_ANY, "tcp6")]
        assert exposure.violations(items, exposure.Policy()) == items

    def test_loopback_never_fails(self) -> None:
        """127.0.0.1, ::1 and ::ffff:127.0.0.1 pass whatever the port."""
        items = [sock("127.0.0.1"), sock("::1", protocol="tcp6"), one(TCP6_MAPPED_LOOPBACK, "tcp6")]
        verdicts = {exposure.verdict(item, NO_ALLOW_LIST) for item in items}
        assert verdicts == {exposure.Verdict.LOOPBACK}

    def test_the_tailnet_address_never_fails(self) -> None:
        """A socket bound to 100.64.0.0/10 or fd7a:115c:a1e0::/48 passes."""
        items = [sock("100.100.1.2"), sock("fd7a:115c:a1e0::1", protocol="tcp6")]
        verdicts = {exposure.verdict(item, NO_ALLOW_LIST) for item in items}
        assert verdicts == {exposure.Verdict.TAILNET}

    def test_another_specific_address_never_fails(self) -> None:
        """A socket bound to one other address is not a wildcard, so it passes."""
        item = sock("192.168.1.10")
        assert exposure.verdict(item, NO_ALLOW_LIST) is exposure.Verdict.SPECIFIC

    def test_an_impossible_port_is_a_config_error(self) -> None:
        """Port 0 or above 65535 in the policy is rejected when it is made."""
        with pytest.raises(errors.ConfigError, match="public entry"):
            exposure.Policy(public=frozenset({("tcp", 70000)}))


class TestExposureError:
    def test_exit_code_is_78(self) -> None:
        """Misconfigured: systemd does not restart it in a loop."""
        assert exposure.ExposureError([sock(ANY4)]).exit_code == 78

    def test_message_names_address_port_and_process(self) -> None:
        """Each offender appears with its endpoint and owner."""
        item = exposure.parse_lsof(LSOF_OUTPUT)[2]
        message = exposure.ExposureError([item, sock("::", 9000, "tcp6")]).message
        assert "tcp 0.0.0.0:52525, pid 21451 (python3)" in message
        assert "tcp6 [::]:9000 (IPv4 too)" in message

    def test_message_says_what_to_do(self) -> None:
        """It points to the tailnet bind and to declaring the public port."""
        message = exposure.ExposureError([sock(ANY4)]).message
        assert "tailnet address" in message
        assert "declare it public in the config" in message


class TestReport:
    def test_one_line_per_socket_then_the_conclusion(self) -> None:
        """Each socket gets a verdict line; the last line sums up."""
        lines = exposure.report(exposure.parse_lsof(LSOF_OUTPUT), exposure.Policy()).splitlines()
        assert len(lines) == 7
        assert lines[0].split()[:4] == ["ok", "tcp", "127.0.0.1:5432", "loopback"]
        assert lines[2].split()[:4] == ["FAIL", "tcp", "0.0.0.0:52525", "EXPOSED"]
        assert lines[-1].startswith("FAIL: 3 of 6 listening sockets")

    def test_a_clean_box_reports_ok(self) -> None:
        """No violation: the last line starts with `ok:`."""
        text = exposure.report([sock("127.0.0.1")], exposure.Policy())
        assert text.splitlines()[-1].startswith("ok: 1 listening sockets")


@pytest.fixture
def real_sockets() -> Iterator[list[socket.socket]]:
    """TCP listeners and bound UDP sockets on 127.0.0.1, 0.0.0.0, ::1 and ::, port 0."""
    opened: list[socket.socket] = []
    try:
        for address in ADDRESSES:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                item = socket.socket(family, kind)
                opened.append(item)
                item.bind((address, 0))
                if kind == socket.SOCK_STREAM:
                    item.listen()
        yield opened
    finally:
        for item in opened:
            item.close()


def expected(opened: list[socket.socket]) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of each opened socket, as the gate names them."""
    found = set()
    for item in opened:
        name = item.getsockname()
        six = "6" if item.family == socket.AF_INET6 else ""
        kind = "tcp" if item.type == socket.SOCK_STREAM else "udp"
        found.add((kind + six, name[0], int(name[1])))
    return found


def own_sockets_except(baseline: list[exposure.Socket]) -> list[exposure.Socket]:
    """This process's listening sockets that were not in `baseline`."""
    known = {item.inode for item in baseline}
    return [item for item in exposure.listening_sockets(own_only=True) if item.inode not in known]


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux procfs")
class TestRealSockets:
    @pytest.fixture
    def baseline(self) -> list[exposure.Socket]:
        """Listening sockets this test process already had (other tests may hold some)."""
        return exposure.listening_sockets(own_only=True)

    def test_own_only_finds_exactly_the_opened_sockets(
        self, baseline: list[exposure.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """All eight sockets appear, and nothing else of ours is new."""
        found = own_sockets_except(baseline)
        assert {(item.protocol, str(item.address), item.port) for item in found} == expected(
            real_sockets
        )

    def test_wildcard_verdicts_of_real_sockets(
        self, baseline: list[exposure.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """0.0.0.0 and `::` are wildcards; 127.0.0.1 and ::1 are not."""
        found = own_sockets_except(baseline)
        wildcards = {str(item.address) for item in found if item.wildcard}
        specific = {str(item.address) for item in found if not item.wildcard}
        assert (wildcards, specific) == ({ANY4, "::"}, {"127.0.0.1", "::1"})

    def test_real_sockets_belong_to_this_process(
        self, baseline: list[exposure.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """own_only attributes each socket to our pid."""
        assert {item.pid for item in own_sockets_except(baseline)} == {os.getpid()}

    def test_gate_names_each_wildcard_socket(
        self, baseline: list[exposure.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """The gate raises, naming the four wildcard sockets and none of the loopback ones."""
        with pytest.raises(exposure.ExposureError) as caught:
            exposure.gate_own_sockets(NO_ALLOW_LIST)
        message = caught.value.message
        for protocol, address, port in expected(real_sockets):
            endpoint = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            assert (f"{protocol} {endpoint}" in message) is (address in (ANY4, "::"))

    def test_gate_passes_when_the_wildcard_ports_are_public(
        self, baseline: list[exposure.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """Declaring the wildcard sockets' ports public (as tcp/udp) lets the gate pass."""
        exposed = exposure.violations(baseline, NO_ALLOW_LIST)  # held before this test
        public = {(item.family, item.port) for item in exposed}
        for protocol, address, port in expected(real_sockets):
            if address in (ANY4, "::"):
                public.add(("tcp" if protocol.startswith("tcp") else "udp", port))
        exposure.gate_own_sockets(exposure.Policy(public=frozenset(public), allowed=frozenset()))
