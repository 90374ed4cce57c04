"""JSON logs and Prometheus metrics: one place for what the gateway tells operators."""

from __future__ import annotations

import contextvars
import logging
import os
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pythonjsonlogger.orjson import OrjsonFormatter

from gateway.base.gpu import GpuCollector

# The request id of the request being handled; every log line made while
# handling it carries the id without each call site passing it along.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = request_id_var.get()
            if rid is not None:
                record.request_id = rid
        return True


# syslog priorities (sd-daemon(3)'s "<N>" line prefixes) of the logging levels.
_PRIORITY = {logging.DEBUG: "<7>", logging.INFO: "<6>", logging.WARNING: "<4>", logging.ERROR: "<3>",
             logging.CRITICAL: "<2>"}


class _JournalFormatter(OrjsonFormatter):
    """Each line prefixed with its syslog priority: journald strips the prefix and files the
    line under it (SyslogLevelPrefix=, on by default), so `journalctl -p err` finds errors."""

    def format(self, record: logging.LogRecord) -> str:
        return _PRIORITY.get(record.levelno, "<6>") + super().format(record)


def writes_to_journal(stream) -> bool:
    """Whether `stream` is the journal's stream socket systemd gave the unit ($JOURNAL_STREAM)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor: a StringIO in tests
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", stream=None) -> None:
    """One JSON object per line on stdout (journald and `localai up` both read it)."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    formatter = _JournalFormatter if writes_to_journal(stream) else OrjsonFormatter
    handler.setFormatter(
        # python-json-logger's orjson flavour: half the cost per line of its stdlib-json one.
        formatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
            timestamp="ts",
        )
    )
    handler.addFilter(_RequestIdFilter())
    # No line of ours prints the caller's file and line, thread or process: don't look
    # them up for every record (the logging docs' "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would duplicate our per-request line without its fields.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Latency buckets in seconds: proxy overhead sits in the first few, model time in the rest.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    """The gateway's metrics, in a registry of its own (one per app, so tests don't collide)."""

    def __init__(self) -> None:
        self._children: dict = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "localai_requests", "Requests answered, by model, endpoint and HTTP status",
            ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram(
            "localai_request_duration_seconds", "Time from request to last byte of the response",
            ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "localai_time_to_first_token_seconds", "Time from request to the first streamed chunk",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(
            "localai_inter_token_latency_seconds", "Time between streamed chunks",
            ["model"], buckets=_ITL_BUCKETS, registry=r)
        # By the key's name from the key file (never the key): as many series as named keys.
        self.key_requests = Counter(
            "localai_key_requests", "Requests answered, by API key name and HTTP status",
            ["key", "status"], registry=r)
        self.queue_depth = Gauge(
            "localai_queue_depth", "Requests waiting for a slot", ["model"], registry=r)
        self.queue_wait = Histogram(
            "localai_queue_wait_seconds", "Time a request waited for a slot",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "localai_in_flight_requests", "Requests being served by the backend", ["model"], registry=r)
        self.rejections = Counter(
            "localai_rejections", "Requests turned away before reaching a backend, by reason",
            ["model", "reason"], registry=r)
        self.prompt_tokens = Counter(
            "localai_prompt_tokens", "Prompt tokens, as the backend counted them", ["model"], registry=r)
        self.completion_tokens = Counter(
            "localai_completion_tokens", "Completion tokens, as the backend counted them", ["model"], registry=r)
        self.truncations = Counter(
            "localai_context_truncations", "Requests whose oldest turns were dropped to fit the context limit",
            ["model"], registry=r)
        self.dropped_messages = Counter(
            "localai_context_dropped_messages", "Messages dropped by the context guard", ["model"], registry=r)
        self.backend_up = Gauge(
            "localai_backend_up", "1 when the backend answers its health check", ["model"], registry=r)
        self.capacity = Gauge(
            "localai_model_capacity", "Requests the model takes at once: the sum of its ready replicas' slots",
            ["model"], registry=r)
        self.backend_ready = Gauge(
            "localai_backend_ready", "1 when the model serves requests", ["model"], registry=r)
        # Per replica, for models with more than one (label: its host:port, so as many series as
        # the config has servers); a model with one replica has only the per-model series.
        self.replica_up = Gauge(
            "localai_replica_up", "1 when the replica answers its health check", ["model", "replica"], registry=r)
        self.replica_ready = Gauge(
            "localai_replica_ready", "1 when the replica serves requests", ["model", "replica"], registry=r)
        self.replica_capacity = Gauge(
            "localai_replica_capacity", "Requests the replica adds to its model's capacity (0 while not ready)",
            ["model", "replica"], registry=r)
        self.replica_in_flight = Gauge(
            "localai_replica_in_flight_requests", "Requests being served by the replica", ["model", "replica"],
            registry=r)
        self.replica_requests = Counter(
            "localai_replica_requests", "Requests the replica took", ["model", "replica"], registry=r)
        self.replica_failures = Counter(
            "localai_replica_failures", "Requests that could not reach the replica (those that failed before "
            "any byte of the answer went to another replica)", ["model", "replica"], registry=r)
        # Model lifecycle (load: on_demand models): kinds are wake and start (in), sleep and stop (out).
        self.swaps = Counter(
            "localai_model_swaps", "Models brought onto their card or taken off it, by model and kind",
            ["model", "kind"], registry=r)
        self.swap_duration = Histogram(
            "localai_model_swap_duration_seconds", "Time a swap took, by kind (a start or wake includes "
            "the warm-up request)", ["kind"], buckets=_SWAP_BUCKETS, registry=r)
        self.resident = Gauge(
            "localai_model_resident", "1 while a load: on_demand model is resident on its card", ["model"],
            registry=r)
        # The usage store (gateway/keys/usage.py): one series each, whatever the traffic.
        self.usage_db_up = Gauge(
            "localai_usage_db_up", "1 while the usage database opens and takes writes, 0 while it fails",
            registry=r)
        self.usage_write_errors = Counter(
            "localai_usage_write_errors", "Failed writes (or opens) of the usage database", registry=r)
        self.usage_dropped = Counter(
            "localai_usage_dropped_rows", "Requests whose usage row was lost (queue full, or a failing database "
            "past its retry buffer); the requests themselves were served", registry=r)
        # By the key's name: as many series as named keys.
        self.key_tokens = Counter(
            "localai_key_tokens", "Prompt + completion tokens, by API key name (what its budgets count)",
            ["key"], registry=r)
        # localai_gpu_*, read from NVML at scrape time; nothing at all on a host without a GPU.
        r.register(GpuCollector())

    def child(self, metric, *labels: str):
        """metric.labels(*labels), looked up once: labels() takes a lock and validates on every call."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
