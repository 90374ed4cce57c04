"""Per-key limits (gateway.key_limits): requests at once and requests per minute.

A request over either limit is turned away with a 429 that names the limit
(`key_concurrency_limit` or `key_rate_limit`) and says when to retry.
"""

from __future__ import annotations

import math
import time

from gateway.base.errors import ApiError
from gateway.config.schema import Config, KeyLimit, KeyLimits


class _Bucket:
    """A token bucket holding up to a minute's worth of requests, refilled continuously."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self.at = time.monotonic()

    def take(self) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.per_minute, self.tokens + (now - self.at) * self.per_minute / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute


class KeyLimiter:
    def __init__(self, limits: KeyLimits):
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self.set_limits(limits)

    def apply(self, old: Config, new: Config) -> list[str]:
        """A reloaded config (a Holder): its gateway.key_limits in force at once."""
        self.set_limits(new.gateway.key_limits)
        return []

    def set_limits(self, limits: KeyLimits) -> None:
        """New limits. Requests in flight stay counted; a key's rate bucket
        carries over unless its rate changed, so a reload is no way round a rate limit."""
        self._default = limits.default
        # Each named key's limit merged with the default once here, not per request.
        self._per_key = {name: limits.for_key(name) for name in limits.per_key}

    def admit(self, key: str) -> None:
        """Count one more request of `key` (a key's name), or raise ApiError 429 over a limit.
        Every admitted request must be paired with done(key)."""
        limit = self._per_key.get(key, self._default)
        running = self._in_flight.get(key, 0)
        if limit.max_concurrent is not None and running >= limit.max_concurrent:
            raise ApiError(429, f"API key '{key}' already has {running} requests running, its limit "
                                f"(max_concurrent {limit.max_concurrent}); retry when one finishes.",
                           code="key_concurrency_limit", type="rate_limit_error", headers={"Retry-After": "1"})
        self._take_token(key, limit)
        self._in_flight[key] = running + 1

    def done(self, key: str) -> None:
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def _take_token(self, key: str, limit: KeyLimit) -> None:
        per_minute = limit.requests_per_minute
        if per_minute is None:
            return
        bucket = self._buckets.get(key)
        if bucket is None or bucket.per_minute != per_minute:
            bucket = self._buckets[key] = _Bucket(per_minute)
        wait = bucket.take()
        if wait:
            retry = max(1, math.ceil(wait))
            raise ApiError(429, f"API key '{key}' is over its limit of {per_minute} requests per minute "
                                f"(requests_per_minute); retry in {retry} s.",
                           code="key_rate_limit", type="rate_limit_error", headers={"Retry-After": str(retry)})
