"""Which models may be resident together: the one place the card's budget is reckoned.

Each managed model takes its `gpu_memory_utilization` share of every card it sees
(its CUDA_VISIBLE_DEVICES; unpinned models see every card). A card's budget is 1.0;
a host without a GPU counts as one device of budget 1.0, so shares plan a CPU host
the same way. Config validation, `localai check`/`plan` and the gateway all ask this
module, so they can never disagree about what fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

BUDGET = 1.0
_EPSILON = 1e-9
# All devices: the pseudo-device of a host (or config) that names none.
_EVERY = "*"
# Beyond this many on_demand models the listing of every co-resident set is skipped.
_MAX_LISTED = 12


@dataclass(frozen=True)
class Need:
    """What one managed model takes while resident."""

    name: str
    share: float  # gpu_memory_utilization
    devices: str | None  # CUDA_VISIBLE_DEVICES, None = every card
    on_demand: bool


def _device_ids(devices: str | None) -> frozenset[str] | None:
    if devices is None:
        return None
    return frozenset(d.strip() for d in devices.split(",") if d.strip())


@dataclass(frozen=True)
class Residency:
    needs: tuple[Need, ...]

    @property
    def always(self) -> list[Need]:
        return [n for n in self.needs if not n.on_demand]

    @property
    def on_demand(self) -> list[Need]:
        return [n for n in self.needs if n.on_demand]

    def need(self, name: str) -> Need:
        return next(n for n in self.needs if n.name == name)

    def _cards(self) -> frozenset[str]:
        named: set[str] = set()
        for n in self.needs:
            ids = _device_ids(n.devices)
            if ids:
                named |= ids
        return frozenset(named) or frozenset({_EVERY})

    def load(self, names: set[str] | list[str]) -> dict[str, float]:
        """Each card's share in use when exactly these models are resident."""
        cards = self._cards()
        used = dict.fromkeys(cards, 0.0)
        for n in self.needs:
            if n.name in names:
                for card in (_device_ids(n.devices) or cards):
                    used[card] = used.get(card, 0.0) + n.share
        return used

    def fits(self, names: set[str] | list[str]) -> bool:
        return all(v <= BUDGET + _EPSILON for v in self.load(names).values())

    def problems(self) -> list[tuple[str, str]]:
        """(model name, message) for every way this plan cannot work."""
        found: list[tuple[str, str]] = []
        always = [n.name for n in self.always]
        if not self.fits(always):
            worst = max(self.load(always).values())
            found.append((always[-1], f"gpu_memory_utilization of {', '.join(always)} (load: always) sums to "
                                      f"{worst:.2f} on one card; it must be at most {BUDGET:g}"))
            return found
        for n in self.on_demand:
            if not self.fits([*always, n.name]):
                worst = max(self.load([*always, n.name]).values())
                found.append((n.name, f"{n.name} (load: on_demand) does not fit beside the load: always models "
                                      f"{', '.join(always)}: together they take {worst:.2f} of one card, "
                                      f"more than {BUDGET:g}"))
        return found

    def together(self) -> list[list[str]]:
        """The largest sets of on_demand models that fit beside the always ones (for `localai check`)."""
        names = [n.name for n in self.on_demand]
        if len(names) > _MAX_LISTED:
            return [[n] for n in names]
        base = [n.name for n in self.always]
        sets: list[list[str]] = []
        for size in range(len(names), 0, -1):
            for combo in combinations(names, size):
                if self.fits([*base, *combo]) and not any(set(combo) <= set(s) for s in sets):
                    sets.append(list(combo))
        return sets
