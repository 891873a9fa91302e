"""A TCP relay on 127.0.0.1 between a client under test and a real server (PostgreSQL, the S3 store), for tests
that simulate a misbehaving network: a subclass sees every chunk on its way (``forward``) and may cut it."""

from __future__ import annotations

import socket
import threading


class TcpRelay:
    """Relays every connection made to ``self.port`` to ``upstream_port`` on 127.0.0.1, a thread a direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def opened(self, client: socket.socket, server: socket.socket) -> None:
        """A new link, before anything passes on it."""

    def forward(self, data: bytes, src: socket.socket, dst: socket.socket, upstream: bool) -> bool:
        """Pass ``data`` from ``src`` on to ``dst`` (``upstream``: towards the server); False stops this direction."""
        dst.sendall(data)
        return True

    def ended(self, src: socket.socket, dst: socket.socket) -> None:
        """A direction stopped (its source closed, or ``forward`` said so): both ends are closed by default."""
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.opened(client, server)
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upstream), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if not self.forward(data, src, dst, upstream):
                    break
        except OSError:
            pass
        self.ended(src, dst)


def shut(*sockets: socket.socket) -> None:
    """End connections at once, for both sides, though other threads may be reading them."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
