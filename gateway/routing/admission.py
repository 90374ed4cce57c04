"""Admission: a bounded number of requests in flight per model, a fair line beyond it,
and one bound on how many may wait in total.

Fair: when a slot frees up it goes to the waiting key with the fewest requests in
flight on this model, and among equals to the one served longest ago (round-robin),
so one key's batch of fifty cannot starve another key's single request. Within a
key the line is first come, first served.

Batch lines (docs/batch.md) wait in a lane of their own behind all of that: a freed slot goes
to a batch line only when no interactive request waits, batch lines hold at most `low_share`
of the slots (at least one), and they are neither counted against max_queue nor timed out (the
batch runner bounds how many it sends).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque

from gateway.base.errors import ApiError


class WaitingRoom:
    """The total number of waiting requests, across every model."""

    def __init__(self, max_waiting: int, timeout: float):
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.waiting = 0


class ModelSlots:
    def __init__(self, model: str, limit: int, room: WaitingRoom, depth_gauge=None, low_share: float = 1.0):
        self.model = model
        self.limit = limit
        self.room = room
        self.low_share = low_share
        self.in_flight = 0
        self.low_in_flight = 0
        self._low_line: deque[tuple[str, asyncio.Future[None]]] = deque()  # batch lines, in arrival order
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}  # per key, in arrival order
        self._key_in_flight: dict[str, int] = {}
        self._last_served: dict[str, int] = {}  # key -> turn number of its latest slot
        self._turns = itertools.count()
        self._waiting = 0
        self._depth = depth_gauge  # a metrics gauge kept equal to the number waiting

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def low_waiting(self) -> int:
        return len(self._low_line)

    @property
    def low_limit(self) -> int:
        return max(1, math.floor(self.limit * self.low_share))

    def _low_fits(self) -> bool:
        return self.in_flight < self.limit and self.low_in_flight < self.low_limit and not self._waiting

    async def acquire_low(self, key: str = "") -> None:
        """Take a slot for a batch line: only while no interactive request waits and the batch
        lines' share is not used up; waits (without a deadline) otherwise."""
        if self._low_fits() and not self._low_line:
            self.in_flight += 1
            self.low_in_flight += 1
            self._grant(key)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (key, fut)
        self._low_line.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release_low(key)  # handed to us just as we were cancelled: pass it on
            elif entry in self._low_line:
                self._low_line.remove(entry)
            fut.cancel()
            raise

    def release_low(self, key: str = "") -> None:
        self.low_in_flight -= 1
        self.release(key)

    def _hand_on_low(self) -> bool:
        """A slot counted in in_flight to the oldest waiting batch line, within the lines' share."""
        while self._low_line and self.low_in_flight < self.low_limit:
            key, fut = self._low_line.popleft()
            if not fut.done():
                self.low_in_flight += 1
                self._grant(key)
                fut.set_result(None)
                return True
        return False

    async def acquire(self, key: str = "") -> None:
        """Take a slot for `key` (a key's name), waiting in line if all are busy. Raises ApiError 429/503."""
        if self.in_flight < self.limit and not self._waiting:
            self.in_flight += 1
            self._grant(key)
            return
        if self.room.waiting >= self.room.max_waiting:
            raise ApiError(429, f"Too many requests are waiting ({self.room.waiting}); retry shortly.",
                           code="queue_full", type="rate_limit_error", headers={"Retry-After": "1"})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._lines.setdefault(key, deque())
        line.append(fut)
        self._waiting += 1
        self.room.waiting += 1
        self._report()
        try:
            async with asyncio.timeout(self.room.timeout):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we gave up: pass it on.
                self.release(key)
            else:
                self._leave_line(key, fut)
            fut.cancel()
            if isinstance(exc, TimeoutError):
                raise ApiError(503, f"Model '{self.model}' is busy: waited {self.room.timeout:g} s for a slot.",
                               code="queue_timeout", type="server_error",
                               headers={"Retry-After": "5"}) from None
            raise
        finally:
            self.room.waiting -= 1

    def set_limit(self, limit: int) -> None:
        """A new max_concurrency (config reload): more slots serve the line at once."""
        self.limit = limit
        while self.in_flight < self.limit and (self._waiting or self._low_line):
            self.in_flight += 1
            if not (self._hand_on() or self._hand_on_low()):
                self.in_flight -= 1
                break

    def release(self, key: str = "") -> None:
        left = self._key_in_flight.get(key, 1) - 1
        if left:
            self._key_in_flight[key] = left
        else:
            self._key_in_flight.pop(key, None)
        # Hand the slot straight to the next in line, so nobody can jump it; batch lines come last.
        if not (self.in_flight <= self.limit and (self._hand_on() or self._hand_on_low())):
            self.in_flight -= 1

    def _grant(self, key: str) -> None:
        self._key_in_flight[key] = self._key_in_flight.get(key, 0) + 1
        self._last_served[key] = next(self._turns)

    def _hand_on(self) -> bool:
        """Give a slot already counted in in_flight to the fairest waiting key's oldest live request."""
        while self._lines:
            key = min(self._lines, key=lambda k: (self._key_in_flight.get(k, 0), self._last_served.get(k, -1)))
            line = self._lines[key]
            fut = line.popleft()
            if not line:
                del self._lines[key]
            self._waiting -= 1
            self._report()
            if not fut.done():  # done: cancelled or timed out, its task not yet woken to leave
                self._grant(key)
                fut.set_result(None)
                return True
        return False

    def _leave_line(self, key: str, fut: asyncio.Future[None]) -> None:
        line = self._lines.get(key)
        if line is None or fut not in line:
            return
        line.remove(fut)
        if not line:
            del self._lines[key]
        self._waiting -= 1
        self._report()

    def _report(self) -> None:
        if self._depth is not None:
            self._depth.set(self._waiting)
