"""Named API keys: the key file, and which key (by name) a request presents.

The key file holds one key per line, in one of three spellings:

    alice: sk-alice-0123...        # name, ':', a space, key
    sk-bob-4567...  # bob          # key, a space, '#', its name
    sk-team-89ab...                # a key alone: named key-1, key-2, ... in file order

A comment is a line of '#' then a space (or nothing more); blank lines are skipped. A key has
at least MIN_KEY_LENGTH characters, no space and no ':', and does not begin with '#'; a name is
letters, digits, '.', '_', '-', and not 'env', which is $LOCALAI_API_KEY's (one more key, when
set). So no line means two things: `sk-abc:def` is refused rather than read as name `sk-abc`,
and a key beginning with '#' is refused rather than skipped as a comment. Each refusal names
FILE:LINE, never the key.

Fail closed: a key source that is configured and yields no key (a key file of comments only,
$LOCALAI_API_KEY set but empty) is an error, as is a key file others may read or change; the
gateway is open only when neither source is configured at all. A key's name, never the key,
is what logs and metrics show, and what `gateway.key_limits.per_key` refers to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.schema import NAME_PATTERN, ConfigError, GatewaySettings
from gateway.keys.limits import KeyLimiter

log = logging.getLogger("localai.auth")

KEY_ENV = "LOCALAI_API_KEY"
ENV_KEY_NAME = "env"
MIN_KEY_LENGTH = 16

_NAME = re.compile(NAME_PATTERN)
_COMMENT = re.compile(r"#+(\s.*)?")
_BAD_LINE = ("expected 'name: key', 'key  # name' or a key alone "
             "(names: letters, digits, '.', '_', '-'; keys: no spaces)")


def _digest(key: bytes) -> bytes:
    # Keys are looked up by their hash: the lookup's timing tells nothing about a key.
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class Keyring:
    """Key digests to key names. Empty: no key source configured, the gateway is open."""

    names: dict[bytes, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.names)

    def name_of(self, key: bytes) -> str | None:
        return self.names.get(_digest(key))

    def key_names(self) -> set[str]:
        return set(self.names.values())


class _BadLine(ValueError):
    pass


def _split(line: str) -> tuple[str | None, str]:
    """(name or None, key) of one line that is not blank or a comment."""
    tokens = line.split()
    if tokens[0].startswith("#"):
        raise _BadLine("a comment is '#' then a space; a key cannot begin with '#'")
    if len(tokens) == 2 and tokens[0].endswith(":"):
        name, key = tokens[0][:-1], tokens[1]
    elif len(tokens) > 1 and tokens[1].startswith("#"):
        key, name = tokens[0], line[len(tokens[0]):].strip()[1:].strip()
    elif len(tokens) == 1:
        name, key = None, tokens[0]
        if ":" in key:
            raise _BadLine("':' without a space after it: for a named key write 'name: key' (a space after "
                           "the ':'); a key cannot contain ':'")
    else:
        raise _BadLine(_BAD_LINE)
    if name is not None and not _NAME.match(name):
        raise _BadLine(_BAD_LINE)
    if name == ENV_KEY_NAME:
        raise _BadLine(f"the name '{ENV_KEY_NAME}' is ${KEY_ENV}'s; choose another")
    if key.startswith("#"):
        raise _BadLine("a key cannot begin with '#'")
    if ":" in key:
        raise _BadLine("a key cannot contain ':'")
    _check_length(key)
    return name, key


def _check_length(key: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise _BadLine(f"this key is {len(key)} characters; a key needs at least {MIN_KEY_LENGTH}")


def parse_key_file(text: str, source: Path | str) -> list[tuple[str, str]]:
    """(name, key) pairs in file order. Raises ConfigError naming FILE:LINE for each bad line."""
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[int | None, str, str]] = []
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, int] = {}
    anonymous = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()  # also a stray CR from a file written on Windows
        if not line or _COMMENT.fullmatch(line):
            continue
        try:
            name, key = _split(line)
        except _BadLine as exc:
            problems.append((number, "", str(exc)))  # never quote the line: it may hold a key
            continue
        if name is None:
            anonymous += 1
            name = f"key-{anonymous}"
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


def _read_key_file(key_file: Path) -> list[tuple[str, str]]:
    def refuse(message: str) -> ConfigError:
        return ConfigError(key_file, [(None, "", message)])

    try:
        mode = key_file.stat().st_mode
        text = key_file.read_text()
    except OSError as exc:
        raise refuse(f"cannot read the API key file: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise refuse(f"the API key file is open to others (mode {stat.S_IMODE(mode):04o}); "
                     f"run: chmod 600 {key_file}")
    pairs = parse_key_file(text, key_file)
    if not pairs:
        raise refuse("the API key file holds no key: it would leave the gateway open to anyone. "
                     "Add a key (one a line: 'name: key'), or remove gateway.api_key_file to run "
                     "without keys")
    return pairs


def load_keyring(key_file: Path | None) -> Keyring:
    """The key file's keys and $LOCALAI_API_KEY. Raises ConfigError: a bad or unreadable file,
    or a source that is configured and yields no key."""
    pairs = _read_key_file(key_file) if key_file is not None else []
    env_key = os.environ.get(KEY_ENV)
    if env_key is not None:
        env_key = env_key.strip()
        try:
            if not env_key:
                raise _BadLine("is set but empty: set a key, or unset it to take none from it")
            _check_length(env_key)
        except _BadLine as exc:
            raise ConfigError(f"${KEY_ENV}", [(None, "", str(exc))]) from None
        pairs.append((ENV_KEY_NAME, env_key))
    return Keyring({_digest(key.encode()): name for name, key in pairs})


def keyring_of(keys: list[bytes]) -> Keyring:
    """A keyring of anonymous keys (key-1, key-2, ...), for callers that hold keys, not a file."""
    return Keyring({_digest(key): f"key-{i}" for i, key in enumerate(keys, start=1)})


class Access:
    """What the auth check and the per-key limits read; swapped in place on reload."""

    def __init__(self, keyring: Keyring, settings: GatewaySettings):
        self.keyring = keyring
        self.limiter = KeyLimiter(settings)
