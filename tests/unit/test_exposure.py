"""The exposure gate: socket listing (/proc, sock_diag, lsof), verdicts, and real sockets."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from appliance import errors, settings
from appliance.mesh import exposure, listeners, sockets

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

# Captured from `lsof -nP -a -p PID -i -F pcfPtnT` (lsof 4.95, Linux) for a process holding
# 127.0.0.1 TCP, `::` TCP with IPV6_V6ONLY set, `::` TCP without it, ::ffff:127.0.0.1 TCP (lsof
# prints it as 127.0.0.1 in an IPv6 file) and ::1 UDP.
LSOF_OWN_OUTPUT = """\
p27571
cpython3
f3
tIPv4
PTCP
n127.0.0.1:39843
TST=LISTEN
TQR=0
TQS=0
f4
tIPv6
PTCP
n*:46139
TST=LISTEN
TQR=0
TQS=0
f5
tIPv6
PTCP
n*:40791
TST=LISTEN
TQR=0
TQS=0
f6
tIPv6
PTCP
n127.0.0.1:34293
TST=LISTEN
TQR=0
TQS=0
f7
tIPv6
PUDP
n[::1]:52148
TQR=0
TQS=0
"""

ANY4 = "0.0.0.0"  # noqa: S104 - the wildcard under test, never bound outside a test
ADDRESSES = ("127.0.0.1", ANY4, "::1", "::")
NO_ALLOW_LIST = exposure.Policy(allowed=frozenset())
TAILSCALED = exposure.Allowance("udp", 41641, "tailscaled")
PID = 4242


def table(*lines: str, header: str = TCP_HEADER) -> str:
    """A /proc/net table: the header, then `lines`."""
    return "\n".join((header, *lines)) + "\n"


def one(line: str, protocol: sockets.Protocol) -> sockets.Socket:
    """The single socket parsed from one table line."""
    header = TCP_HEADER if protocol.startswith("tcp") else UDP_HEADER
    (item,) = sockets.parse_proc_table(table(line, header=header), protocol)
    return item


def sock(
    address: str, port: int = 8080, protocol: sockets.Protocol = "tcp", **fields: Any
) -> sockets.Socket:
    """A listening socket as the listing would report it (held by pid 4242 unless told)."""
    values: dict[str, Any] = {"inode": 1, "pid": PID, "command": "python3", "uid": 0}
    values.update(fields)
    return sockets.Socket(
        protocol=protocol,
        address=ipaddress.ip_address(address),
        port=port,
        state="LISTEN" if protocol.startswith("tcp") else "UNCONN",
        **values,
    )


def public(item: sockets.Socket, **fields: Any) -> exposure.PublicSocket:
    """`item` declared public, as the daemon declares its ingress socket."""
    values: dict[str, Any] = {"pid": item.pid, "inode": item.inode, "fd": item.fd}
    values.update(fields)
    return exposure.PublicSocket(
        protocol=item.protocol, address=item.address, port=item.port, **values
    )


def fake_proc(tmp_path: Path) -> Path:
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
    (proc / "4242" / "stat").write_text("4242 (sshd) S 1 4242 4242 0 -1\n")
    (proc / "4300").mkdir()
    (proc / "4300" / "stat").write_text("4300 (a (b) c) S 4242 4300 4300 0 -1\n")
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

    def test_ipv6_wildcard_without_v6only_from_the_table(self) -> None:
        """The table does not say whether `::` is IPv6-only: unknown until sock_diag says."""
        item = one(TCP6_WILDCARD, "tcp6")
        assert (str(item.address), item.wildcard, item.v6only, item.stack) == (
            "::",
            True,
            None,
            "IPV6_V6ONLY unknown",
        )

    def test_ipv4_mapped_loopback_counts_as_its_ipv4_address(self) -> None:
        """`...FFFF00000100007F` is ::ffff:127.0.0.1: loopback, shown in dotted form."""
        item = one(TCP6_MAPPED_LOOPBACK, "tcp6")
        assert (item.endpoint, item.plain_address, item.wildcard) == (
            "[::ffff:127.0.0.1]:45223",
            ipaddress.IPv4Address("127.0.0.1"),
            False,
        )

    def test_ipv4_mapped_any_is_a_wildcard(self) -> None:
        """::ffff:0.0.0.0 takes IPv4 connections on every address (measured), so it is one."""
        item = one(TCP6_MAPPED_ANY, "tcp6")
        assert (item.endpoint, item.wildcard) == ("[::ffff:0.0.0.0]:55639", True)

    def test_tcp_sockets_not_listening_are_skipped(self) -> None:
        """ESTABLISHED (01) and TIME_WAIT (06) entries are not listeners."""
        text = table(TCP_ESTABLISHED, TCP_TIME_WAIT, TCP_LOOPBACK)
        assert [item.inode for item in sockets.parse_proc_table(text, "tcp")] == [7234]

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
        assert [item.inode for item in sockets.parse_proc_table(text, "udp")] == [191072]

    def test_udp6_loopback_and_wildcard(self) -> None:
        """udp6 rows decode like tcp6 ones."""
        text = table(UDP6_LOOPBACK, UDP6_WILDCARD, header=UDP_HEADER)
        parsed = sockets.parse_proc_table(text, "udp6")
        assert [(str(item.address), item.wildcard) for item in parsed] == [
            ("::1", False),
            ("::", True),
        ]

    def test_a_table_with_only_its_header_is_empty(self) -> None:
        """No rows, no sockets."""
        assert sockets.parse_proc_table(table(), "tcp") == []

    def test_big_endian_hosts_print_words_in_network_order(self) -> None:
        """On a big-endian host 127.0.0.1 reads `7F000001`."""
        assert sockets.decode_address("7F000001", "big") == ipaddress.IPv4Address("127.0.0.1")


class TestListeningSockets:
    def test_box_wide_lists_every_table(self, tmp_path: Path) -> None:
        """All four tables are read; only listeners are kept, sorted by port."""
        found = sockets.listening_sockets(proc=fake_proc(tmp_path))
        assert [(item.protocol, item.endpoint) for item in found] == [
            ("tcp", "0.0.0.0:2024"),
            ("tcp6", "[::1]:4369"),
            ("tcp", "127.0.0.1:25672"),
            ("udp6", "[::]:41607"),
        ]

    def test_box_wide_names_the_owning_process(self, tmp_path: Path) -> None:
        """The inode found in /proc/<pid>/fd gives the pid and its command."""
        found = sockets.listening_sockets(proc=fake_proc(tmp_path))
        assert (found[0].pid, found[0].command, found[0].owner) == (4242, "sshd", "pid 4242 (sshd)")

    def test_box_wide_owner_unknown_where_no_fd_links_it(self, tmp_path: Path) -> None:
        """A socket no visible process holds keeps only its uid, and says so."""
        found = sockets.listening_sockets(proc=fake_proc(tmp_path))
        assert (found[1].pid, found[1].owner) == (None, "uid 106 (no visible holder)")

    def test_our_own_sockets_carry_our_pid_and_descriptor(self, tmp_path: Path) -> None:
        """A socket in /proc/self/fd is ours, with the descriptor that holds it."""
        found = {item.inode: item for item in sockets.listening_sockets(proc=fake_proc(tmp_path))}
        assert (found[7234].pid, found[7234].command, found[7234].fd) == (
            os.getpid(),
            "appliance",
            3,
        )

    def test_attribute_limits_the_holder_lookup(self, tmp_path: Path) -> None:
        """With `attribute`, only the sockets it accepts get a holder (the costly scan)."""
        found = sockets.listening_sockets(
            proc=fake_proc(tmp_path), attribute=lambda item: item.port != 2024
        )
        assert (found[0].port, found[0].pid) == (2024, None)

    def test_own_only_keeps_the_inodes_of_our_fds(self, tmp_path: Path) -> None:
        """own_only: the sockets linked from /proc/self/fd, attributed to this process."""
        found = sockets.listening_sockets(proc=fake_proc(tmp_path), own_only=True)
        assert [(item.inode, item.pid, item.command, item.fd) for item in found] == [
            (7234, os.getpid(), "appliance", 3),
            (191078, os.getpid(), "appliance", 4),
        ]

    def test_a_kernel_without_ipv6_has_no_v6_tables(self, tmp_path: Path) -> None:
        """Missing tcp6/udp6 files mean no IPv6 sockets, not an error."""
        proc = fake_proc(tmp_path)
        (proc / "self" / "net" / "tcp6").unlink()
        (proc / "self" / "net" / "udp6").unlink()
        found = sockets.listening_sockets(proc=proc)
        assert {item.protocol for item in found} == {"tcp"}

    def test_a_missing_ipv4_table_is_a_dependency_error(self, tmp_path: Path) -> None:
        """Without /proc/self/net/tcp the gate cannot look, and says so."""
        proc = fake_proc(tmp_path)
        (proc / "self" / "net" / "tcp").unlink()
        with pytest.raises(errors.DependencyError, match="net/tcp is missing"):
            sockets.listening_sockets(proc=proc)

    def test_ancestry_follows_the_stat_files(self, tmp_path: Path) -> None:
        """The parent is field 4 of /proc/<pid>/stat, even when the command holds `)`."""
        proc = fake_proc(tmp_path)
        assert sockets.parent_pid(4300, proc) == 4242
        assert sockets.descends_from(4300, 4242, proc)
        assert not sockets.descends_from(4242, 4300, proc)


def diag_message(inode: int, *attributes: tuple[int, bytes]) -> bytes:
    """One inet_diag_msg in a netlink header, laid out as the kernel sends it."""
    body = bytearray(72)
    body[0] = socket.AF_INET6
    struct.pack_into("=II", body, 64, 0, inode)
    for kind, value in attributes:
        size = 4 + len(value)
        body += struct.pack("=HH", size, kind) + value + b"\0" * ((-size) % 4)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + bytes(body)


def netlink_done() -> bytes:
    return struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0\0\0\0"


class TestSockDiag:
    def test_v6only_attribute_of_each_socket(self) -> None:
        """INET_DIAG_SKV6ONLY (11) after another attribute gives each inode's IPV6_V6ONLY."""
        data = diag_message(501, (8, b"\x02"), (11, b"\x01")) + diag_message(502, (11, b"\x00"))
        found: dict[int, bool] = {}
        assert sockets.parse_diag_messages(data, found) is False
        assert found == {501: True, 502: False}

    def test_done_ends_the_dump(self) -> None:
        """NLMSG_DONE after the messages ends the dump."""
        found: dict[int, bool] = {}
        assert sockets.parse_diag_messages(diag_message(7, (11, b"\x01")) + netlink_done(), found)
        assert found == {7: True}

    def test_an_error_message_is_an_os_error(self) -> None:
        """NLMSG_ERROR carries -errno: EACCES when the dump is refused."""
        data = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -13) + b"\0" * 16
        with pytest.raises(PermissionError):
            sockets.parse_diag_messages(data, {})

    def test_the_request_asks_a_dump_of_one_family_and_protocol(self) -> None:
        """SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST|NLM_F_DUMP, then the inet_diag_req_v2."""
        request = sockets.diag_request(socket.AF_INET6, socket.IPPROTO_TCP, 1 << 10)
        assert struct.unpack_from("=IHH", request) == (72, 20, 0x301)
        assert struct.unpack_from("=BBBBI", request, 16) == (
            socket.AF_INET6,
            socket.IPPROTO_TCP,
            0,
            0,
            1 << 10,
        )


class TestStackLabel:
    @pytest.mark.parametrize(
        ("v6only", "label"),
        [(True, "IPv6 only"), (False, "IPv4 too"), (None, "IPV6_V6ONLY unknown")],
    )
    def test_a_wildcard_ipv6_socket_says_which_versions_it_takes(
        self, v6only: bool | None, label: str
    ) -> None:
        """`::` is labelled by its IPV6_V6ONLY, in the description too."""
        item = sock("::", 8471, "tcp6", v6only=v6only)
        assert item.stack == label
        assert item.describe() == f"tcp6 [::]:8471 ({label}), pid 4242 (python3)"

    def test_other_addresses_carry_no_label(self) -> None:
        """0.0.0.0 and a specific IPv6 address take what they are bound to."""
        assert (sock(ANY4).stack, sock("fe80::1", protocol="tcp6", v6only=False).stack) == ("", "")


class TestLsof:
    def test_tcp_listeners_and_unconnected_udp_are_kept(self) -> None:
        """LISTEN TCP files and UDP files without a peer; connections are dropped."""
        found = sockets.parse_lsof(LSOF_OUTPUT)
        assert [(item.protocol, item.endpoint, item.state) for item in found] == [
            ("tcp", "127.0.0.1:5432", "LISTEN"),
            ("tcp6", "[::1]:4369", "LISTEN"),
            ("tcp", "0.0.0.0:52525", "LISTEN"),
            ("udp", "0.0.0.0:42186", "UNCONN"),
            ("udp6", "[::1]:38596", "UNCONN"),
            ("tcp6", "[::]:48779", "LISTEN"),
        ]

    def test_star_is_the_wildcard_of_the_file_type(self) -> None:
        """`*:port` is 0.0.0.0 for an IPv4 file and `::` for an IPv6 one."""
        found = {item.port: item for item in sockets.parse_lsof(LSOF_OUTPUT)}
        assert (found[52525].address, found[48779].address) == (
            ipaddress.IPv4Address(0),
            ipaddress.IPv6Address("::"),
        )

    def test_each_file_belongs_to_the_process_before_it(self) -> None:
        """`p` and `c` lines name the owner of the files that follow; `f` the descriptor."""
        found = sockets.parse_lsof(LSOF_OUTPUT)
        assert [(item.pid, item.command, item.fd) for item in found[:3]] == [
            (2126, "postgres", 5),
            (2830, "epmd", 4),
            (21451, "python3", 5),
        ]

    def test_lsof_gives_no_inode_and_no_v6only(self) -> None:
        """lsof's NODE is not a /proc inode, and lsof does not show IPV6_V6ONLY."""
        found = sockets.parse_lsof(LSOF_OUTPUT)
        assert {(item.inode, item.v6only) for item in found} == {(None, None)}

    def test_a_mapped_address_in_an_ipv6_file_is_its_ipv4_address(self) -> None:
        """lsof prints an IPv6 socket on ::ffff:127.0.0.1 as 127.0.0.1: loopback all the same."""
        found = {item.fd: item for item in sockets.parse_lsof(LSOF_OWN_OUTPUT)}
        assert (found[6].protocol, found[6].endpoint) == ("tcp6", "127.0.0.1:34293")
        assert exposure.verdict(found[6], NO_ALLOW_LIST) is exposure.Verdict.LOOPBACK

    def test_both_wildcards_of_one_process_are_exposed(self) -> None:
        """The v6-only and the dual-stack `::` listeners both fail; the others pass."""
        found = sockets.parse_lsof(LSOF_OWN_OUTPUT)
        bad = exposure.violations(found, NO_ALLOW_LIST)
        assert sorted(item.fd or 0 for item in bad) == [4, 5]

    def test_our_own_descriptors_give_v6only(self) -> None:
        """For our own files, IPV6_V6ONLY is read on the descriptor lsof names."""
        with (
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as only,
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as dual,
        ):
            only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            items = [
                sock("::", 1, "tcp6", inode=None, pid=os.getpid(), fd=only.fileno()),
                sock("::", 2, "tcp6", inode=None, pid=os.getpid(), fd=dual.fileno()),
                sock("::", 3, "tcp6", inode=None, pid=os.getpid() + 1, fd=only.fileno()),
            ]
            labelled = sockets.own_lsof_v6only(items)
        assert [item.v6only for item in labelled] == [True, False, None]

    def test_a_descriptor_that_is_not_a_socket_gives_no_answer(self, tmp_path: Path) -> None:
        """A descriptor reused for a file meanwhile: unknown, and nothing leaks."""
        with (tmp_path / "f").open("w") as handle:
            before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 0
            assert sockets.own_v6only(handle.fileno()) is None
            after = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 0
        assert before == after

    def test_empty_output_means_no_sockets(self) -> None:
        """lsof prints nothing (and exits 1) when nothing matches."""
        assert sockets.parse_lsof("") == []


LOCAL = [
    ("127.0.0.1", exposure.Verdict.LOOPBACK),
    ("127.8.9.10", exposure.Verdict.LOOPBACK),
    ("::1", exposure.Verdict.LOOPBACK),
    ("::ffff:127.0.0.1", exposure.Verdict.LOOPBACK),
    ("100.64.0.1", exposure.Verdict.TAILNET),
    ("100.127.255.254", exposure.Verdict.TAILNET),
    ("fd7a:115c:a1e0::1", exposure.Verdict.TAILNET),
    ("fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", exposure.Verdict.TAILNET),
    ("::ffff:100.100.1.2", exposure.Verdict.TAILNET),
]
EXPOSED = [
    ANY4,
    "::",
    "::ffff:0.0.0.0",
    "192.168.1.10",  # a LAN address
    "10.0.0.5",
    "172.16.4.4",
    "203.0.113.7",  # a public address
    "169.254.1.1",  # IPv4 link-local
    "fe80::1",  # IPv6 link-local
    "fd00::1",  # unique local, not the tailnet's
    "2001:db8::1",
    "::ffff:192.168.1.10",  # mapped LAN
    "100.128.0.1",  # just past 100.64.0.0/10
    "100.63.255.255",  # just before it
    "fd7a:115c:a1e1::1",  # just past fd7a:115c:a1e0::/48
]


def protocol_of(address: str, family: sockets.Family) -> sockets.Protocol:
    six = ":" in address
    if family == "tcp":
        return "tcp6" if six else "tcp"
    return "udp6" if six else "udp"


class TestVerdict:
    @pytest.mark.parametrize("family", ["tcp", "udp"])
    @pytest.mark.parametrize(("address", "expected"), LOCAL)
    def test_loopback_and_tailnet_pass_whoever_holds_them(
        self, address: str, expected: exposure.Verdict, family: sockets.Family
    ) -> None:
        """127/8, ::1, 100.64/10, fd7a:115c:a1e0::/48 and their mapped forms pass."""
        item = sock(address, 8470, protocol_of(address, family))
        assert exposure.verdict(item, NO_ALLOW_LIST) is expected

    @pytest.mark.parametrize("family", ["tcp", "udp"])
    @pytest.mark.parametrize("address", EXPOSED)
    def test_every_other_address_is_exposed(self, address: str, family: sockets.Family) -> None:
        """Wildcards, LAN, public, link-local and unique-local addresses all fail."""
        item = sock(address, 8470, protocol_of(address, family))
        assert exposure.verdict(item, exposure.Policy()) is exposure.Verdict.EXPOSED

    def test_a_specific_lan_address_is_named_by_the_error(self) -> None:
        """The console on the box's LAN address fails the gate, naming it and its holder."""
        message = exposure.ExposureError([sock("192.168.1.10", 8470)]).message
        assert "tcp 192.168.1.10:8470, pid 4242 (python3)" in message


class TestPublicSocket:
    def test_the_declared_socket_itself_passes(self) -> None:
        """The ingress socket on 0.0.0.0:8471, matched by inode and pid."""
        ingress = sock(ANY4, 8471, inode=900)
        policy = exposure.Policy(public=frozenset({public(ingress)}))
        assert exposure.verdict(ingress, policy) is exposure.Verdict.PUBLIC

    @pytest.mark.parametrize(
        "other",
        [
            sock("::", 8471, "tcp6", inode=901, v6only=True),  # IPv6-only twin of the port
            sock("::", 8471, "tcp6", inode=902, v6only=False),
            sock(ANY4, 8471, "udp", inode=903),  # UDP on the port
            sock(ANY4, 8471, inode=904, pid=5000),  # SO_REUSEPORT twin in another process
            sock(ANY4, 8471, inode=905),  # a second socket of the same process
            sock("192.168.1.10", 8471, inode=906),  # the port on a LAN address
            sock(ANY4, 8471, inode=900, pid=5000),  # the inode, held by another process
        ],
        ids=["v6only", "dual-stack", "udp", "reuseport", "same-pid", "lan", "other-holder"],
    )
    def test_another_socket_on_the_ingress_port_is_exposed(self, other: sockets.Socket) -> None:
        """The exemption is the socket, not the port number."""
        policy = exposure.Policy(public=frozenset({public(sock(ANY4, 8471, inode=900))}))
        assert exposure.verdict(other, policy) is exposure.Verdict.EXPOSED

    def test_the_inode_decides_where_the_holder_is_hidden(self) -> None:
        """exposure-check without access to the daemon's fds: the inode still identifies it."""
        policy = exposure.Policy(public=frozenset({public(sock(ANY4, 8471, inode=900))}))
        hidden = sock(ANY4, 8471, inode=900, pid=None, command=None)
        stranger = sock(ANY4, 8471, inode=977, pid=None, command=None)
        assert exposure.verdict(hidden, policy) is exposure.Verdict.PUBLIC
        assert exposure.verdict(stranger, policy) is exposure.Verdict.EXPOSED

    def test_lsof_matches_by_pid_and_descriptor(self) -> None:
        """On macOS (no inode) the declared socket is the daemon's descriptor."""
        ingress = sock(ANY4, 8471, inode=None, fd=7)
        policy = exposure.Policy(public=frozenset({public(ingress)}))
        assert exposure.verdict(ingress, policy) is exposure.Verdict.PUBLIC
        other = sock(ANY4, 8471, inode=None, fd=8)
        assert exposure.verdict(other, policy) is exposure.Verdict.EXPOSED

    def test_json_round_trip(self) -> None:
        """The record the daemon writes reads back as the same declaration."""
        declared = public(sock("::", 8471, "tcp6", inode=900, fd=11))
        assert exposure.PublicSocket.from_json(json.loads(json.dumps(declared.as_json()))) == (
            declared
        )

    def test_a_malformed_record_is_refused(self) -> None:
        """An unknown protocol is a ValueError, not a socket."""
        data = public(sock(ANY4, 8471)).as_json() | {"protocol": "sctp"}
        with pytest.raises(ValueError, match="sctp"):
            exposure.PublicSocket.from_json(data)


class TestAllowance:
    def test_tailscaled_on_its_port_passes(self) -> None:
        """UDP 41641 held by tailscaled, on 0.0.0.0 and `::`."""
        items = [
            sock(ANY4, 41641, "udp", command="tailscaled"),
            sock("::", 41641, "udp6", command="tailscaled", v6only=True),
        ]
        verdicts = {exposure.verdict(item, exposure.Policy()) for item in items}
        assert verdicts == {exposure.Verdict.ALLOWED}

    @pytest.mark.parametrize("command", ["python3", "nc", "tailscale", "tailscaledx"])
    def test_any_other_process_on_the_port_fails(self, command: str) -> None:
        """UDP 41641 opened by something that is not tailscaled."""
        item = sock(ANY4, 41641, "udp", command=command)
        assert exposure.verdict(item, exposure.Policy()) is exposure.Verdict.EXPOSED

    def test_tcp_on_the_port_fails(self) -> None:
        """The allowance is UDP: TCP 41641 held by tailscaled is not on it."""
        item = sock(ANY4, 41641, "tcp", command="tailscaled")
        assert exposure.verdict(item, exposure.Policy()) is exposure.Verdict.EXPOSED

    def test_a_hidden_holder_passes_only_as_root(self) -> None:
        """Holder hidden (ProtectProc=invisible): uid 0 passes, another uid fails."""
        root = sock(ANY4, 41641, "udp", pid=None, command=None, uid=0)
        user = sock(ANY4, 41641, "udp", pid=None, command=None, uid=1000)
        assert exposure.verdict(root, exposure.Policy()) is exposure.Verdict.ALLOWED
        assert exposure.verdict(user, exposure.Policy()) is exposure.Verdict.EXPOSED

    def test_names_compare_as_the_kernel_keeps_them(self) -> None:
        """A name longer than 15 characters matches its first 15 (/proc/<pid>/comm)."""
        allowance = exposure.Allowance("tcp", 22, "a-very-long-daemon-name")
        item = sock(ANY4, 22, command="a-very-long-dae")
        assert allowance.matches(item)

    def test_parse_reads_protocol_port_and_process(self) -> None:
        """`udp/41641@tailscaled` is the default entry."""
        assert exposure.Allowance.parse("udp/41641@tailscaled") == TAILSCALED

    @pytest.mark.parametrize("entry", ["udp/41641", "udp/41641@", "sctp/1@x", "udp/x@y"])
    def test_parse_refuses_an_entry_without_protocol_port_or_process(self, entry: str) -> None:
        """Each part is required: a port alone would be allowed to anyone."""
        with pytest.raises(errors.ConfigError, match="protocol/port@process"):
            exposure.Allowance.parse(entry)

    @pytest.mark.parametrize("entry", ["udp/41641", "tcp/70000@x", "udp/41641@"])
    def test_the_setting_refuses_the_same_entries(self, entry: str) -> None:
        """`mesh.allowed` is validated when the config loads, naming the entry."""
        with pytest.raises(pydantic.ValidationError, match=r"41641|70000"):
            settings.MeshSettings(allowed=(entry,))

    def test_policy_of_the_config_uses_the_allow_list(self) -> None:
        """The daemon's policy holds the parsed allow-list and the public sockets given."""
        config = settings.Settings(mesh=settings.MeshSettings(allowed=("tcp/22@sshd",)))
        declared = public(sock(ANY4, 8471))
        policy = listeners.policy_of(config, [declared])
        assert policy.allowed == frozenset({exposure.Allowance("tcp", 22, "sshd")})
        assert policy.public == frozenset({declared})


class TestWorkerPrivateAddress:
    def test_a_workers_health_address_is_declared_private(self) -> None:
        """A VPC worker's health listener on its private address passes the gate."""
        config = settings.Settings(mode="worker", health=settings.HealthSettings(host="10.0.1.5"))
        policy = listeners.policy_of(config)

        assert exposure.verdict(sock("10.0.1.5", 8470), policy) is exposure.Verdict.PRIVATE

    def test_another_address_of_the_worker_is_still_exposed(self) -> None:
        """Only the address given is declared: a wildcard or another address fails."""
        config = settings.Settings(mode="worker", health=settings.HealthSettings(host="10.0.1.5"))
        policy = listeners.policy_of(config)

        assert exposure.verdict(sock("10.0.1.6", 8470), policy) is exposure.Verdict.EXPOSED
        assert exposure.verdict(sock(ANY4, 8470), policy) is exposure.Verdict.EXPOSED

    def test_the_edge_box_declares_no_private_address(self) -> None:
        """In edge mode a LAN address stays exposed, whatever health.host says."""
        config = settings.Settings(health=settings.HealthSettings(host="10.0.1.5"))

        assert listeners.policy_of(config).private == frozenset()

    def test_a_worker_without_an_address_listens_on_nothing(self) -> None:
        """health.host left at 'tailnet' means no listener for a worker; --local means loopback."""
        config = settings.Settings(mode="worker")

        assert listeners.health_host(config) is None
        assert listeners.health_host(config, local=True) == "127.0.0.1"


class TestExposureError:
    def test_exit_code_is_78(self) -> None:
        """Misconfigured: systemd does not restart it in a loop."""
        assert exposure.ExposureError([sock(ANY4)]).exit_code == 78

    def test_message_names_protocol_address_port_and_process(self) -> None:
        """Each offender appears with its protocol, endpoint, stack and owner."""
        item = sockets.parse_lsof(LSOF_OUTPUT)[2]
        message = exposure.ExposureError([item, sock("::", 9000, "tcp6", v6only=True)]).message
        assert "tcp 0.0.0.0:52525, pid 21451 (python3)" in message
        assert "tcp6 [::]:9000 (IPv6 only), pid 4242 (python3)" in message

    def test_message_says_what_to_do(self) -> None:
        """It points to the tailnet bind and to the allow-list's form."""
        message = exposure.ExposureError([sock(ANY4)]).message
        assert "tailnet address" in message
        assert "protocol/port@process" in message


class TestResult:
    def test_one_line_per_socket_then_the_conclusion(self) -> None:
        """Each socket gets a verdict line; the last line sums up."""
        result = exposure.Result(tuple(sockets.parse_lsof(LSOF_OUTPUT)), exposure.Policy())
        lines = result.text().splitlines()
        assert len(lines) == 7
        assert lines[0].split()[:4] == ["ok", "tcp", "127.0.0.1:5432", "loopback"]
        assert lines[2].split()[:4] == ["FAIL", "tcp", "0.0.0.0:52525", "EXPOSED"]
        assert lines[-1].startswith("FAIL: 3 of 6 listening sockets")

    def test_a_clean_box_reports_ok(self) -> None:
        """No violation: the last line starts with `ok:`."""
        result = exposure.Result((sock("127.0.0.1"),), exposure.Policy())
        assert result.passed
        assert result.text().splitlines()[-1].startswith("ok: 1 listening sockets")

    def test_notes_come_before_the_conclusion(self) -> None:
        """What could not be read is said, on its own line."""
        result = exposure.Result((sock(ANY4),), exposure.Policy(), ("cannot read the record",))
        assert result.text().splitlines()[-2] == "note: cannot read the record"

    def test_json_names_each_socket(self) -> None:
        """`--json`: the conclusion, then each socket's verdict, address, stack and holder."""
        items = (sock("::", 8471, "tcp6", v6only=True, inode=9), sock("::ffff:127.0.0.1", 5))
        data = exposure.Result(items, exposure.Policy()).as_json()
        assert (data["passed"], data["listening"], data["violations"]) == (False, 2, 1)
        first, second = sorted(data["sockets"], key=lambda row: row["port"])
        assert second == {
            "ok": False,
            "verdict": "EXPOSED",
            "protocol": "tcp6",
            "address": "::",
            "port": 8471,
            "endpoint": "[::]:8471",
            "ipv6_only": True,
            "pid": 4242,
            "process": "python3",
            "uid": 0,
            "inode": 9,
        }
        assert (first["address"], first["verdict"]) == ("::ffff:127.0.0.1", "loopback")


class TestPublicRecord:
    def test_written_and_read_back(self, tmp_path: Path) -> None:
        """The daemon's record of its ingress sockets is what exposure-check reads."""
        declared = {public(sock(ANY4, 8471, inode=900, fd=9))}
        listeners.record_public_sockets(tmp_path, declared)
        assert listeners.recorded_public_sockets(tmp_path) == (frozenset(declared), ())

    def test_no_record_is_no_declaration(self, tmp_path: Path) -> None:
        """No daemon with an ingress: nothing is public, and nothing to say."""
        assert listeners.recorded_public_sockets(tmp_path) == (frozenset(), ())

    def test_an_unreadable_record_is_noted(self, tmp_path: Path) -> None:
        """A broken record declares nothing, and the report says why."""
        (tmp_path / listeners.PUBLIC_RECORD).write_text("{not json")
        found, notes = listeners.recorded_public_sockets(tmp_path)
        assert found == frozenset()
        assert "cannot read" in notes[0]

    def test_a_missing_state_dir_is_a_warning_not_a_crash(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The daemon goes on; the warning says what exposure-check will get wrong."""
        listeners.record_public_sockets(tmp_path / "absent", {public(sock(ANY4, 8471))})
        assert "exposure.unrecorded" in [getattr(r, "event", "") for r in caplog.records]


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
                if family == socket.AF_INET6:
                    item.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
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


def own_sockets_except(baseline: list[sockets.Socket]) -> list[sockets.Socket]:
    """This process's listening sockets that were not in `baseline`."""
    known = {item.inode for item in baseline}
    return [item for item in sockets.listening_sockets(own_only=True) if item.inode not in known]


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux procfs")
class TestRealSockets:
    @pytest.fixture
    def baseline(self) -> list[sockets.Socket]:
        """Listening sockets this test process already had (other tests may hold some)."""
        return sockets.listening_sockets(own_only=True)

    def test_own_only_finds_exactly_the_opened_sockets(
        self, baseline: list[sockets.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """All eight sockets appear, and nothing else of ours is new."""
        found = own_sockets_except(baseline)
        assert {(item.protocol, str(item.address), item.port) for item in found} == expected(
            real_sockets
        )

    def test_real_sockets_belong_to_this_process(
        self, baseline: list[sockets.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """own_only attributes each socket to our pid and the descriptor holding it."""
        found = own_sockets_except(baseline)
        assert {item.pid for item in found} == {os.getpid()}
        assert {item.fd for item in found} == {item.fileno() for item in real_sockets}

    def test_v6only_is_read_for_real_sockets(self) -> None:
        """`::` with IPV6_V6ONLY is `IPv6 only`; without it, `IPv4 too` (sock_diag or fd)."""
        with (
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as only,
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as dual,
        ):
            only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for item in (only, dual):
                item.bind(("::", 0))
                item.listen()
            ports = {only.getsockname()[1]: "IPv6 only", dual.getsockname()[1]: "IPv4 too"}
            found = {
                item.port: item.stack
                for item in sockets.listening_sockets(own_only=True)
                if item.port in ports
            }
            box = {
                item.port: item.stack for item in sockets.listening_sockets() if item.port in ports
            }
        assert found == ports
        assert box == ports

    def test_sock_diag_reports_v6only_of_the_namespace(self) -> None:
        """The kernel's dump has IPV6_V6ONLY by inode (skipped where netlink is refused)."""
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as item:
            item.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            item.bind(("::1", 0))
            found = sockets.kernel_v6only()
            inode = os.fstat(item.fileno()).st_ino
        if not found:
            pytest.skip("sock_diag netlink is refused here")
        assert found[inode] is True

    def test_gate_names_each_wildcard_socket(
        self, baseline: list[sockets.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """The gate raises, naming the four wildcard sockets and none of the loopback ones."""
        with pytest.raises(exposure.ExposureError) as caught:
            exposure.gate_own_sockets(NO_ALLOW_LIST)
        message = caught.value.message
        for protocol, address, port in expected(real_sockets):
            endpoint = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            assert (f"{protocol} {endpoint}" in message) is (address in (ANY4, "::"))

    def test_declaring_the_sockets_themselves_lets_the_gate_pass(
        self, baseline: list[sockets.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """own_public_sockets declares the very sockets at the bound addresses."""
        exposed = exposure.violations(baseline, NO_ALLOW_LIST)  # held before this test
        before = {public(item) for item in exposed}
        wildcards = [item.getsockname() for item in real_sockets if item.type == socket.SOCK_STREAM]
        declared = listeners.own_public_sockets(wildcards)
        udp = {
            public(item)
            for item in own_sockets_except(baseline)
            if item.family == "udp" and item.wildcard
        }
        policy = exposure.Policy(public=frozenset(before | declared | udp), allowed=frozenset())
        exposure.gate_own_sockets(policy)
        assert {item.port for item in declared} == {name[1] for name in wildcards}

    def test_the_port_alone_does_not_pass(
        self, baseline: list[sockets.Socket], real_sockets: list[socket.socket]
    ) -> None:
        """A second listener on a declared socket's port (IPv6-only beside IPv4) fails."""
        ingress = next(item for item in real_sockets if item.getsockname()[0] == ANY4)
        port = ingress.getsockname()[1]
        declared = listeners.own_public_sockets([ingress.getsockname()])
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as twin:
            twin.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            twin.bind(("::", port))
            twin.listen()
            found = [item for item in own_sockets_except(baseline) if item.port == port]
        verdicts = {
            (item.protocol, item.stack): exposure.verdict(item, exposure.Policy(public=declared))
            for item in found
        }
        assert verdicts[("tcp", "")] is exposure.Verdict.PUBLIC
        assert verdicts[("tcp6", "IPv6 only")] is exposure.Verdict.EXPOSED


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux procfs")
class TestDescent:
    def test_a_child_process_descends_from_us(self) -> None:
        """A process we started counts as ours; we do not descend from it."""
        child = subprocess.Popen(["sleep", "30"])
        try:
            assert sockets.descends_from(child.pid, os.getpid())
            assert not sockets.descends_from(os.getpid(), child.pid)
        finally:
            child.kill()
            child.wait()
