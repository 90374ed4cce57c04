"""Load and validate the localai YAML config.

One file describes the whole service: the gateway, the vLLM venv and the
models.  Every error names the file, the key path and the line, so a bad
config never starts anything half-way.

It is one module (past 400 lines) on purpose: every key a user may write,
its type, its default and the checks across entries, read top to bottom in
the order of the README's reference. The README's tables of `gateway:`,
`vllm:` and `hosts:` are made from these fields' defaults and descriptions
(reference.py): a key's meaning is written here, once.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from gateway.config.residency import Ask, HostCards, Residency, Seating, seat

DEFAULT_CONFIG_PATH = Path("/etc/localai/localai.yaml")

# Names become systemd instance names, metric labels and URL path parts.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# An alias may also be a glob (`claude-*`, `gpt-4?`) catching the names agents ask for by
# default; `*` and `?` only (no `[...]`), plus the `:`, `/` and `@` of vendors' model ids.
ALIAS_PATTERN = r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63}|[A-Za-z0-9.:/@*?_-]*[*?][A-Za-z0-9.:/@*?_-]*)$"
GLOB_CHARS = ("*", "?")

KeyPath = tuple[str | int, ...]
# Checks a layer above the config runs on it (the plan's): each returns (key path, message) problems.
Checks = tuple[Callable[["Config"], list[tuple[KeyPath, str]]], ...]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Ollama's keep_alive spelling: `10m`, `30s`, `1h`, `500ms`, or seconds; negative = never (-1)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 10m, 30s, 0 or -1")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError("must be a duration like 10m, 30s, 0 or -1")
    return -1.0 if seconds < 0 or not math.isfinite(seconds) else seconds


# Seconds; -1 means never.
Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """A config problem located at FILE:LINE and a dotted key path."""

    def __init__(self, path: Path | str, problems: list[tuple[int | None, str, str]]):
        self.path = Path(path)
        self.problems = problems  # (line, key, message)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = []
        for line, key, message in self.problems:
            where = f"{self.path}:{line}" if line else str(self.path)
            lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        return "\n".join(lines)


class _Strict(BaseModel):
    # strict: "8080" is not a port; extra=forbid: a typo'd key is an error, not a silent default.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _parse_day(value: object) -> object:
    """`expires: 2027-01-31`: YAML reads it as a date already; a string must be one too."""
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a date: write YYYY-MM-DD") from None
    return value


class KeyLimit(_Strict):
    """Limits for one API key; unset means unlimited."""

    max_concurrent: int | None = Field(None, ge=1)  # requests in flight or waiting, across models
    requests_per_minute: int | None = Field(None, ge=1)
    # Budgets of prompt + completion tokens per calendar day / month in the host's time zone.
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)
    # The model names (fnmatch globs) the key may use; None: all.
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    # The last day the key works (host's time zone); refused with 401 from the day after.
    expires: Annotated[datetime.date | None, BeforeValidator(_parse_day)] = None


class KeyLimits(_Strict):
    """`default` applies to every key; `per_key` (by the key file's names) overrides it field by field."""

    default: KeyLimit = KeyLimit()
    per_key: dict[Annotated[str, Field(pattern=NAME_PATTERN)], KeyLimit] = {}

    def for_key(self, name: str) -> KeyLimit:
        own = self.per_key.get(name)
        if own is None:
            return self.default
        # A field the key's entry sets (null too: "no limit for this key") wins over the default.
        return self.default.model_copy(update={f: getattr(own, f) for f in own.model_fields_set})


def default_usage_db() -> Path:
    """$XDG_STATE_HOME/localai/usage.db: a user's own; under systemd HOME is the service's
    state directory (the playbook sets gateway.usage_db itself, in a directory of the gateway's alone)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "localai" / "usage.db"


def default_batch_dir() -> Path:
    """$XDG_STATE_HOME/localai/batch, beside the usage database (docs/batch.md)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "localai" / "batch"


class TlsFiles(_Strict):
    """The certificate the gateway serves HTTPS with (`gateway.tls`)."""

    cert: Path = Field(description="PEM certificate chain: the host's certificate first, then any intermediates")
    key: Path = Field(description="its private key (PEM, unencrypted), readable by the gateway's user alone")


def _shown(default: str) -> dict[str, Any]:
    """The default as the README's reference shows it, where the value itself says too little."""
    return {"shown_default": default}


class GatewaySettings(_Strict):
    host: str = Field("127.0.0.1", description="address to listen on (`0.0.0.0` to serve the LAN)")
    port: int = Field(8080, ge=1, le=65535, description="port to listen on")
    tls: TlsFiles | None = Field(None, description=(
        "`{cert: FILE, key: FILE}`: serve HTTPS on `port`. Plain HTTP stays on the same port for clients on "
        "this machine only (127.0.0.1, ::1: the CLI, health checks, a local agent); any other client gets "
        "`400 https_required` over plain HTTP. A new certificate applies on restart. The playbook makes one "
        "(docs/deploy.md, \"HTTPS\")"))
    api_key_file: Path | None = Field(None, description=(
        "file with one key per line: `name: key`, `key  # name` or a bare key (named `key-1`, …), `# ` comments; "
        "keys of 16 characters or more; readable by its owner only (group or other bits are refused); syntax under "
        "[API keys](#api-keys). `$LOCALAI_API_KEY` adds one more (named `env`). The name, never the key, is in the "
        "log line (`key`) and the metrics (`localai_key_requests_total`). A file without a key (or "
        "`$LOCALAI_API_KEY` set but empty) stops the start; no key source at all = open, with a loud warning"))
    key_limits: KeyLimits = Field(KeyLimits(), json_schema_extra=_shown("none"), description=(
        "per-key limits: `default: {max_concurrent: N, requests_per_minute: M, tokens_per_day: T, "
        "tokens_per_month: T, models: [GLOB, ...], expires: YYYY-MM-DD}` for every key, "
        "`per_key: {NAME: {...}}` overriding it field by field (`null` = no limit). Over a limit: "
        "`429 key_concurrency_limit` / `key_rate_limit` / `quota_exceeded` with `Retry-After`; token budgets count "
        "prompt + completion tokens per calendar day / month in the host's time zone; a model outside `models` "
        "is answered as one that does not exist and left out of the listings; past `expires` the key gets `401 "
        "key_expired` (docs/usage.md)"))
    admin_keys: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field([], description=(
        "names of the keys that may read every key's usage (`GET /v1/usage/team`, docs/usage.md) and drain a "
        "model's replicas (`localai drain`, docs/deploy.md)"))
    usage_db: Path | None = Field(
        default_factory=default_usage_db, json_schema_extra=_shown("`$XDG_STATE_HOME/localai/usage.db`"),
        description=(
            "the usage database (SQLite): every finished request's key, model, tokens and GPU slot time, "
            "for `localai usage`, `GET /v1/usage` and the token budgets across restarts; `null` or `\"\"` "
            "records nothing (budgets then count from the start only). Its directory is made (mode 0700)"))
    usage_keep_days: int = Field(31, ge=1, description=(
        "days the usage database keeps each request's own row"))
    usage_keep_hourly_days: int = Field(400, ge=1, description=(
        "days it keeps the hourly sums (per key and model) that `localai usage` and the budgets read"))
    batch_dir: Path | None = Field(
        default_factory=default_batch_dir, json_schema_extra=_shown("`$XDG_STATE_HOME/localai/batch`"),
        description=(
            "where the Files and Batch APIs keep their files and their SQLite database of jobs and per-line "
            "progress (docs/batch.md); `null` or `\"\"` turns both APIs off. Made with mode 0700"))
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, description=(
        "largest file one upload may be (`413 file_too_large`)"))
    batch_max_key_bytes: int = Field(2 * 1024 * 1024 * 1024, ge=1024, description=(
        "bytes of files one key may hold at once, output files included (`413 storage_quota_exceeded`)"))
    batch_max_lines: int = Field(50_000, ge=1, description="requests one batch's input file may hold")
    batch_max_share: float = Field(0.5, gt=0, le=1, description=(
        "share of a model's slots batch lines may hold at once (at least one); they take a slot only while "
        "no interactive request waits for one"))
    batch_yield: Literal["idle", "share"] = Field("idle", description=(
        "`idle`: a model runs batch lines only while it has no interactive request (in flight or waiting, "
        "nor within `batch_quiet`), and an interactive request stops the lines running on it (they run again "
        "later); `share`: batch lines keep `batch_max_share` of the slots and are never stopped (a GPU whose "
        "batched decode costs interactive users little)"))
    batch_quiet: float = Field(1.0, ge=0, le=600, description=(
        "seconds a model must have had no interactive request before batch lines start on it again "
        "(`batch_yield: idle`)"))
    batch_parallel: int = Field(16, ge=1, le=1024, description=(
        "lines of one batch sent at once (admission's share above still decides how many run)"))
    batch_priority: int = Field(10, ge=1, description=(
        "vLLM's request `priority` for batch lines, sent to models whose `extra_args` set "
        "`--scheduling-policy priority` (a lower value is scheduled first; interactive requests have 0)"))
    batch_retries: int = Field(5, ge=0, le=100, description=(
        "tries after the first for a line whose answer is transient (5xx, 429, a broken connection), with "
        "exponential backoff; then the line goes to the error file"))
    max_queue: int = Field(100, ge=0, description=(
        "requests waiting for a slot, all models together; beyond it `429 queue_full`"))
    queue_timeout: float = Field(60.0, gt=0, description=(
        "seconds a request may wait for a slot before `503 queue_timeout`"))
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body limit (`413`)")
    # Slow and greedy clients (gateway/app/server.py); why these defaults: the README, after the table.
    header_timeout: float = Field(10.0, gt=0, description=(
        "seconds a client may take to send a request's line and headers, from the connection's start or the "
        "first byte of a later request; past it the gateway answers `408 header_timeout` and closes the connection"))
    body_timeout: float = Field(60.0, gt=0, description=(
        "seconds a request's body may take to arrive once its headers have (a file upload: one more second per "
        "64 KiB that arrived); past it the gateway answers `408 body_timeout` and closes the connection"))
    idle_timeout: float = Field(75.0, gt=0, description=(
        "seconds a keep-alive connection may sit idle between requests before the gateway closes it"))
    max_connections_per_client: int = Field(64, ge=0, description=(
        "open connections one client address may hold (IPv6: one /64); past it a request gets "
        "`429 too_many_connections` and its connection is closed. `0` = no limit (behind a reverse proxy, "
        "where every client shares its address)"))
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect to a backend")
    # Deadlines that tell a hung server from a long answer (gateway/http/proxy.py `_send`); why these
    # defaults: the README, after the table.
    response_headers_timeout: float = Field(30.0, gt=0, description=(
        "seconds from sending a streamed request to its backend's response headers (vLLM sends them once the "
        "prompt is tokenized, before it generates); past it the request goes to another replica, or the client "
        "gets `504 upstream_timeout`"))
    first_token_timeout: float = Field(120.0, gt=0, description=(
        "seconds from sending a streamed request to the first chunk of its answer (the prompt's prefill and any "
        "wait in vLLM's own queue); nothing reached the client yet, so past it the request goes to another "
        "replica, or the client gets `504 upstream_timeout`"))
    read_timeout: float = Field(600.0, gt=0, description=(
        "seconds a backend may stay silent mid-response (between a stream's chunks), and the most a non-streamed "
        "answer, whose headers come with the whole answer, may take; past it before anything reached the client "
        "the request goes to another replica"))
    # What the gateway reads of a backend's answer (gateway/http/proxy.py); an external upstream is not trusted.
    max_upstream_body_bytes: int = Field(64 * 1024 * 1024, ge=65536, description=(
        "largest non-streamed answer read from a backend; a larger one is `502 upstream_too_large`"))
    max_upstream_event_bytes: int = Field(8 * 1024 * 1024, ge=65536, description=(
        "largest single SSE event (a line without its end included) read from a backend's stream; a larger one "
        "ends the stream with an error event"))
    health_interval: float = Field(2.0, gt=0, description=(
        "seconds between health checks of a ready backend (1 s while loading)"))
    webui: bool = Field(True, description="serve the WebUI at `/`")
    webui_dir: Path | None = Field(None, json_schema_extra=_shown("`webui/dist` beside the package"),
                                   description="where the built WebUI lives")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description=(
        "`debug`, `info`, `warning`, `error`"))
    # Model lifecycle (load: on_demand models).
    min_residency: float = Field(30.0, ge=0, description=(
        "seconds a `load: on_demand` model stays after it came in before another may evict it (two models that "
        "can't share the card are served in turns, not thrashed)"))
    wake_timeout: float = Field(60.0, gt=0, description=(
        "seconds a wake from sleep (and its warm-up) may take before it counts as failed"))
    start_timeout: float = Field(900.0, gt=0, description=(
        "seconds a model server started on demand may take to answer"))
    max_keep_alive: Duration = Field(24 * 3600.0, json_schema_extra=_shown("`24h`"), description=(
        "the longest `keep_alive` a client may ask for (Ollama's, per request): longer, or `-1` (never unload), "
        "is held to this, with header `X-LocalAI-Keep-Alive-Clamped: SECONDS` (and `keep_alive_clamped` in the log "
        "line); `-1` here lets clients keep a model loaded forever. Each model's own `keep_alive` in this file is not "
        "held to it"))
    # gateway/routing/balancer.py; round_robin is there to compare against (bench, the real tier)
    # and for replicas that share no cache.
    balance: Literal["least_outstanding", "round_robin"] = Field("least_outstanding", description=(
        "how a model's replicas share requests: `least_outstanding` (with prefix affinity: a conversation's turns "
        "go to the replica that has its prefix cached until that replica is full: as many in flight as its "
        "max_num_seqs or max_concurrency) "
        "or `round_robin`"))


# What a host's vLLM build runs on; it decides what sleep_mode: auto means there.
Accelerator = Literal["cuda", "rocm", "cpu"]


class VllmSettings(_Strict):
    python: Path = Field(Path("/opt/localai/venv-vllm/bin/python"), description=(
        "interpreter of the venv vLLM is installed in"))
    host: str = Field("127.0.0.1", json_schema_extra=_shown("`127.0.0.1`; with `hosts:`, the host's `address`"),
                      description=(
        "address the model servers listen on; on a config with `hosts:`, a server listens on its host's "
        "`address` unless `vllm.host` is set"))
    env: dict[str, str] = Field({}, description="environment for every model server")
    accelerator: Accelerator | None = Field(None, json_schema_extra=_shown("this machine's"), description=(
        "`cuda`, `rocm` or `cpu`: the build of the vLLM at `python` (decides what `sleep_mode: auto` means); "
        "unset, `localai` looks at the vLLM installed beside `python` on the machine it runs on. With `hosts:`, "
        "each host says its own"))
    gpu_memory_gib: float | None = Field(None, gt=0, description=(
        "memory of each card (GiB, as `nvidia-smi` reports it) that the plan budgets each model's weights and KV "
        "cache against (`localai check` refuses a model whose share cannot hold one `max_model_len` sequence); "
        "unset: the budget is shown, not checked. The playbook writes the card's. With `hosts:`, each host says "
        "its own"))


# The host of a config without `hosts:`: today's single machine.
LOCAL_HOST = "local"


class Host(_Strict):
    """A machine the plan may place model servers on (in Ansible: an inventory_hostname)."""

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, `._-`; unique")
    address: str | None = Field(None, min_length=1, json_schema_extra=_shown("the name"), description=(
        "how the gateway and the other hosts reach servers on it (an address the host owns: its servers listen "
        "on it, without a key of their own — let only the gateway's host reach their ports)"))
    gpus: int = Field(1, ge=0, le=64, description="cards on it; `0`: a CPU host, one pseudo-card of budget 1.0")
    port_offset: int = Field(0, ge=0, le=60000, description=(
        "added to every model port on this host (hosts sharing one network, e.g. containers in tests)"))
    node_ip: str | None = Field(None, min_length=1, json_schema_extra=_shown("`address`"), description=(
        "private interface for the traffic between the nodes of a model spanning hosts (`VLLM_HOST_IP`; "
        "vLLM sends it unencrypted)"))
    accelerator: Accelerator | None = Field(None, json_schema_extra=_shown("`cpu` with `gpus: 0`, else `cuda`"),
                                            description=(
        "the build of vLLM on it: `cuda`, `rocm` or `cpu` (the playbook writes what it installed)"))
    gpu_memory_gib: float | None = Field(None, gt=0, json_schema_extra=_shown("`vllm.gpu_memory_gib`"),
                                         description="memory of each of its cards (GiB); see `vllm.gpu_memory_gib`")

    @property
    def reach(self) -> str:
        return self.address or self.name

    @property
    def cards(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.gpus)) or ("*",)


# Fill-in-the-middle prompt layouts of well-known code models.
FIM_TEMPLATES = {
    "qwen": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
    "deepseek": "<\uff5cfim\u2581begin\uff5c>{prefix}<\uff5cfim\u2581hole\uff5c>{suffix}<\uff5cfim\u2581end\uff5c>",
    "starcoder": "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
    "codellama": "<PRE> {prefix} <SUF>{suffix} <MID>",
}


class Preset(_Strict):
    """Default sampling parameters under a name of their own (e.g. architect, dev, po)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = None
    stop: list[str] | None = None

    def defaults(self) -> dict:
        return self.model_dump(exclude_none=True)


class _ModelBase(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    aliases: list[Annotated[str, Field(pattern=ALIAS_PATTERN, max_length=128)]] = []
    presets: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Preset] = {}
    default: bool = False
    max_concurrency: int | None = Field(None, ge=1)
    # "embed": an embedding model, served on /v1/embeddings (and /v1/score, /v1/rerank by similarity).
    # "score": a cross-encoder (reranker), served on /v1/score and /v1/rerank.
    task: Literal["generate", "embed", "score"] = "generate"
    # Chats are shortened toward this share of max_model_len (the rest is room to answer);
    # no request is refused before it overflows the window itself.
    context_limit: float = Field(0.75, gt=0, le=1)
    context_policy: Literal["truncate", "reject"] = "truncate"
    # Fill-in-the-middle for /v1/completions with `suffix`: a name from FIM_TEMPLATES
    # or a template with {prefix} and {suffix}.
    fim: str | None = None

    @field_validator("fim")
    @classmethod
    def _known_fim(cls, value: str | None) -> str | None:
        if value is None or value in FIM_TEMPLATES:
            return value
        if "{prefix}" in value and "{suffix}" in value:
            return value
        raise ValueError(f"must be one of {', '.join(FIM_TEMPLATES)} or a template with {{prefix}} and {{suffix}}")

    @property
    def fim_template(self) -> str | None:
        return FIM_TEMPLATES.get(self.fim, self.fim) if self.fim else None

    @property
    def managed(self) -> bool:
        return isinstance(self, ManagedModel)


class ManagedModel(_ModelBase):
    """A vLLM server that localai starts (as a child or a systemd unit)."""

    model: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=16)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    quantization: str | None = None
    enable_prefix_caching: bool | None = None
    # vLLM's tool-call parser for this model (e.g. hermes for Qwen2.5); enables tools with tool_choice auto.
    tool_call_parser: str | None = None
    # vLLM's reasoning parser (e.g. openai_gptoss): the model's thinking leaves as reasoning_content.
    reasoning_parser: str | None = None
    # fp8 halves the KV cache per token: twice the window or the sequences in the same memory.
    kv_cache_dtype: Literal["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = None
    extra_args: list[str] = []
    env: dict[str, str] = {}
    # always: resident for as long as the service runs. on_demand: brought in when asked
    # for, put to sleep or stopped when idle past keep_alive or when the card needs room.
    load: Literal["always", "on_demand"] = "always"
    keep_alive: Duration | None = None  # on_demand only; unset = -1, never (evicted only for room)
    # How an on_demand model leaves the card: vLLM sleep mode (level1: weights to CPU RAM,
    # level2: dropped and reloaded), or off (stopped and started). auto: level1 where the
    # vLLM build has sleep mode (CUDA), off where it does not (the CPU build).
    sleep_mode: Literal["auto", "off", "level1", "level2"] = "auto"
    # Copies of this server, each on the host and card with the most room (see residency.py).
    replicas: int = Field(1, ge=1, le=64)
    # Explicit hosts instead: one replica on each (`nodes` of them per replica, head first).
    hosts: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(None, min_length=1)
    # One server spanning this many hosts (vLLM multi-node: a head and nodes-1 workers).
    nodes: int = Field(1, ge=1, le=64)
    # torch.distributed's port on the head host (nodes > 1); default: port + 10000.
    master_port: int | None = Field(None, ge=1, le=65535)

    @property
    def replica_count(self) -> int:
        return len(self.hosts) // self.nodes if self.hosts else self.replicas

    @property
    def head_port(self) -> int:
        return self.master_port or self.port + 10000


class ExternalModel(_ModelBase):
    """An OpenAI-compatible server already running elsewhere: routed to, never started."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    served_model: str | None = None  # the upstream's model id; discovered from /v1/models when unset
    api_key_file: Path | None = None
    max_model_len: int | None = Field(None, ge=16)
    tools: bool = True  # whether the upstream accepts `tools`


def _model_kind(entry: Any) -> str:
    return "external" if isinstance(entry, dict) and "url" in entry else "managed"


ModelEntry = Annotated[
    Annotated[ManagedModel, Tag("managed")] | Annotated[ExternalModel, Tag("external")],
    Discriminator(_model_kind),
]


class Config(_Strict):
    gateway: GatewaySettings = GatewaySettings()
    vllm: VllmSettings = VllmSettings()
    # Absent: one host named "local", the machine the config is on (single-host behaviour).
    hosts: list[Host] | None = Field(None, min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    source: Path = Path("<memory>")

    @property
    def host_list(self) -> list[Host]:
        return self.hosts or [Host(name=LOCAL_HOST, address=connect_host(self.vllm.host), gpus=0,
                                   accelerator=self.vllm.accelerator)]

    def host(self, name: str) -> Host:
        return next(h for h in self.host_list if h.name == name)

    @property
    def managed_models(self) -> list[ManagedModel]:
        return [m for m in self.models if isinstance(m, ManagedModel)]

    @property
    def default_model(self) -> ManagedModel | ExternalModel:
        return next((m for m in self.models if m.default), self.models[0])

    def seating(self) -> Seating:
        """Every managed model's seats on hosts and cards (see residency.py), computed once."""
        return derived(self, "seating", self._seat)

    def _seat(self) -> Seating:
        hosts = ([HostCards(h.name, h.cards) for h in self.hosts] if self.hosts
                 else [HostCards(LOCAL_HOST, None)])
        asks = [Ask(m.name, m.gpu_memory_utilization, m.load == "on_demand", m.replica_count, m.nodes,
                    tuple(m.hosts) if m.hosts else None, {**self.vllm.env, **m.env}.get("CUDA_VISIBLE_DEVICES"))
                for m in self.managed_models]
        return seat(hosts, asks)

    def residency(self) -> Residency:
        """What each managed model takes of its cards while resident (see residency.py)."""
        return self.seating().residency

    def model(self, name: str) -> ManagedModel | ExternalModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


_DERIVED: dict[tuple[int, str], tuple[weakref.ref, Any]] = {}


_T = TypeVar("_T")


def derived(cfg: Config, what: str, compute: Callable[[], _T]) -> _T:
    """A fact computed from a config once: kept while the config lives, never compared with it."""
    key = (id(cfg), what)
    held = _DERIVED.get(key)
    if held is not None and held[0]() is cfg:
        return held[1]
    value = compute()

    def forget(_ref: weakref.ref) -> None:
        _DERIVED.pop(key, None)

    _DERIVED[key] = (weakref.ref(cfg, forget), value)
    return value


def connect_host(host: str) -> str:
    # A server bound to every address is reached over loopback.
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# --- YAML with line numbers ------------------------------------------------


def _node_lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int], dups: list) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dups.append((key_node.start_mark.line + 1, path + (key,)))
            seen.add(key)
            out[path + (key,)] = key_node.start_mark.line + 1
            _node_lines(value_node, path + (key,), out, dups)
            # The key's own line is the better pointer for scalar values too.
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out, dups)


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_for(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _expand_path(value: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~"))


def _resolve_paths(data: dict, base: Path) -> None:
    """Expand ~ and make relative paths relative to the config file, before validation."""
    gw = data.get("gateway")
    if isinstance(gw, dict):
        for key in ("usage_db", "batch_dir"):
            if gw.get(key) == "":
                gw[key] = None  # `usage_db: ""`: like null, no usage database (and so for batch_dir)
        for key in ("api_key_file", "webui_dir", "usage_db", "batch_dir"):
            if isinstance(gw.get(key), str):
                gw[key] = _expand_path(gw[key], base)
        tls = gw.get("tls")
        if isinstance(tls, dict):
            for key in ("cert", "key"):
                if isinstance(tls.get(key), str):
                    tls[key] = _expand_path(tls[key], base)
    vl = data.get("vllm")
    if isinstance(vl, dict) and isinstance(vl.get("python"), str):
        vl["python"] = _expand_path(vl["python"], base)
    for entry in data.get("models") or []:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("model"), str) and _looks_like_path(entry["model"]):
            entry["model"] = str(_expand_path(entry["model"], base))
        if isinstance(entry.get("api_key_file"), str):
            entry["api_key_file"] = _expand_path(entry["api_key_file"], base)


def _cross_checks(cfg: Config, checks: Checks) -> list[tuple[KeyPath, str]]:
    """Rules that span entries: unique names/aliases/ports, one default, GPU budget."""
    problems: list[tuple[KeyPath, str]] = []
    taken: dict[str, str] = {}
    for i, m in enumerate(cfg.models):
        keys: list[tuple[str, KeyPath]] = [(m.name, ("models", i, "name"))]
        keys += [(a, ("models", i, "aliases", j)) for j, a in enumerate(m.aliases)]
        keys += [(p, ("models", i, "presets", p)) for p in m.presets]
        for key, where in keys:
            if key in taken:
                also = f" (model '{m.name}' cannot use it too)" if taken[key] != m.name else ""
                problems.append((where, f"'{key}' is already used by model '{taken[key]}'{also}"))
            else:
                taken[key] = m.name
    defaults = [i for i, m in enumerate(cfg.models) if m.default]
    if len(defaults) > 1:
        for i in defaults[1:]:
            problems.append((("models", i, "default"),
                             f"only one model may be the default (models[{defaults[0]}] already is)"))
    elif not defaults and len(cfg.models) > 1:
        problems.append((("models",),
                         "no model has 'default: true'; mark the one that serves requests without a model"))
    host_problems = _host_checks(cfg)
    if host_problems:  # the plan can't be made from hosts that don't add up
        return problems + host_problems
    return problems + _lifecycle_checks(cfg) + [problem for check in checks for problem in check(cfg)]


def _host_checks(cfg: Config) -> list[tuple[KeyPath, str]]:
    """hosts: unique names; each model's hosts, replicas and nodes consistent with them."""
    problems: list[tuple[KeyPath, str]] = []
    names: dict[str, int] = {}
    for i, host in enumerate(cfg.hosts or []):
        if host.name in names:
            problems.append((("hosts", i, "name"), f"host '{host.name}' is already hosts[{names[host.name]}]"))
        names.setdefault(host.name, i)
    known = list(names) or [LOCAL_HOST]
    if cfg.hosts and cfg.vllm.accelerator is not None:
        problems.append((("vllm", "accelerator"), "with hosts:, each host says its own (hosts[].accelerator)"))
    for i, m in enumerate(cfg.models):
        if not isinstance(m, ManagedModel):
            continue
        at: KeyPath = ("models", i)
        for j, h in enumerate(m.hosts or []):
            if h not in known:
                problems.append((at + ("hosts", j), f"no host named '{h}' (hosts: {', '.join(known)})"
                                 if cfg.hosts else f"no host named '{h}': without a 'hosts:' list the only "
                                 f"host is '{LOCAL_HOST}'"))
        if m.hosts and len(m.hosts) % m.nodes:
            problems.append((at + ("hosts",), f"{len(m.hosts)} hosts for a model of nodes: {m.nodes}: "
                                              f"list {m.nodes} hosts (head first) per replica"))
        elif m.hosts and "replicas" in m.model_fields_set and m.replicas != m.replica_count:
            problems.append((at + ("replicas",), f"replicas: {m.replicas} but hosts lists {m.replica_count} "
                                                 f"replica{'s' if m.replica_count > 1 else ''}; "
                                                 "drop replicas or make them agree"))
        for r in range(m.replica_count if m.hosts else 0):
            chunk = m.hosts[r * m.nodes:(r + 1) * m.nodes] if m.hosts else []
            if len(set(chunk)) < len(chunk):
                problems.append((at + ("hosts",), f"the {m.nodes} nodes of one server need {m.nodes} different "
                                                  f"hosts ({', '.join(chunk)})"))
        if m.load == "on_demand" and m.nodes > 1:
            problems.append((at + ("nodes",), "a load: on_demand model runs on one host (nodes: 1)"))
        if m.nodes > len(known):
            problems.append((at + ("nodes",), f"nodes: {m.nodes} needs {m.nodes} hosts; the config has "
                                              f"{len(known)} ({', '.join(known)})"))
        if m.master_port is not None and m.nodes == 1:
            problems.append((at + ("master_port",), "applies to models with nodes > 1 only"))
    return problems


def _lifecycle_checks(cfg: Config) -> list[tuple[KeyPath, str]]:
    """keep_alive only where it means something, a share wherever models swap, and the card's budget."""
    problems: list[tuple[KeyPath, str]] = []
    index = {m.name: i for i, m in enumerate(cfg.models)}
    swapping = any(m.load == "on_demand" for m in cfg.managed_models)
    for m in cfg.managed_models:
        if m.keep_alive is not None and m.load != "on_demand":
            problems.append((("models", index[m.name], "keep_alive"),
                             "applies to 'load: on_demand' models only (a 'load: always' model stays)"))
        if swapping and m.gpu_memory_utilization is None:
            problems.append((("models", index[m.name], "gpu_memory_utilization"),
                             "gpu_memory_utilization is required when models are loaded on demand: "
                             "which of them fit together is planned by each one's share of the card"))
    return problems or [(("models", index[name], "gpu_memory_utilization"), message)
                        for name, message in cfg.residency().problems()]


def _pydantic_path(loc: tuple) -> KeyPath:
    # Union tags ('managed'/'external') are ours, not the user's keys.
    return tuple(p for p in loc if p not in ("managed", "external"))


def parse_config(text: str, source: Path | str, checks: Checks) -> Config:
    """The config in `text`, valid by its schema, its own cross-checks and then `checks` (the
    plan's: gateway.plan.validate), or a ConfigError naming each problem's file, line and key."""
    source = Path(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(source, [(line, "", f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [(1, "", "the config must be a mapping with a 'models' list")])
    lines: dict[KeyPath, int] = {}
    dups: list[tuple[int, KeyPath]] = []
    if root is not None:  # an empty file composes to no node
        _node_lines(root, (), lines, dups)
    if dups:
        raise ConfigError(source, [(line, _dotted(p), "duplicate key") for line, p in dups])
    _resolve_paths(data, source.parent if source.name != "<memory>" else Path.cwd())
    data["source"] = source
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _pydantic_path(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append((_line_for(lines, path), _dotted(path), msg))
        raise ConfigError(source, problems) from None
    cross = _cross_checks(cfg, checks)
    if cross:
        raise ConfigError(source, [(_line_for(lines, p), _dotted(p), m) for p, m in cross])
    return cfg


def load_config(path: Path | str, checks: Checks) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, [(None, "", f"cannot read config: {exc.strerror}")]) from None
    return parse_config(text, path, checks)
