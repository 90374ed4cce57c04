"""The backend's OpenAI answers as Ollama's: JSON, or an NDJSON stream of lines."""

from __future__ import annotations

import json
import time

import orjson

from .common import NDJSON, now


def _done_reason(finish: str | None) -> str:
    if finish in (None, "stop", "tool_calls"):
        return "stop"
    return finish


def _tool_calls_to_ollama(calls: list[dict]) -> list[dict]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {"arguments": args}  # the model wrote something that is not JSON; keep it visible
        out.append({"function": {"name": fn.get("name"), "arguments": args if isinstance(args, dict) else {}}})
    return out


class Reshape:
    """OpenAI chat/completion answers as Ollama /api/chat or /api/generate ones."""

    stream_content_type = NDJSON

    def __init__(self, model: str, kind: str):
        self.model = model
        self.kind = kind  # "chat" or "generate"
        self.started = time.monotonic_ns()
        self.first: int | None = None
        self.finish: str | None = None
        self.usage: dict = {}
        self.tools: dict[int, dict] = {}
        self.finished = False

    def _line(self, text: str = "", thinking: str | None = None, tool_calls: list | None = None,
              **extra) -> bytes:
        out: dict = {"model": self.model, "created_at": now()}
        if self.kind == "chat":
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        out.update(extra)
        return orjson.dumps(out) + b"\n"

    def _counts(self) -> dict:
        counts = {}
        if isinstance(self.usage.get("prompt_tokens"), int):
            counts["prompt_eval_count"] = self.usage["prompt_tokens"]
        if isinstance(self.usage.get("completion_tokens"), int):
            counts["eval_count"] = self.usage["completion_tokens"]
        return counts

    def _final(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b""
        if self.tools:
            calls = [self.tools[i] for i in sorted(self.tools)]
            out += self._line(tool_calls=_tool_calls_to_ollama(calls))
        end = time.monotonic_ns()
        first = self.first or end
        return out + self._line(
            done=True, done_reason=_done_reason(self.finish), total_duration=end - self.started,
            load_duration=0, prompt_eval_duration=first - self.started, eval_duration=end - first,
            **self._counts())

    def events(self, data: bytes) -> bytes:
        out = []
        for event in data.split(b"\n\n"):
            payload = event.strip()
            if not payload.startswith(b"data:"):
                continue
            payload = payload[5:].strip()
            if payload == b"[DONE]":
                out.append(self._final())
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):  # the backend failed mid-stream: Ollama clients raise on this line
                err = obj["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                out.append(orjson.dumps({"error": message or "the model failed mid-stream"}) + b"\n")
                self.finished = True
                continue
            if isinstance(obj.get("usage"), dict):
                self.usage = obj["usage"]
            for choice in obj.get("choices") or []:
                out.append(self._choice(choice))
        return b"".join(out)

    def _choice(self, choice: dict) -> bytes:
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        if "delta" in choice:  # chat
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            for call in delta.get("tool_calls") or []:
                slot = self.tools.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
        else:
            text, thinking = choice.get("text") or "", None
        if not text and not thinking:
            return b""
        if self.first is None:
            self.first = time.monotonic_ns()
        return self._line(text, thinking)

    def end(self) -> bytes:
        return self._final()

    def error(self, message: str) -> bytes:
        """A failure after the stream began, as the line Ollama clients raise on."""
        self.finished = True
        return orjson.dumps({"error": message}) + b"\n"

    def body(self, data: bytes) -> bytes:
        obj = orjson.loads(data)
        choice = (obj.get("choices") or [{}])[0]
        self.usage = obj.get("usage") or {}
        text, thinking, calls = "", None, None
        if "message" in choice:
            message = choice.get("message") or {}
            text = message.get("content") or ""
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if message.get("tool_calls"):
                calls = _tool_calls_to_ollama(message["tool_calls"])
        else:
            text = choice.get("text") or ""
        line = orjson.loads(self._line(text, thinking, calls))
        line.update(done=True, done_reason=_done_reason(choice.get("finish_reason")),
                    total_duration=time.monotonic_ns() - self.started, load_duration=0, **self._counts())
        return orjson.dumps(line)


class Embeddings:
    """OpenAI /v1/embeddings answers as Ollama /api/embed (or legacy /api/embeddings) ones."""

    stream_content_type = "application/json"

    def __init__(self, model: str, legacy: bool):
        self.model = model
        self.legacy = legacy
        self.started = time.monotonic_ns()

    def events(self, data: bytes) -> bytes:  # embeddings never stream
        return data

    def end(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:  # nor break off mid-stream
        return b""

    def body(self, data: bytes) -> bytes:
        obj = orjson.loads(data)
        vectors = [d.get("embedding") for d in sorted(obj.get("data") or [], key=lambda d: d.get("index", 0))]
        if self.legacy:
            return orjson.dumps({"embedding": vectors[0] if vectors else []})
        out = {"model": self.model, "embeddings": vectors,
               "total_duration": time.monotonic_ns() - self.started, "load_duration": 0}
        usage = obj.get("usage") or {}
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        return orjson.dumps(out)
