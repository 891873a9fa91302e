"""The listening socket of a serving command, bound first: before it creates anything or says it serves."""

from __future__ import annotations

import errno
import socket

from ..errors import MalformedInput, PacspaceError

# Connections the kernel queues before the server accepts them (capped by net.core.somaxconn). aiohttp's own
# default, 128, is filled by a flood of connections churning at the connection cap (protocol.py): past it the
# kernel drops new SYNs, and an honest client's connection waits out TCP's 1 s, then 2 s, retransmission.
BACKLOG = 4096


class CannotListen(PacspaceError):
    """The address is sound but cannot be listened on now (the port is taken, or privileged)."""

    code = "cannot_listen"


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port``; MalformedInput for a host that is not this machine's."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except (socket.gaierror, UnicodeError):
        raise MalformedInput(f"--host {host!r} is not an address or host name this machine can listen on") from None
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        where, why = f"{host}:{port}", exc.strerror or "refused"
        if exc.errno == errno.EADDRNOTAVAIL:
            raise MalformedInput(f"cannot listen on {where}: {host} is not an address of this machine") from None
        hint = {errno.EADDRINUSE: " (another server holds the port)", errno.EACCES: " (a port below 1024 needs "
                "privileges)"}.get(exc.errno or 0, "")
        raise CannotListen(f"cannot listen on {where}: {why}{hint}") from None

