"""The public port's bookkeeping: connection caps per source and in total, the body budget,
the log throttle, and the open-files limit the cap is fitted under."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from appliance.ingress import guard


class TestAddressKey:
    @pytest.mark.parametrize(
        ("peer", "key"),
        [
            (("203.0.113.7", 40000), "203.0.113.7"),
            (("2001:db8:1:2:3:4:5:6", 40000, 0, 0), "2001:db8:1:2::/64"),
            (("2001:db8:1:2:ffff::1", 1, 0, 0), "2001:db8:1:2::/64"),
            (("::ffff:198.51.100.1", 1, 0, 0), "198.51.100.1"),
            (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
        ],
    )
    def test_a_source_is_its_ipv4_address_or_its_ipv6_64(self, peer: object, key: str) -> None:
        """Every address of one IPv6 /64 counts as one source; mapped IPv4 as IPv4."""
        assert guard.address_key(peer) == key


class TestConnections:
    def test_a_source_is_capped(self) -> None:
        """The per-address cap refuses a source's next connection, not another source's."""
        caps = guard.Connections(total=10, per_address=2)
        assert [caps.admit("a") for _ in range(3)] == [True, True, False]
        assert caps.admit("b")
        assert (caps.count, caps.held_by("a")) == (3, 2)

    def test_the_total_is_capped(self) -> None:
        """Many sources together stop at the total."""
        caps = guard.Connections(total=3, per_address=2)
        assert [caps.admit(str(n)) for n in range(5)] == [True, True, True, False, False]

    def test_a_released_connection_frees_its_place(self) -> None:
        """Closing one lets the next in; releases never go below zero."""
        caps = guard.Connections(total=1, per_address=1)
        assert caps.admit("a")
        assert not caps.admit("a")
        caps.release("a")
        caps.release("a")
        assert caps.count == 0
        assert caps.admit("a")

    def test_the_per_address_cap_is_never_above_the_total(self) -> None:
        """A per-address cap larger than the total is the total."""
        assert guard.Connections(total=4, per_address=100).per_address == 4


class TestBodyBudget:
    def test_bytes_over_the_budget_are_refused_and_not_counted(self) -> None:
        """take() is all or nothing; give_back frees room."""
        budget = guard.BodyBudget(100)
        assert budget.take(60)
        assert not budget.take(41)
        assert budget.used == 60
        assert budget.take(40)
        budget.give_back(100)
        assert budget.used == 0


class TestThrottle:
    def test_one_line_per_kind_per_period_with_the_count_left_out(self) -> None:
        """Within the period further lines are left out and counted; each kind on its own."""
        now = [0.0]
        throttle = guard.Throttle(every=10.0, clock=lambda: now[0])
        assert throttle.admit("a") == 0
        assert [throttle.admit("a") for _ in range(5)] == [None] * 5
        assert throttle.admit("b") == 0
        now[0] = 10.0
        assert throttle.admit("a") == 5
        assert throttle.admit("a") is None


class TestOpenFiles:
    def test_the_soft_limit_is_raised_to_the_hard_one(self) -> None:
        """In a process started with a low soft limit, raise_open_files_limit lifts it."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        low = min(256, soft)
        code = (
            "import resource\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))\n"
            "from appliance.ingress import guard\n"
            "print(*guard.raise_open_files_limit())\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        raised, kept = map(int, done.stdout.split())
        assert kept == hard
        assert raised == hard or (hard == resource.RLIM_INFINITY and raised > low)

    def test_the_cap_fits_under_the_limit(self) -> None:
        """Configured 512 under a limit of 1,024 with 40 held and 400 reserved: 584 room, 512;
        under 700: 260."""
        assert guard.connection_cap(512, limit=1024, in_use=40, reserved=400) == 512
        assert guard.connection_cap(512, limit=700, in_use=40, reserved=400) == 260
        assert guard.connection_cap(512, limit=300, in_use=40, reserved=400) == 0
