"""The contract between a config reload (SIGHUP, app/reload.py) and whatever keeps state made
from the config: each such holder takes a new config or says that only a restart applies it."""

from __future__ import annotations

from typing import Protocol

from gateway.config.schema import Config


class Holder(Protocol):
    def apply(self, old: Config, new: Config) -> list[str]:
        """Put in force what of `new` this holder keeps and can change while running; answer
        what changed (from `old`) that it cannot: each item names it, as "needs restart" says."""
        ...
