"""HTTP/1.1 over a bare socket, for requests no client library would send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


# How long one exchange may take: the gateway answers these at once.
EXCHANGE_TIMEOUT_S = 10.0


async def exchange(port: int, head: bytes, rest: bytes = b"", *, half_close: bool = False) -> RawResponse | None:
    """Send *head*; then, once the server asks for the body (100 Continue), *rest*. Returns the
    final response once the server has closed the connection (send `Connection: close` with
    a well-formed request), so whatever the server does for this request, its log lines
    included, is done by then. *half_close*: end the sending side after *head*. None: the
    server closed the connection without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
            writer.write(head)
            if half_close:
                writer.write_eof()
            await writer.drain()
            while True:
                try:
                    status, headers = await _read_head(reader)
                except asyncio.IncompleteReadError:
                    return None
                if status != 100:
                    break
                writer.write(rest)  # the server has parsed the head and reads the body now
                await writer.drain()
            data = await reader.read()  # until the server closes: its work on this request is over
    finally:
        writer.close()
    length = headers.get("content-length")
    return RawResponse(status, headers, data[: int(length)] if length is not None else data)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response with a Content-Length, read off a connection that stays open."""
    status, headers = await _read_head(reader)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(status, headers, body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers
