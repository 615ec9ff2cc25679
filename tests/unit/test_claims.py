"""The claim gate: a claim is skipped only while nothing can have become claimable since one
came back short."""

from __future__ import annotations

import datetime as dt

from appliance.engine import claims

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class TestClaims:
    def test_a_new_gate_claims(self) -> None:
        """Nothing is known at first: the first claim runs."""
        assert claims.ClaimGate().open()

    def test_a_short_claim_closes_it_until_a_notification(self) -> None:
        """After a claim got fewer tasks than asked, the next waits for a notification."""
        gate = claims.ClaimGate()
        gate.claimed(gate.asking(4), asked=4, got=1)
        assert not gate.open()
        gate.notified()
        assert gate.open()

    def test_a_full_claim_leaves_it_open(self) -> None:
        """A claim that got all it asked for may have left more behind."""
        gate = claims.ClaimGate()
        gate.claimed(gate.asking(2), asked=2, got=2)
        assert gate.open()

    def test_a_notification_during_the_claim_keeps_it_open(self) -> None:
        """A claim counts as of the notifications seen when it was asked."""
        gate = claims.ClaimGate()
        ticket = gate.asking(1)
        gate.notified()
        gate.claimed(ticket, asked=1, got=0)
        assert gate.open()

    def test_a_claim_in_flight_holds_the_next_back(self) -> None:
        """While a claim asked since the last notification is in flight, another waits."""
        gate = claims.ClaimGate()
        gate.notified()
        ticket = gate.asking(1)
        assert not gate.open()
        gate.notified()
        assert gate.open()
        gate.claimed(ticket, asked=1, got=1)

    def test_a_full_answer_after_a_hold_back_says_look_again(self) -> None:
        """A claim held back for one that then got all it asked for: look again."""
        gate = claims.ClaimGate()
        ticket = gate.asking(1)
        assert not gate.open()
        assert gate.claimed(ticket, asked=1, got=1)
        assert gate.open()

    def test_a_full_answer_nobody_waited_for_says_nothing(self) -> None:
        """Without a claim held back, a full answer needs no second look."""
        gate = claims.ClaimGate()
        assert not gate.claimed(gate.asking(2), asked=2, got=2)

    def test_asking_for_nothing_says_nothing(self) -> None:
        """A finish that claimed nothing does not close the gate."""
        gate = claims.ClaimGate()
        gate.claimed(gate.asking(0), asked=0, got=0)
        assert gate.open()

    def test_forgetting_opens_it(self) -> None:
        """A timeout or a lost listener: claim again."""
        gate = claims.ClaimGate()
        gate.claimed(gate.asking(1), asked=1, got=0)
        gate.forget()
        assert gate.open()


class TestDueTime:
    def test_a_due_time_is_known_until_a_notification(self) -> None:
        """The next due time is reused until a notification may have changed it."""
        gate = claims.ClaimGate()
        assert gate.due(NOW) == (False, None)
        later = NOW + dt.timedelta(seconds=5)
        gate.due_found(gate.ticket(), later)
        assert gate.due(NOW) == (True, later)
        gate.notified()
        assert not gate.due(NOW)[0]

    def test_no_delayed_task_is_known_too(self) -> None:
        """An empty answer is an answer."""
        gate = claims.ClaimGate()
        gate.due_found(gate.ticket(), None)
        assert gate.due(NOW) == (True, None)

    def test_a_passed_due_time_is_looked_up_again(self) -> None:
        """Once its time passed, the task is claimable and the next one unknown."""
        gate = claims.ClaimGate()
        gate.due_found(gate.ticket(), NOW)
        assert not gate.due(NOW)[0]

    def test_a_notification_during_the_lookup_makes_it_unknown(self) -> None:
        """A lookup counts as of the notifications seen when it was asked."""
        gate = claims.ClaimGate()
        ticket = gate.ticket()
        gate.notified()
        gate.due_found(ticket, None)
        assert not gate.due(NOW)[0]
