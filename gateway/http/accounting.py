"""What one request cost, and the one access log line and request metrics it leaves.

`Account` is filled along the request path (route, admission, proxy) and read
once at the end by `account()`, which the access middleware calls for every
request, whatever became of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.base.observability import Metrics

log = logging.getLogger("localai.gateway")

# Paths whose requests count in the metrics even when no model was resolved (a 401, a bad body).
API_PREFIXES = ("/v1/", "/api/")
# Probes come every few seconds from systemd, load balancers and our own UI:
# at info level they would drown the lines that matter.
PROBE_PATHS = ("/health", "/ready")
# The API family of a path, for the usage store; the rest is OpenAI's.
_FAMILIES = (("/api/", "ollama"), ("/v1/messages", "anthropic"), ("/v1/responses", "responses"))


def family_of(path: str) -> str:
    return next((family for prefix, family in _FAMILIES if path.startswith(prefix)), "openai")


def _count(value: object) -> int | None:
    """A token count a backend reported, if it is one: a backend's numbers must never break accounting."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass
class Account:
    """What one request cost; filled along the path, logged and counted at the end."""

    started: float
    model: str | None = None
    backend: str | None = None
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the upstream read from its prefix cache
    queue_wait: float | None = None
    slot_seconds: float = 0.0  # time it held one of the model's admission slots (pipeline.admitted)
    error: str | None = None  # what went wrong after a stream had begun (its status was sent as 200)
    answered: bool = False  # the stream's final event reached the client
    max_tokens_capped: int | None = None  # the context guard lowered max_tokens to this
    keep_alive_clamped: float | None = None  # gateway.max_keep_alive held the client's keep_alive to this
    # The gateway threw the request's work away (a batch line stopped for interactive requests, sent
    # again later): no usage row, so its key is neither charged nor shown an error for it.
    discarded: bool = False

    def add_usage(self, usage: object) -> None:
        """Take the counts of an OpenAI usage object, or an Anthropic / Responses one."""
        if not isinstance(usage, dict):
            return
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        if prompt is not None and "prompt_tokens" not in usage:
            # Anthropic's input_tokens leave out the prompt tokens read from or written to the cache.
            prompt += sum(_count(usage.get(k)) or 0 for k in ("cache_read_input_tokens",
                                                              "cache_creation_input_tokens"))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
        cached = _count(details.get("cached_tokens") if isinstance(details, dict)
                        else usage.get("cache_read_input_tokens"))
        if cached is not None:
            self.cached_tokens = cached
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion


def endpoint_label(request: web.Request) -> str:
    """The route a request matched, as registered ("/v1/models/{model}"): never the raw path,
    which anyone can vary to make a new metrics series per request."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def account(request: web.Request, acct: Account, status: int, rid: str, metrics: Metrics,
            key: str | None = None) -> None:
    """The request's metrics and its one JSON log line; `key` is the API key's name, never the key."""
    elapsed = time.monotonic() - acct.started
    endpoint = endpoint_label(request)
    if acct.model is not None:
        metrics.child(metrics.requests, acct.model, endpoint, str(status)).inc()
        metrics.child(metrics.latency, acct.model, endpoint).observe(elapsed)
        if acct.ttft is not None:
            metrics.child(metrics.ttft, acct.model).observe(acct.ttft)
        if acct.prompt_tokens:
            metrics.child(metrics.prompt_tokens, acct.model).inc(acct.prompt_tokens)
        if acct.completion_tokens:
            metrics.child(metrics.completion_tokens, acct.model).inc(acct.completion_tokens)
    elif request.path.startswith(API_PREFIXES):
        metrics.child(metrics.requests, "", endpoint, str(status)).inc()
    if key is not None:
        metrics.child(metrics.key_requests, key, str(status)).inc()
    fields: dict[str, object] = {
        "request_id": rid, "method": request.method, "path": request.path, "status": status,
        "latency_ms": round(elapsed * 1000, 2),
    }
    for name, value in (("key", key), ("model", acct.model), ("backend", acct.backend),
                        ("prompt_tokens", acct.prompt_tokens),
                        ("completion_tokens", acct.completion_tokens)):
        if value is not None:
            fields[name] = value
    if acct.ttft is not None:
        fields["ttft_ms"] = round(acct.ttft * 1000, 2)
    if acct.queue_wait:
        fields["queue_wait_ms"] = round(acct.queue_wait * 1000, 2)
    if acct.error:
        fields["error"] = acct.error
    if acct.max_tokens_capped is not None:
        fields["max_tokens_capped"] = acct.max_tokens_capped
    if acct.keep_alive_clamped is not None:
        fields["keep_alive_clamped"] = acct.keep_alive_clamped
    level = logging.DEBUG if request.path in PROBE_PATHS and status == 200 else logging.INFO
    log.log(level, "%s %s %s", request.method, request.path, status, extra=fields)
