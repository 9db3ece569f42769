"""The simulated board's control socket: another process lifts and puts down the simulated handset.

Simulation only, off by default. With ``LINETAP_SIM_CONTROL`` naming a path,
``linetap run`` on a simulated board (mock GPIO pins) binds a Unix datagram
socket there (0600, a stale socket at the path replaced) and takes one
command per datagram:

- ``hook-off``: the handset is lifted (the hook pin goes off hook);
- ``hook-on``: the handset is put down.

A datagram is at most :data:`MAX_DATAGRAM` bytes of ASCII; anything else is
refused with a reason and logged, and the socket keeps serving. When the
sender bound an address of its own, it gets one answer datagram:
``ok COMMAND`` or ``error REASON``. A real board ignores the setting (with a
warning): nothing outside the box drives its hook.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

CONTROL_ENV = "LINETAP_SIM_CONTROL"
MAX_DATAGRAM = 64
MAX_PATH = 100  # a Unix socket path is at most 107 bytes; keep a margin


class SimControl:
    """Serves ``commands`` (name → action) on a Unix datagram socket at ``path`` from a thread of its own."""

    def __init__(self, path: Path, commands: Mapping[str, Callable[[], None]]) -> None:
        self.path = Path(path)
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise ValueError(f"{CONTROL_ENV}={str(self.path)[:40]}...: a socket path is at most {MAX_PATH} "
                             "bytes; use a shorter one (e.g. under /tmp)")
        self._commands = dict(commands)
        _remove_stale(self.path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(str(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            self._socket.close()
            raise
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="linetap-sim-control", daemon=True)
        self._thread.start()
        logger.warning("simulated board control socket at %s (simulation only)", self.path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._socket.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            answer = self.handle(data)
            if sender:
                try:
                    self._socket.sendto(answer.encode(), sender)
                except OSError as exc:
                    logger.warning("sim control: answer not sent error=%s", exc.strerror)

    def handle(self, data: bytes) -> str:
        """Run one command datagram; the answer (``ok NAME`` or ``error REASON``)."""
        if len(data) > MAX_DATAGRAM:
            return self._refuse(f"a command is at most {MAX_DATAGRAM} bytes")
        try:
            name = data.decode("ascii").strip()
        except UnicodeDecodeError:
            return self._refuse("a command is ASCII text")
        action = self._commands.get(name)
        if action is None:
            return self._refuse(f"unknown command {name[:20]!r}; send one of {', '.join(sorted(self._commands))}")
        action()
        logger.info("sim control: %s", name)
        return f"ok {name}"

    @staticmethod
    def _refuse(reason: str) -> str:
        logger.warning("sim control: refused: %s", reason)
        return f"error {reason}"

    def close(self) -> None:
        self._stop.set()
        self._socket.close()
        self._thread.join(timeout=2)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _remove_stale(path: Path) -> None:
    """A socket left by an earlier run is replaced; any other file at the path is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{CONTROL_ENV}={path}: something other than a socket is there; name a free path")
    path.unlink()
