"""HTTPS for every client, plain HTTP for this machine's own, on one port (`gateway.tls`).

The gateway serves a team's LAN: keys and code must not cross it in clear text. The CLI, the
playbook's health check and an agent on the box itself keep speaking plain HTTP to
127.0.0.1 as they always did. So the one listening socket (systemd's, or our own) takes both:
each connection's first byte says which (a TLS client opens with a handshake record, 0x16;
an HTTP request with a letter). TLS goes to the gateway as HTTPS; plain HTTP goes to it only
when the client is on this machine (a loopback peer, or a peer whose address is the one it
connected to), and any other client gets `400 https_required` over plain HTTP, naming the
https:// URL, and nothing of the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from ipaddress import ip_address

from aiohttp import web

from gateway.base.errors import error_response
from gateway.config.schema import TlsFiles

log = logging.getLogger("localai.gateway")

TLS_HANDSHAKE = 0x16  # the content type of the record every TLS connection opens with


class TlsError(Exception):
    """The certificate or its key cannot be used; the message says which file and why."""


def load_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context with the certificate chain and key of `files` (TLS 1.2 or newer)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    for path in (files.cert, files.key):
        try:
            path.open("rb").close()
        except FileNotFoundError:
            raise TlsError(f"gateway.tls: {path}: no such file") from None
        except OSError as exc:
            raise TlsError(f"gateway.tls: {path}: not readable by this user ({exc.strerror})") from None
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"gateway.tls: the certificate {files.cert} and key {files.key} do not load "
                       f"({getattr(exc, 'reason', None) or exc}): PEM files, the key unencrypted and "
                       "matching the certificate") from None
    return ctx


def same_machine(peer: tuple, local: tuple) -> bool:
    """Whether a connection from `peer` to `local` (socket names) comes from this machine."""
    try:
        address = ip_address(peer[0].split("%")[0])
    except (ValueError, IndexError, AttributeError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    if address.is_loopback or (mapped is not None and mapped.is_loopback):
        return True
    # A client on this host reaching one of its LAN addresses comes from that address; no other
    # host can complete a TCP handshake with it as its source.
    return peer[0] == local[0]


async def _first_byte(sock: socket.socket) -> bytes:
    """The connection's first byte, left in the socket (b"" if the client left)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not ready.done():
            ready.set_result(data)

    loop.add_reader(sock.fileno(), readable)
    try:
        return await ready
    finally:
        loop.remove_reader(sock.fileno())


class _Listening:
    """What aiohttp's runner asks of a site's server: its sockets (runner.addresses), close()."""

    def __init__(self, sock: socket.socket, accepting: asyncio.Task) -> None:
        self.sockets = [sock]
        self._accepting = accepting

    def close(self) -> None:
        self._accepting.cancel()


class SplitSite(web.BaseSite):
    """aiohttp's site on a listening socket: HTTPS for all, plain HTTP for this machine's clients."""

    __slots__ = ("_sock", "_refuser", "_pending", "_url", "_timeout", "_per_client", "_waiting")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, ssl_context: ssl.SSLContext, *,
                 timeout: float, per_client: int, shutdown_timeout: float = 60.0) -> None:
        """timeout: how long a new connection may take to say which it speaks, and then to
        finish its TLS handshake (gateway.header_timeout); per_client: how many connections
        one address may have waiting so (gateway.max_connections_per_client; 0: no limit)."""
        super().__init__(runner, ssl_context=ssl_context, shutdown_timeout=shutdown_timeout)
        self._sock = sock
        self._timeout = timeout
        self._per_client = per_client
        self._waiting: dict[str, int] = {}  # address -> connections not handed over yet
        self._pending: set[asyncio.Task] = set()
        host, port = sock.getsockname()[:2]
        self._url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self._refuser: web.Server | None = None

    @property
    def name(self) -> str:
        return self._url

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._refuser = web.Server(self._https_required)
        self._server = _Listening(self._sock, asyncio.create_task(self._accept()))  # type: ignore[assignment]

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await super().stop()
        self._sock.close()
        if self._refuser is not None:
            await self._refuser.shutdown(1.0)

    async def _https_required(self, request: web.BaseRequest) -> web.StreamResponse:
        host = request.host.rpartition(":")[0] if request.host.rpartition(":")[2].isdigit() else request.host
        url = f"https://{host or 'this-host'}:{self._sock.getsockname()[1]}"
        response = error_response(400, f"This gateway speaks HTTPS to clients on other machines: use {url} "
                                       "(plain HTTP is for clients on its own host).", code="https_required")
        response.force_close()
        return response

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors, say: the next accept may do
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            if self._per_client and self._waiting.get(address, 0) >= self._per_client:
                conn.close()  # silent connections from one address: the bound aiohttp's handler keeps later
                continue
            self._waiting[address] = self._waiting.get(address, 0) + 1
            task = asyncio.create_task(self._hand_over(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _hand_over(self, conn: socket.socket, address: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self._timeout):
                first = await _first_byte(conn)
            if not first:
                conn.close()
                return
            if first[0] == TLS_HANDSHAKE:
                await loop.connect_accepted_socket(self._runner.server, conn, ssl=self._ssl_context,  # type: ignore[arg-type]
                                                   ssl_handshake_timeout=self._timeout)
            elif same_machine(conn.getpeername(), conn.getsockname()):
                await loop.connect_accepted_socket(self._runner.server, conn)  # type: ignore[arg-type]
            else:
                assert self._refuser is not None
                await loop.connect_accepted_socket(self._refuser, conn)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            # A silent client, a failed handshake (a client that does not trust the certificate).
            log.debug("connection dropped before its first request: %s", type(exc).__name__)
            with contextlib.suppress(OSError):
                conn.close()
        finally:
            left = self._waiting.pop(address) - 1
            if left:
                self._waiting[address] = left
