"""Where models sit and which may be resident together: the one place cards' budgets are reckoned.

Each managed model takes its `gpu_memory_utilization` share of every card it is pinned to
(its CUDA_VISIBLE_DEVICES). A card's budget is 1.0; a host without a GPU counts as one
pseudo-device of budget 1.0, so shares plan a CPU host the same way.

A model that sets no share gets one here, once, and every reader (vLLM's argv, `localai check`,
the lifecycle, Ansible's budget check) takes that number: alone on its card(s), vLLM's own
default 0.9; sharing a card with other load: always models, an even split of what their shares
leave of 0.9, rounded down to 0.01. Less than MIN_SHARE each is a problem naming the card.

`seat()` places every model's replicas (and the nodes of a model spanning hosts) onto
hosts and cards with room; `Residency` answers what fits together on every card of every
host. Config validation, the plan (`localai check`/`plan`, `localai up`, the units) and
the gateway's lifecycle all ask this module, so they can never disagree about what fits.

The implicit host (a config without `hosts:`) keeps the single-host rules: nothing is
pinned by the plan, a model pinned by its own env takes those cards, and an unpinned one
takes every card the models name (or the one pseudo-device when none does).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from itertools import combinations

BUDGET = 1.0
_EPSILON = 1e-9
# The pseudo-device of a CPU host, or of the implicit host when no model names a card.
EVERY = "*"
# Beyond this many on_demand models the listing of every co-resident set is skipped.
_MAX_LISTED = 12
# vLLM's gpu_memory_utilization when it is given none, and the least a model without a share of
# its own may be left: below it vLLM has no room for its weights and cache on any card.
VLLM_DEFAULT_SHARE = 0.9
MIN_SHARE = 0.05


@dataclass(frozen=True)
class HostCards:
    """A host and its cards: ("0", "1", ...), (EVERY,) on a CPU host, None on the implicit host."""

    name: str
    cards: tuple[str, ...] | None


@dataclass(frozen=True)
class Ask:
    """What one managed model asks of the hosts."""

    name: str
    share: float | None  # gpu_memory_utilization (None when unset: resolved by seat())
    on_demand: bool
    replicas: int = 1
    nodes: int = 1  # hosts one server spans
    hosts: tuple[str, ...] | None = None  # explicit: nodes hosts per replica, head first
    devices: str | None = None  # pinned by the model's own CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class Seat:
    """One process of a model on one host: node 0 is the server (or the head of a multi-node one)."""

    name: str
    replica: int
    node: int
    host: str
    cards: frozenset[str]  # the cards its share is taken from
    devices: str | None  # CUDA_VISIBLE_DEVICES to give it; None: not pinned
    share: float = 0.0  # of each of its cards: the model's own, or resolved (see the module's doc)


@dataclass(frozen=True)
class Need:
    """What one seat of a managed model takes while resident."""

    name: str
    share: float
    host: str
    cards: frozenset[str]
    on_demand: bool


def _device_ids(devices: str | None) -> frozenset[str] | None:
    if devices is None:
        return None
    return frozenset(d.strip() for d in devices.split(",") if d.strip())


def card_label(host: str, card: str, named_hosts: bool) -> str:
    """How a card is named in messages: 'host gpu1 GPU 0', or 'GPU 0' on a single-host config."""
    if not named_hosts:
        return "the card" if card == EVERY else f"GPU {card}"
    return f"host {host}" if card == EVERY else f"host {host} GPU {card}"


@dataclass(frozen=True)
class Residency:
    needs: tuple[Need, ...]
    named_hosts: bool = False  # the config has `hosts:` (messages name host and card)

    @property
    def always(self) -> list[Need]:
        return [n for n in self.needs if not n.on_demand]

    @property
    def on_demand(self) -> list[Need]:
        return [n for n in self.needs if n.on_demand]

    @property
    def always_names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.always))

    @property
    def on_demand_names(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.on_demand))

    def need(self, name: str) -> Need:
        return next(n for n in self.needs if n.name == name)

    def load(self, names: set[str] | list[str]) -> dict[tuple[str, str], float]:
        """Each (host, card)'s share in use when exactly these models are resident."""
        used: dict[tuple[str, str], float] = {}
        for n in self.needs:
            for card in n.cards:
                used.setdefault((n.host, card), 0.0)
                if n.name in names:
                    used[(n.host, card)] += n.share
        return used

    def fits(self, names: set[str] | list[str]) -> bool:
        return all(v <= BUDGET + _EPSILON for v in self.load(names).values())

    def _on(self, key: tuple[str, str], names: list[str]) -> list[str]:
        """The models among these that take a share of this card."""
        return list(dict.fromkeys(n.name for n in self.needs if n.name in names and n.share > 0
                                  and n.host == key[0] and key[1] in n.cards))

    def _overflows(self, names: list[str]) -> list[tuple[tuple[str, str], float]]:
        """The cards over budget with these models resident: each one with named hosts; the
        fullest only on a single-host config (its cards are reported as "one card")."""
        over = [(key, used) for key, used in self.load(names).items() if used > BUDGET + _EPSILON]
        return over if self.named_hosts else sorted(over, key=lambda o: -o[1])[:1]

    def problems(self) -> list[tuple[str, str]]:
        """(model name, message) for every way this plan cannot work."""
        found: list[tuple[str, str]] = []
        always = self.always_names
        for key, used in self._overflows(always):
            on = self._on(key, always)
            where = f"on {card_label(*key, True)}" if self.named_hosts else "on one card"
            found.append((on[-1], f"gpu_memory_utilization of {', '.join(on)} (load: always) sums to "
                                  f"{used:.2f} {where}; it must be at most {BUDGET:g}"))
        if found:
            return found
        for name in self.on_demand_names:
            for key, used in self._overflows([*always, name])[:1]:
                where = f" on {card_label(*key, True)}" if self.named_hosts else ""
                beside = ", ".join(self._on(key, always)) or "none"
                found.append((name, f"{name} (load: on_demand) does not fit beside the load: always models "
                                    f"{beside}{where}: together they take {used:.2f} of one card, "
                                    f"more than {BUDGET:g}"))
        return found

    def together(self) -> list[list[str]]:
        """The largest sets of on_demand models that fit beside the always ones (for `localai check`)."""
        names = self.on_demand_names
        if len(names) > _MAX_LISTED:
            return [[n] for n in names]
        base = self.always_names
        sets: list[list[str]] = []
        for size in range(len(names), 0, -1):
            for combo in combinations(names, size):
                if self.fits([*base, *combo]) and not any(set(combo) <= set(s) for s in sets):
                    sets.append(list(combo))
        return sets


@dataclass(frozen=True)
class Seating:
    seats: tuple[Seat, ...]
    residency: Residency
    problems: tuple[tuple[str, str], ...]  # (model name, message): asks that found no room


class _Seater:
    """Places asks one seat at a time onto the card with the most room, hosts in a stable order."""

    def __init__(self, hosts: list[HostCards], asks: list[Ask]):
        self.hosts = hosts
        self.order = {h.name: i for i, h in enumerate(hosts)}
        self.named = not (len(hosts) == 1 and hosts[0].cards is None)
        self.cards: dict[str, tuple[str, ...]] = {}
        for h in hosts:
            if h.cards is not None:
                self.cards[h.name] = h.cards
            else:  # the implicit host: the cards the models name, or the pseudo-device
                named = sorted({d for a in asks for d in (_device_ids(a.devices) or ())})
                self.cards[h.name] = tuple(named) or (EVERY,)
        # Only load: always seats count against room; on_demand ones take turns (the lifecycle's job).
        self.used: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self.seats: list[Seat] = []
        self.problems: list[tuple[str, str]] = []

    def room(self, host: str, card: str) -> float:
        return BUDGET - sum(self.used[(host, card)].values())

    def _take(self, ask: Ask, replica: int, node: int, host: str, cards: frozenset[str],
              devices: str | None) -> None:
        self.seats.append(Seat(ask.name, replica, node, host, cards, devices))
        if not ask.on_demand:
            for card in cards:
                used = self.used[(host, card)]
                used[ask.name] = used.get(ask.name, 0.0) + (ask.share or 0.0)

    def _chosen(self, ask: Ask, host: str, forced: bool) -> tuple[frozenset[str], str | None] | None:
        """The cards (and CUDA_VISIBLE_DEVICES) of a seat on this host; None when it lacks room.
        A forced seat (the user chose the host, or there is only the implicit one) is taken
        even when full: the budget check then names the card."""
        # A CPU host's one pseudo-card is all there is, whatever the model's env names.
        ids = _device_ids(ask.devices) if self.cards[host] != (EVERY,) else None
        if ids or self.cards[host] == (EVERY,) or not self.named:
            cards = ids or frozenset(self.cards[host])
            roomy = cards <= set(self.cards[host]) and all(self.room(host, c) + _EPSILON >= (ask.share or 0.0)
                                                          for c in cards)
            return (cards, ask.devices if ids else None) if forced or roomy else None
        fitting = [c for c in self.cards[host] if self.room(host, c) + _EPSILON >= (ask.share or 0.0)]
        # The first card on ties, after the one fewer models sit on (those without a share take no room).
        card = max(fitting, key=lambda c: (self.room(host, c), -len(self.used[(host, c)])), default=None)
        return None if card is None else (frozenset({card}), card)

    def _shortfall(self, ask: Ask, host: str) -> str:
        pinned = _device_ids(ask.devices) if self.cards[host] != (EVERY,) else None
        if pinned and not pinned <= set(self.cards[host]):
            return f"host {host} has no GPU {', '.join(sorted(pinned - set(self.cards[host])))}"
        if pinned:
            card = min(sorted(pinned), key=lambda c: self.room(host, c))
        else:
            card = max(self.cards[host], key=lambda c: self.room(host, c))
        others = ", ".join(f"{n} {s:.2f}" for n, s in self.used[(host, card)].items())
        return (f"{card_label(host, card, True)}: {ask.name} needs {ask.share or 0.0:.2f}, "
                f"{max(self.room(host, card), 0.0):.2f} left" + (f" ({others})" if others else ""))

    def seat(self, ask: Ask) -> None:
        for replica in range(ask.replicas):
            if ask.hosts is None:
                if not self._free(ask, replica):
                    return
                continue
            for node, host in enumerate(ask.hosts[replica * ask.nodes:(replica + 1) * ask.nodes]):
                chosen = self._chosen(ask, host, forced=True)
                if chosen is None:
                    self.problems.append((ask.name, f"no room for {ask.name} on host {host}: "
                                                    + self._shortfall(ask, host)))
                else:
                    self._take(ask, replica, node, host, *chosen)

    def _free(self, ask: Ask, replica: int) -> bool:
        """Seat one replica (all its nodes) on the least loaded hosts; False (and why) when none has room."""
        taken: set[str] = set()
        for node in range(ask.nodes):
            # Spread a model's replicas over hosts first, then the host whose best card is freest.
            candidates = sorted((h for h in self.hosts if h.name not in taken), key=lambda h: (
                sum(1 for s in self.seats if s.name == ask.name and s.host == h.name),
                -max(self.room(h.name, c) for c in self.cards[h.name]),
                min(len(self.used[(h.name, c)]) for c in self.cards[h.name]), self.order[h.name]))
            for h in candidates:
                chosen = self._chosen(ask, h.name, forced=not self.named)
                if chosen is not None:
                    self._take(ask, replica, node, h.name, *chosen)
                    taken.add(h.name)
                    break
            else:
                what = f"replica {replica}" if ask.nodes == 1 else f"replica {replica} node {node}"
                lacks = "; ".join(self._shortfall(ask, h.name) for h in candidates) or "no host left"
                self.problems.append((ask.name, f"no room for {ask.name} {what}: {lacks}"))
                return False
        return True


def seat(hosts: list[HostCards], asks: list[Ask]) -> Seating:
    """Place every ask: explicit and multi-node ones first, then the largest shares, always before
    on_demand; each seat on the freest card that holds it. Deterministic: same input, same seats."""
    seater = _Seater(hosts, asks)
    index = {a.name: i for i, a in enumerate(asks)}
    for ask in sorted(asks, key=lambda a: (a.on_demand, a.hosts is None, a.nodes == 1, -(a.share or 0.0),
                                           index[a.name])):
        seater.seat(ask)
    by_config = sorted(seater.seats, key=lambda s: (index[s.name], s.replica, s.node))
    by_name = {a.name: a for a in asks}
    seats, problems = _resolve_shares(by_config, by_name, seater.named)
    needs = tuple(Need(s.name, s.share, s.host, s.cards, by_name[s.name].on_demand) for s in seats)
    return Seating(seats, Residency(needs, seater.named), tuple(seater.problems + problems))


def _resolve_shares(seats: list[Seat], asks: dict[str, Ask],
                    named: bool) -> tuple[tuple[Seat, ...], list[tuple[str, str]]]:
    """Every seat with its share: the model's own, or (unset) what its cards leave it of vLLM's 0.9."""
    given: dict[tuple[str, str], float] = defaultdict(float)
    unset: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in seats:
        share = asks[s.name].share
        for card in s.cards:
            if share is None:
                unset[(s.host, card)].append(s.name)
            elif not asks[s.name].on_demand:
                given[(s.host, card)] += share
    problems: list[tuple[str, str]] = []
    each: dict[tuple[str, str], float] = {}
    for key, names in unset.items():
        left = VLLM_DEFAULT_SHARE - given[key]
        each[key] = max(int((left / len(names) + _EPSILON) * 100) / 100, 0.0)
        # Shares over the card's budget are Residency.problems' to name; this is the room they leave.
        if each[key] < MIN_SHARE and given[key] <= BUDGET + _EPSILON:
            others = ", ".join(f"{n.name} {n.share:g}" for n in _given_on(seats, asks, key))
            problems.append((names[-1], f"{', '.join(dict.fromkeys(names))} set no gpu_memory_utilization and share "
                                        f"{card_label(*key, named)}" + (f" with {others}" if others else "")
                                        + f": {VLLM_DEFAULT_SHARE:g} less {given[key]:.2f} leaves {each[key]:.2f} "
                                        f"each, under {MIN_SHARE:g}; give each model its gpu_memory_utilization"))

    def resolved(s: Seat) -> float:
        own = asks[s.name].share
        return own if own is not None else min(each[(s.host, c)] for c in s.cards)

    return tuple(replace(s, share=resolved(s)) for s in seats), problems


def _given_on(seats: list[Seat], asks: dict[str, Ask], key: tuple[str, str]) -> list[Ask]:
    """The load: always models with a share of their own on this card."""
    return list({s.name: asks[s.name] for s in seats if s.host == key[0] and key[1] in s.cards
                 and asks[s.name].share is not None and not asks[s.name].on_demand}.values())
