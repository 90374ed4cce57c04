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


async def exchange(port: int, head: bytes, rest: bytes = b"", timeout: float = 10.0) -> RawResponse:
    """Send *head*; then, once the server asks for the body (100 Continue), *rest*. Returns the
    final response after the server closed the connection, so whatever the server does for
    this request (its log lines included) is done by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(head)
            await writer.drain()
            while True:
                status, headers = await _read_head(reader)
                if status != 100:
                    break
                writer.write(rest)  # the server has parsed the head and reads the body now
                await writer.drain()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
            await reader.read()  # until the server closes: its work on this request is over
    finally:
        writer.close()
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
