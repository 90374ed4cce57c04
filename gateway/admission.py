"""Admission: a bounded number of requests in flight per model, FIFO waiting beyond it,
and one bound on how many may wait in total."""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import ApiError


class WaitingRoom:
    """The total number of waiting requests, across every model."""

    def __init__(self, max_waiting: int, timeout: float):
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.waiting = 0


class ModelSlots:
    def __init__(self, model: str, limit: int, room: WaitingRoom, depth_gauge=None):
        self.model = model
        self.limit = limit
        self.room = room
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._depth = depth_gauge  # a metrics gauge kept equal to the number waiting

    async def acquire(self) -> None:
        """Take a slot, waiting in line if all are busy. Raises ApiError 429/503."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        if self.room.waiting >= self.room.max_waiting:
            raise ApiError(429, f"Too many requests are waiting ({self.room.waiting}); retry shortly.",
                           code="queue_full", type="rate_limit_error", headers={"Retry-After": "1"})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.room.waiting += 1
        self._report()
        try:
            async with asyncio.timeout(self.room.timeout):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we gave up: pass it on.
                self.release()
            fut.cancel()
            if isinstance(exc, TimeoutError):
                raise ApiError(503, f"Model '{self.model}' is busy: waited {self.room.timeout:g} s for a slot.",
                               code="queue_timeout", type="server_error",
                               headers={"Retry-After": "5"}) from None
            raise
        finally:
            self.room.waiting -= 1
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass  # release() already took it off the line
            self._report()

    def _report(self) -> None:
        if self._depth is not None:
            self._depth.set(len(self._waiters))

    def release(self) -> None:
        # Hand the slot straight to the next live waiter, so nobody can jump the line.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.in_flight -= 1
