"""When a worker's claim can find a task, so that it does not ask Postgres when it cannot.

Every transition that makes a task claimable notifies the workers on `appliance_tasks` (a
submit, a retry or a release, a requeue, a resume, a freed slot of a hard concurrency limit),
except the passing of a delayed task's time, which an idle worker sleeps until. So once a claim
came back with fewer tasks than it asked for, another claim finds nothing until a notification
arrives or that time passes, and the worker skips it: the claim that `finish_task` folds into
the end of a task, and the one of its loop when a slot frees. Nor does it ask while a claim
asked since the last notification is still in flight: that one takes what the notification
announced (when it comes back with all it asked for, the worker looks again). The same holds
for the next due time of the delayed tasks. An answer counts as of the notifications received
when the question was asked, so one that arrives meanwhile is never lost. The worker forgets
what it knows (and claims again) when it was not listening, or when the safety-net poll or a
due time woke it.
"""

from __future__ import annotations

import collections
import datetime as dt


class ClaimGate:
    """What the last claims and due-time lookups of one worker found, as of its notifications."""

    def __init__(self) -> None:
        self._received = 0  # notifications so far
        self._short_as_of: int | None = None  # count when a claim asked came back short
        self._asking: collections.Counter[int] = collections.Counter()  # claims in flight
        self._held_back = False  # a claim was not made for one in flight
        self._due: tuple[int, dt.datetime | None] | None = None  # (count, next due time)

    def notified(self) -> None:
        """A notification arrived: something may be claimable now."""
        self._received += 1

    def forget(self) -> None:
        """Nothing is known any more (not listening, or a timeout passed): claim again."""
        self._short_as_of = None
        self._due = None

    def ticket(self) -> int:
        """Taken before looking up the due time; handed back with the answer."""
        return self._received

    def asking(self, asked: int) -> int:
        """A claim of `asked` tasks starts; its ticket, handed back with its answer."""
        if asked > 0:
            self._asking[self._received] += 1
        return self._received

    def open(self) -> bool:
        """Whether a claim may find a task that no claim in flight will take."""
        if self._short_as_of == self._received:
            return False
        if self._asking[self._received]:
            self._held_back = True
            return False
        return True

    def claimed(self, ticket: int, *, asked: int, got: int) -> bool:
        """The claim of `ticket` asked for `asked` tasks (0: none was made) and got `got`.
        True when the worker should look again: it got all it asked for, and another claim
        was held back for it meanwhile."""
        if asked <= 0:
            return False
        self._asking[ticket] -= 1
        if not self._asking[ticket]:
            del self._asking[ticket]
        if got < asked:
            self._short_as_of = ticket
            return False
        self._short_as_of = None
        again, self._held_back = self._held_back, False
        return again

    def due(self, now: dt.datetime) -> tuple[bool, dt.datetime | None]:
        """(known, the next due time): known while no notification came since it was looked
        up and it has not passed."""
        if self._due is None or self._due[0] != self._received:
            return False, None
        due = self._due[1]
        return (due is None or due > now), due

    def due_found(self, ticket: int, due: dt.datetime | None) -> None:
        """The next due time as looked up with `ticket`."""
        self._due = (ticket, due)
