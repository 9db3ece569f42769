"""A TCP relay whose connections a test can cut, as a flaky office network would."""

from __future__ import annotations

import socket
import threading

WAIT = 10.0


class Proxy:
    """A TCP relay in front of the broker whose connections a test can cut, as a network would."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="test-proxy-accept", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self._server.accept()
            except OSError:
                return
            outside = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [inside, outside]
            for a, b in ((inside, outside), (outside, inside)):
                thread = threading.Thread(target=self._pump, args=(a, b), name="test-proxy-pump", daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the other direction was cut
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cut(self) -> None:
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self._sockets.clear()

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._server.close()
        self.cut()
        for thread in [self._accepting, *self._threads]:
            thread.join(WAIT)
