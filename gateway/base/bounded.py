"""Reading an upstream's answer with a limit: a server that sends more than any answer needs
(an external upstream is not trusted) costs the gateway that limit, not its memory."""

from __future__ import annotations

import aiohttp


class TooLarge(Exception):
    """An answer (or one event of a stream) went past its limit; what lies beyond was not read."""

    def __init__(self, limit: int):
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of *response* (decoded, as aiohttp hands it over), or TooLarge past *limit* bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise TooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)
