"""systemd's side of the process, no dependency: the notify protocol (Type=notify: READY=1
and watchdog pings) and the listening socket of socket activation (LISTEN_FDS)."""

from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    """Send one message to $NOTIFY_SOCKET; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


async def watchdog() -> None:
    """Ping at half of WatchdogSec for as long as the event loop keeps running."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0 or not os.environ.get("NOTIFY_SOCKET"):
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(usec / 2_000_000)


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at this descriptor


def listen_socket() -> socket.socket | None:
    """The listening socket systemd passes (socket activation: LISTEN_FDS), or None to bind our own.

    With localai-gateway.socket holding the port, connections made while the gateway
    restarts wait in its backlog instead of being refused."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock
