"""Admission: a bounded number of requests in flight per model, a fair line beyond it,
and one bound on how many may wait in total.

Fair: when a slot frees up it goes to the waiting key with the fewest requests in
flight on this model, and among equals to the one served longest ago (round-robin),
so one key's batch of fifty cannot starve another key's single request. Within a
key the line is first come, first served.

Batch lines (docs/batch.md) wait in a lane of their own behind all of that: a freed slot goes
to a batch line only when no interactive request waits, batch lines hold at most `low_share`
of the slots (at least one), and they are neither counted against max_queue nor timed out (the
batch runner bounds how many it sends). With `yield_idle` (gateway.batch_yield idle) they take
a slot only once the model has had no interactive request in flight or waiting for `quiet`
seconds, and an interactive request arriving stops the lines in flight: each holds a future
(acquire_low's) that is set then, and its request is called off (pipeline.py). A model busy with
interactive traffic pays one counter check per request for this, and a clock read when its last
interactive request ends.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque

from gateway.base.errors import ApiError


class WaitingRoom:
    """The total number of waiting requests, across every model."""

    def __init__(self, max_waiting: int, timeout: float):
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.waiting = 0


class ModelSlots:
    def __init__(self, model: str, limit: int, room: WaitingRoom, depth_gauge=None, low_share: float = 1.0,
                 yield_idle: bool = False, quiet: float = 0.0):
        self.model = model
        self.limit = limit
        self.room = room
        self.low_share = low_share
        self.yield_idle = yield_idle
        self.quiet = quiet
        self.in_flight = 0
        self.low_in_flight = 0
        self._low_line: deque[tuple[str, asyncio.Future[None]]] = deque()  # batch lines, in arrival order
        self._stops: set[asyncio.Future[None]] = set()  # each batch line in flight's stop signal
        self._idle_from = -math.inf  # time.monotonic() when the last interactive request ended
        self._wake: asyncio.TimerHandle | None = None  # hands slots to batch lines once quiet
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

    def batch_may_start(self) -> bool:
        """Whether the model takes batch lines now (yield_idle: it has had no interactive request in
        flight or waiting for `quiet` seconds; else always). Arms the timer that hands slots to the
        waiting lines once the quiet time is over."""
        if not self.yield_idle:
            return True
        if self.in_flight > self.low_in_flight or self._waiting:
            return False  # the last interactive request's release looks again
        left = self._idle_from + self.quiet - time.monotonic()
        if left <= 0:
            return True
        if self._wake is None:
            self._wake = asyncio.get_running_loop().call_later(left, self._quiet_now)
        return False

    def set_batch(self, low_share: float, yield_idle: bool, quiet: float) -> None:
        """New batch settings (config reload); lines waiting that may now run are let in."""
        self.low_share, self.yield_idle, self.quiet = low_share, yield_idle, quiet
        self._quiet_now()

    def _quiet_now(self) -> None:
        self._wake = None
        while self._low_line and self._low_fits() and self._hand_on_low():
            self.in_flight += 1

    def _low_fits(self) -> bool:
        return self.in_flight < self.limit and self.low_in_flight < self.low_limit and not self._waiting \
            and self.batch_may_start()

    async def acquire_low(self, key: str = "") -> asyncio.Future[None]:
        """Take a slot for a batch line: only while no interactive request waits (yield_idle: is in
        flight or was, within `quiet`) and the batch lines' share is not used up; waits (without a
        deadline) otherwise. Returns the line's stop signal: set when an interactive request wants
        the model (yield_idle); hand it back to release_low."""
        if not self._low_line and self._low_fits():
            self.in_flight += 1
            self.low_in_flight += 1
            self._grant(key)
            return self._stoppable()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (key, fut)
        self._low_line.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.low_in_flight -= 1  # handed to us just as we were cancelled: pass it on
                self._free(key)
            elif entry in self._low_line:
                self._low_line.remove(entry)
            fut.cancel()
            raise
        return self._stoppable()

    def _stoppable(self) -> asyncio.Future[None]:
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stops.add(stop)
        return stop

    def release_low(self, key: str, stop: asyncio.Future[None]) -> None:
        self._stops.discard(stop)
        self.low_in_flight -= 1
        self._free(key)

    def _stop_batch_lines(self) -> None:
        for stop in self._stops:
            if not stop.done():
                stop.set_result(None)

    def _hand_on_low(self) -> bool:
        """A free slot to the oldest waiting batch line, within the lines' share (the caller checked
        the rest, _low_fits, and counts the slot in in_flight once it is handed on)."""
        while self._low_line and self.low_in_flight < self.low_limit:
            key, fut = self._low_line.popleft()
            if not fut.done():
                self.low_in_flight += 1
                self._grant(key)
                fut.set_result(None)
                return True
        return False

    async def acquire(self, key: str = "") -> None:
        """Take a slot for `key` (a key's name), waiting in line if all are busy. Raises ApiError 429/503.
        yield_idle: the batch lines running on the model are stopped first (their slots come back as
        their requests end, to this request if every slot was theirs)."""
        if self.low_in_flight and self.yield_idle:
            self._stop_batch_lines()
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
        while self.in_flight < self.limit and self._hand_on_next():
            self.in_flight += 1

    def release(self, key: str = "") -> None:
        """An interactive request's slot back."""
        if self.in_flight - self.low_in_flight == 1 and self.yield_idle:
            self._idle_from = time.monotonic()  # the model's last interactive request: quiet from now
        self._free(key)

    def _free(self, key: str) -> None:
        left = self._key_in_flight.get(key, 1) - 1
        if left:
            self._key_in_flight[key] = left
        else:
            self._key_in_flight.pop(key, None)
        # Hand the slot straight to the next in line, so nobody can jump it.
        self.in_flight -= 1
        if self.in_flight < self.limit and self._hand_on_next():
            self.in_flight += 1

    def _hand_on_next(self) -> bool:
        """A free slot (not counted in in_flight) to the next in line; batch lines come last."""
        return self._hand_on() or (bool(self._low_line) and self._low_fits() and self._hand_on_low())

    def _grant(self, key: str) -> None:
        self._key_in_flight[key] = self._key_in_flight.get(key, 0) + 1
        self._last_served[key] = next(self._turns)

    def _hand_on(self) -> bool:
        """Give a free slot to the fairest waiting key's oldest live request."""
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
