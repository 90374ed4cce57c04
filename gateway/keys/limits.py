"""Per-key limits (gateway.key_limits): requests at once, requests per minute, token budgets per
day and month, the models a key may use and the day it expires; and who is an admin.

A request over a limit is turned away with a 429 that names the limit (`key_concurrency_limit`,
`key_rate_limit` or `quota_exceeded`) and says when to retry; an expired key gets 401.
"""

from __future__ import annotations

import datetime
import math
import time
from fnmatch import fnmatchcase

from gateway.base.errors import ApiError
from gateway.config.schema import Config, GatewaySettings, KeyLimit
from gateway.keys.usage import Spending, next_midnight, next_month


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
    def __init__(self, settings: GatewaySettings):
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        # Tokens spent per key: outlives reloads, seeded from the usage database at start.
        self.spending = Spending()
        self.set_limits(settings)

    def apply(self, old: Config, new: Config) -> list[str]:
        """A reloaded config (a Holder): its gateway.key_limits and admin_keys in force at once."""
        self.set_limits(new.gateway)
        return []

    def set_limits(self, settings: GatewaySettings) -> None:
        """New limits. Requests in flight stay counted; a key's rate bucket
        carries over unless its rate changed, so a reload is no way round a rate limit."""
        limits = settings.key_limits
        self._default = limits.default
        # Each named key's limit merged with the default once here, not per request.
        self._per_key = {name: limits.for_key(name) for name in limits.per_key}
        self.admin_keys = frozenset(settings.admin_keys)

    def limit_of(self, key: str) -> KeyLimit:
        return self._per_key.get(key, self._default)

    def check_expiry(self, key: str) -> None:
        """401 for a key past its `expires` day (the host's calendar)."""
        expires = self.limit_of(key).expires
        if expires is not None and datetime.date.fromisoformat(self.spending.today()) > expires:
            raise ApiError(401, f"API key '{key}' expired on {expires.isoformat()}; ask for a new one.",
                           code="key_expired", type="authentication_error")

    def allows(self, key: str, model: str) -> bool:
        """Whether the key's `models` (globs) let it use the model of this name."""
        patterns = self.limit_of(key).models
        return patterns is None or any(fnmatchcase(model, p) for p in patterns)

    def admit(self, key: str, budget: bool = True) -> None:
        """Count one more request of `key` (a key's name), or raise ApiError 429 over a limit
        (its token budgets too, unless `budget` is False). Every admitted request must be paired with done(key)."""
        limit = self.limit_of(key)
        running = self._in_flight.get(key, 0)
        if limit.max_concurrent is not None and running >= limit.max_concurrent:
            raise ApiError(429, f"API key '{key}' already has {running} requests running, its limit "
                                f"(max_concurrent {limit.max_concurrent}); retry when one finishes.",
                           code="key_concurrency_limit", type="rate_limit_error", headers={"Retry-After": "1"})
        if budget and (limit.tokens_per_day is not None or limit.tokens_per_month is not None):
            self._check_budget(key, limit, running)
        self._take_token(key, limit)
        self._in_flight[key] = running + 1

    def admit_batch_line(self, key: str) -> None:
        """A line of the key's batch (docs/batch.md): its token budgets hold, but not its concurrency
        or rate, which stay its interactive use's (batch lines are bounded by the batch runner and
        admission's share of the model's slots). Not paired with done()."""
        limit = self.limit_of(key)
        if limit.tokens_per_day is not None or limit.tokens_per_month is not None:
            self._check_budget(key, limit, 0)

    def done(self, key: str) -> None:
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def _check_budget(self, key: str, limit: KeyLimit, running: int) -> None:
        """429 quota_exceeded once a budget is spent. A request's tokens are known only when it
        ends, so near the end of a budget (less left than the key's largest request so far, for
        each one running) the key's requests go one at a time: at most the one in flight overshoots."""
        spent = self.spending.of(key)
        left: int | None = None
        for budget, used, period, resets in (
                (limit.tokens_per_day, spent.day_tokens, "tokens_per_day", next_midnight),
                (limit.tokens_per_month, spent.month_tokens, "tokens_per_month", next_month)):
            if budget is None:
                continue
            if used >= budget:
                now = time.time()
                retry = max(1, math.ceil(resets(now) - now))
                raise ApiError(429, f"API key '{key}' has used {used} of its {period} budget of {budget} tokens; "
                                    f"it resets in {retry} s.",
                               code="quota_exceeded", type="rate_limit_error", headers={"Retry-After": str(retry)})
            left = budget - used if left is None else min(left, budget - used)
        if running and left is not None and (spent.largest is None or left < (running + 1) * spent.largest):
            raise ApiError(429, f"API key '{key}' has {left} tokens left of its budget, no more than its "
                                f"requests take: one request at a time until it is spent; retry when the "
                                f"one running finishes.",
                           code="key_concurrency_limit", type="rate_limit_error", headers={"Retry-After": "1"})

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
