"""Which replica of a model serves a request. Pure logic: no I/O, the clock is passed in (a replica
that stops serving cancels the requests waiting on it: `Replica.release`).

- **Least outstanding requests**: the replica with the fewest requests in flight (through this
  gateway) is the least busy one; on a tie the start of the scan rotates, so idle replicas share.
- **Prefix affinity, bounded by the replica's own capacity**: vLLM's prefix cache skips the
  prefill of a prompt's leading blocks it has seen, and only on the replica that saw them. A
  request carrying an affinity key (`affinity_key`) goes to the first replica of that key's
  preference order that is usable and not yet full (fewer requests in flight than its own slots,
  `capacity`: its max_num_seqs or max_concurrency); only a full one sends it on, to the least
  loaded. A bound relative to the average load (consistent hashing with bounded loads) splits
  conversations under light load, where one request more is already "over the average": a
  conversation that moves loses its cached prefix, while a replica below its slots runs the
  request in the same batch at little cost. The preference orders are rendezvous (highest random
  weight) orders over the replicas' addresses, one per hash bucket, computed once per replica
  set: a pick is then O(replicas), a replica that is down or full sends its keys on evenly to the
  others (a ring would pile them on one neighbour), and a replica added or removed moves only
  the keys it gains or held.
- **Draining** (an operator's, before a restart: `Backend.drain`): a draining replica gets no new
  request, those in flight on it finish; it serves again only once undrained.
- **Circuit breaker**: BREAK_AFTER failures in a row to reach a replica take it out for
  COOL_DOWN seconds; then one request (or a passed health check) may try it again (half-open):
  success closes the breaker, failure opens it for another cool-down.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from gateway.routing.states import State, move

BREAK_AFTER = 3
COOL_DOWN = 5.0
_BUCKETS = 1024  # preference orders; far more than replicas, so keys spread evenly
# A prompt string names its conversation by its first characters: enough to hold a system
# prompt's start or a file's head (a FIM prompt), few enough that the next turn, which repeats
# the whole earlier prompt, still begins with them. A prompt shorter than this is cheap to prefill
# anywhere, so a key that changes with it loses little.
PROMPT_CHARS = 256


@dataclass(eq=False)
class Replica:
    """One server of a model. `state`/`reason`: its server's, moved by set_state only (states.py)."""

    host: str  # the plan's host name ("local" without hosts:)
    url: str  # base URL, without /v1
    address: str  # host:port: in /v1/models and as the metrics' replica label (bounded by the config)
    state: State = State.LOADING
    reason: str | None = "starting"
    misses: int = 0  # health checks missed in a row
    in_flight: int = 0
    failures: int = 0  # failures in a row to reach it
    open_until: float = 0.0  # breaker: not tried again before this (monotonic clock)
    draining: bool = False  # the operator's: no new request until undrained (Backend.drain)
    # Set when a request leaves it or its state moves: what a drain's or an undrain's wait looks at.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Requests sent to it that have nothing back yet (their handlers' tasks; proxy.py `_connect`):
    # when it stops serving they are cancelled, marked in `released`, and tried on the others.
    waiting: set[asyncio.Task] = field(default_factory=set)
    released: set[asyncio.Task] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        """The health monitor's last word: it serves."""
        return self.state == State.READY

    @property
    def serving(self) -> bool:
        """Ready and not draining: it takes new requests, and its slots count in the model's."""
        return self.ready and not self.draining

    def set_state(self, state: State, reason: str | None) -> None:
        if move(self, state, reason, f"replica {self.address}"):
            self.changed.set()
            if state is not State.READY:
                self.release()

    def release(self) -> None:
        """Send the requests waiting on it to the other replicas at once: it stopped serving (a
        hung server found by its health checks, a crash), and they would wait for a deadline."""
        for task in self.waiting:
            self.released.add(task)
            task.cancel()
        self.waiting.clear()

    def was_released(self, task: asyncio.Task) -> bool:
        """Whether the task's cancellation was the replica's release (then it is taken back),
        not its client's."""
        if task not in self.released:
            return False
        self.released.discard(task)
        # A client that hung up meanwhile cancelled it too: that cancellation stands.
        return task.uncancel() == 0

    def usable(self, now: float) -> bool:
        return self.serving and (self.failures < BREAK_AFTER or now >= self.open_until)

    def breaker(self, now: float) -> str:
        if self.failures < BREAK_AFTER:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    def failed(self, now: float) -> bool:
        """A request could not reach it. True when this opened the breaker."""
        self.failures += 1
        if self.failures >= BREAK_AFTER:
            self.open_until = now + COOL_DOWN
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0


def _weight(bucket: int, address: str) -> bytes:
    return hashlib.blake2b(f"{bucket}/{address}".encode(), digest_size=8).digest()


def _order(replicas: tuple[Replica, ...], bucket: int) -> tuple[Replica, ...]:
    """The bucket's rendezvous order: highest weight first."""
    return tuple(sorted(replicas, key=lambda r: _weight(bucket, r.address), reverse=True))


class Balancer:
    def __init__(self, replicas: Sequence[Replica], policy: str = "least_outstanding", capacity: int = 1):
        self.replicas = tuple(replicas)
        self.policy = policy
        self.capacity = capacity  # requests each replica takes at once (its slots)
        # The one replica of a model without others: requests go straight to it, nothing to pick.
        self.only = self.replicas[0] if len(self.replicas) == 1 else None
        # Whether picks use an affinity key (worth computing one).
        self.affine = len(self.replicas) > 1 and policy == "least_outstanding"
        self._turn = 0  # round robin's next replica; least outstanding's first to look at
        # Rendezvous order of the replicas for each bucket, highest weight first.
        self._orders = tuple(_order(self.replicas, b) for b in range(_BUCKETS)) if len(self.replicas) > 1 else ()

    def pick(self, key: int | None, now: float, tried: Sequence[Replica] = ()) -> Replica | None:
        """The replica for the next try, None when every usable one was tried."""
        n = len(self.replicas)
        start = self._turn = (self._turn + 1) % n
        if self.policy == "round_robin":
            for i in range(n):
                r = self.replicas[(start + i) % n]
                if r.usable(now) and r not in tried:
                    return self._take(r, now)
            return None
        if key is not None:
            for r in self._orders[key % _BUCKETS]:
                if r.in_flight < self.capacity and r.usable(now) and r not in tried:
                    return self._take(r, now)
        best = None
        for i in range(n):
            r = self.replicas[(start + i) % n]
            if r.usable(now) and r not in tried and (best is None or r.in_flight < best.in_flight):
                best = r
        return None if best is None else self._take(best, now)

    def spare(self, now: float, tried: Sequence[Replica]) -> bool:
        """Whether a replica not yet tried could take the request now (nothing changes)."""
        return any(r.usable(now) and r not in tried for r in self.replicas)

    @staticmethod
    def _take(r: Replica, now: float) -> Replica:
        if r.failures >= BREAK_AFTER:
            # Half-open: this request is the trial; others wait for its outcome (or a cool-down).
            r.open_until = now + COOL_DOWN
        return r


def affinity_key(body: dict) -> int | None:
    """What names a request's conversation, hashed; None when the body has nothing to go by.

    A chat (OpenAI, Anthropic, Responses) is named by its messages up to and including the first
    user message, with Anthropic's top-level `system` or the Responses API's `instructions`: every
    later turn repeats them verbatim at the prompt's start, which is what vLLM's prefix cache
    matches (block by block from the first token). The system prompt alone would not do: an
    agent sends the same one in every conversation, so all of them would share one replica's
    cache room while the bound spilled the rest at random. Two conversations that share a system
    prompt still each find that prompt cached, once per replica.
    A prompt string (completions, FIM) is named by its first PROMPT_CHARS characters.
    """
    messages = body.get("messages")
    head: object
    if not isinstance(messages, list):
        messages = body.get("input")
    if isinstance(messages, list) and messages:
        end = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
                   len(messages) - 1)
        head = (body.get("system") or body.get("instructions"), messages[:end + 1])
    else:
        text = body.get("prompt", messages)  # completions' prompt, or the Responses API's input string
        if not isinstance(text, str):
            return None
        head = (body.get("instructions"), text[:PROMPT_CHARS])
    try:
        return zlib.crc32(orjson.dumps(head))
    except TypeError:  # validation lets some odd values through to the backend; no affinity for them
        return None
