"""The listening socket of a serving command, bound first: before it creates anything or says it serves."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import NoReturn

from ..errors import MalformedInput, PacspaceError
from ..server.protocol import raise_open_file_limit

# aiohttp's own default for a site it binds itself, and what asyncio listens with again on a socket it is
# given. A larger queue does not help under a connection flood: tried at 4,096, a slowloris flood at the
# connection cap (protocol.py) filled it, and an honest connection waited behind every queued one (seconds).
BACKLOG = 128


class CannotListen(PacspaceError):
    """The address is sound but cannot be listened on now (the port is taken, or privileged)."""

    code = "cannot_listen"


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port``; MalformedInput for a host that is not this machine's.

    Raises the process's soft open-file limit first: the connection cap derives from it (server/protocol.py).
    """
    raise_open_file_limit()
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



# The environment variable that hands the listening socket to the process a standby's takeover executes.
LISTEN_FD = "PACSPACE_LISTEN_FD"


def inherited_listener() -> socket.socket | None:
    """The listening socket :func:`reexec` handed to this process, if it is the one a takeover executed."""
    fd = os.environ.pop(LISTEN_FD, None)
    if fd is None:
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)
    return sock


def reexec(sock: socket.socket | None) -> NoReturn:
    """Execute this command again, handing it the listening socket if given (connections wait in its backlog
    meanwhile, never refused: server/standby.py, step 2), else it listens anew. Does not return."""
    if sock is not None:
        sock.set_inheritable(True)
        os.environ[LISTEN_FD] = str(sock.fileno())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
