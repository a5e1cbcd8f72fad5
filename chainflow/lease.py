"""What a worker can prove about its hold on a run, without asking the database.

The database's lease (``lease_expires``) is what other workers go by: once it passes,
any of them may claim the run.  A worker that stops being scheduled (SIGSTOP, a long
GC pause, a stalled database call) cannot see that moment pass, so it keeps its own
deadline on the monotonic clock: the lease was renewed when the renewal was *sent*
(the database's ``now`` is read after that instant, so its expiry is later still),
hence it certainly lasts until ``sent + lease``.  A safety margin is taken off for
clock skew between machines and for the time between this check and the work it
guards.  Before the deadline a step starts on a float comparison; after it, only
once the database has confirmed the run is still ours (same owner, same fence).

The deadline runs on the real monotonic clock even when the engine's ``Clock`` is a
``FakeClock``: a fake clock moves database time, not the real time a process can be
frozen for.  A test that jumps the fake clock past a lease only makes the next check
ask the database, which answers by the fake clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable

# share of the lease not relied on: skew between the clocks of workers on different
# machines (each compares its own ``time()`` with the expiry another one wrote), and
# the moments between the check and the work it admits
MARGIN = 0.2


def valid_for(lease: float) -> float:
    """How long after a renewal was sent its holder may act on it without asking."""
    return lease * (1.0 - MARGIN)


class Lease:
    """One execution's hold on its run.

    ``deadline`` is written by whoever renews (the heartbeat thread, or a check on the
    event loop) and read on the hot path without a lock: a float store is atomic, and a
    reader seeing the older value only asks the database once more."""

    __slots__ = ("run_id", "fence", "deadline", "lost", "_span", "_check", "_lock")

    def __init__(self, run_id: str, fence: int, sent: float, lease: float,
                 check: Callable[[Lease], Awaitable[bool]]) -> None:
        self.run_id = run_id
        self.fence = fence
        self._span = valid_for(lease)
        self.deadline = sent + self._span
        self.lost = False
        self._check = check  # asks the database; renews or revokes this lease
        self._lock = threading.Lock()

    def renewed(self, sent: float) -> None:
        """A renewal sent at ``sent`` (``time.monotonic()``) found the run still ours."""
        with self._lock:
            if not self.lost:
                self.deadline = max(self.deadline, sent + self._span)

    def revoke(self) -> None:
        """The run is no longer ours: every later check fails without asking."""
        with self._lock:
            self.lost = True
            self.deadline = -math.inf

    async def prove(self) -> bool:
        """True when the run is certainly still ours now; asks the database only once
        the deadline has passed (a renewal it finds is kept)."""
        if time.monotonic() < self.deadline:
            return True
        if self.lost:
            return False
        return await self._check(self)
