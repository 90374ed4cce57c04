"""Named API keys: the key file, and which key (by name) a request presents.

The key file holds one key per line, in any of three spellings:

    alice: sk-alice-0123...        # name: key
    sk-bob-4567...  # bob          # key, then its name as a comment
    sk-team-89ab...                # anonymous: named key-1, key-2, ... in file order

Blank lines and lines starting with '#' are skipped; $LOCALAI_API_KEY, when set,
is one more key named 'env'. A key's name, never the key, is what logs and
metrics show, and what `gateway.key_limits.per_key` refers to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.schema import NAME_PATTERN, ConfigError, KeyLimits
from gateway.keys.limits import KeyLimiter

log = logging.getLogger("localai.auth")

KEY_ENV = "LOCALAI_API_KEY"
ENV_KEY_NAME = "env"

_NAME = NAME_PATTERN.strip("^$")
_NAMED = re.compile(rf"^({_NAME})\s*:\s*(\S+)$")
_COMMENTED = re.compile(rf"^(\S+)\s+#\s*({_NAME})$")
_ANONYMOUS = re.compile(r"^\S+$")
_BAD_LINE = ("expected 'name: key', 'key  # name' or a key alone "
             "(names: letters, digits, '.', '_', '-'; keys: no spaces)")


def _digest(key: bytes) -> bytes:
    # Keys are looked up by their hash: the lookup's timing tells nothing about a key.
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class Keyring:
    """Key digests to key names. Empty: no key configured, the gateway is open."""

    names: dict[bytes, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.names)

    def name_of(self, key: bytes) -> str | None:
        return self.names.get(_digest(key))

    def key_names(self) -> set[str]:
        return set(self.names.values())


def parse_key_file(text: str, source: Path | str) -> list[tuple[str, str]]:
    """(name, key) pairs in file order. Raises ConfigError naming FILE:LINE for each bad line."""
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[int | None, str, str]] = []
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, int] = {}
    anonymous = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()  # also a stray CR from a file written on Windows
        if not line or line.startswith("#"):
            continue
        if m := _NAMED.match(line):
            name, key = m.groups()
        elif m := _COMMENTED.match(line):
            key, name = m.groups()
        elif _ANONYMOUS.match(line):
            anonymous += 1
            name, key = f"key-{anonymous}", line
        else:
            # Never quote the line: it may hold a key.
            problems.append((number, "", _BAD_LINE))
            continue
        if name in seen_names:
            problems.append((number, "", f"the name '{name}' is already used on line {seen_names[name]}"))
        elif key in seen_keys:
            problems.append((number, "", f"this key is already on line {seen_keys[key]}"))
        seen_names.setdefault(name, number)
        seen_keys.setdefault(key, number)
        pairs.append((name, key))
    if problems:
        raise ConfigError(source, problems)
    return pairs


def load_keyring(key_file: Path | None) -> Keyring:
    """The key file's keys and $LOCALAI_API_KEY. Raises ConfigError (bad or unreadable file)."""
    pairs: list[tuple[str, str]] = []
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            text = key_file.read_text()
        except OSError as exc:
            raise ConfigError(key_file, [(None, "", f"cannot read the API key file: {exc.strerror}")]) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("API key file is readable by others; run: chmod 600 %s", key_file)
        pairs = parse_key_file(text, key_file)
    env_key = os.environ.get(KEY_ENV, "").strip()
    if env_key:
        pairs.append((ENV_KEY_NAME, env_key))
    return Keyring({_digest(key.encode()): name for name, key in pairs})


def keyring_of(keys: list[bytes]) -> Keyring:
    """A keyring of anonymous keys (key-1, key-2, ...), for callers that hold keys, not a file."""
    return Keyring({_digest(key): f"key-{i}" for i, key in enumerate(keys, start=1)})


class Access:
    """What the auth check and the per-key limits read; swapped in place on reload."""

    def __init__(self, keyring: Keyring, limits: KeyLimits):
        self.keyring = keyring
        self.limiter = KeyLimiter(limits)
