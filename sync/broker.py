"""A Mosquitto broker started on loopback: for the demo, the tests and the benchmarks.

The fleet's broker is the operator's (see ``image/mosquitto/`` for the
configuration the project ships); this class only runs a private one on
127.0.0.1 at a free port, waits until it says it is running (by reading its
log, not by sleeping), and can stop, kill and restart it on the same port
with its persistence file kept, as a broker restart in the field would.
"""

from __future__ import annotations

import collections
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from linetap.firmware.errors import DeviceMissing, SyncError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
INSTALL_HINT = "install it with: apt-get install mosquitto"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def end_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to a child server unless it has ended, wait ``timeout``, then SIGKILL it and wait again."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class LocalBroker:
    """``mosquitto -c <workdir>/mosquitto.conf`` listening on 127.0.0.1.

    ``listener_lines`` go under the ``listener`` line (TLS files, ACL,
    ``require_certificate``...); without any, the listener allows anonymous
    plain-TCP clients, which is right for a loopback demo only.
    """

    def __init__(self, workdir: Path, *, port: int | None = None,
                 listener_lines: Sequence[str] = (), persistence: bool = True) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.listener_lines = list(listener_lines)
        self.persistence = persistence
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._reader: threading.Thread | None = None
        self._said_running = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._log)[-lines:])

    def config_text(self) -> str:
        lines = ["per_listener_settings true" if self.listener_lines else "",
                 f"listener {self.port} {HOST}"]
        lines += self.listener_lines or ["allow_anonymous true"]
        # Run as whoever started it: as root, Mosquitto would otherwise switch to its own
        # user, which cannot write the persistence file in a work folder.
        lines += [f"user {pwd.getpwuid(os.getuid()).pw_name}", "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                  "log_type information", "connection_messages true",
                  "max_packet_size 1048576"]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "autosave_interval 1"]
        return "\n".join(line for line in lines if line) + "\n"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self.running:
            return self
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
        if exe is None:
            raise DeviceMissing(f"the mosquitto broker is not installed; {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        ready = threading.Event()
        self._said_running = False
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, args=(self._proc, ready),
                                        name=f"mosquitto-log-{self.port}", daemon=True)
        self._reader.start()
        # Its log ends before the process does: a broker that failed can still look alive here.
        if not ready.wait(timeout) or not self._said_running or not self.running:
            self.kill()
            raise SyncError(f"mosquitto on port {self.port} did not start within {timeout:.0f} s:\n"
                            f"{self.log_tail()}")
        logger.info("broker running port=%d pid=%d", self.port, self._proc.pid)
        return self

    def _read_log(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._log.append(line)
            if line.endswith(" running"):
                self._said_running = True
                ready.set()
        ready.set()  # the process ended: wake the waiter, which then sees it is not running

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file (retained messages, sessions)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; state since the last autosave is lost, as it would be."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 10.0) -> LocalBroker:
        self.stop()
        return self.start(timeout)

    def _end(self, sig: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end_process(proc, sig, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        logger.info("broker stopped port=%d returncode=%s", self.port, proc.returncode)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
