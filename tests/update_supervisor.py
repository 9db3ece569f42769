"""A test supervisor that plays systemd for a box process: the gate, the launcher, Restart=always, the path unit.

On every start it runs ``linetap update gate`` from the factory (this test
venv), then launches ``<app>/current/venv/bin/linetap ARGS`` when ``current``
names a complete version, else the factory's ``linetap ARGS`` (what the
image's launcher does); when the process exits it starts it again. Like the
image's path unit, it runs ``linetap update step`` when a file in
``<box data>/update/`` changes (``request.json``, ``switch.json``,
``healthy.json``, ``unhealthy.json``), or when a test calls :meth:`step`; the
step's restart command stops the running process, and the loop starts it
again through the gate.

A notify socket (``$NOTIFY_SOCKET``, abstract) turns the process's
``READY=1`` into an event. Tests wait on :attr:`events` (``("started",
version, pid, t)``, ``("ready", version, t)``, ``("exited", version, code,
output, t)``, ``("gate", output, seconds, cpu_seconds)``, ``("step", output, seconds,
cpu_seconds)``; ``t`` is ``time.monotonic()``) with
:meth:`wait_for`; nothing here sleeps for a set time.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from linetap.sync import appslots

FACTORY_BIN = Path(sys.executable).parent
WATCHED = (appslots.REQUEST, appslots.SWITCH, appslots.HEALTHY, appslots.UNHEALTHY)


class Supervisor:
    def __init__(self, app_root: Path, data_dir: Path, args: Sequence[str], *, config: Path | None = None,
                 env: dict[str, str] | None = None, watch_interval_s: float = 0.05) -> None:
        self.app_root, self.data_dir, self.args = Path(app_root), Path(data_dir), list(args)
        self.config = config
        self.env = {**os.environ, "LINETAP_DATA_DIR": str(data_dir), appslots.APP_ROOT_ENV: str(app_root),
                    **(env or {})}
        self.events: list[tuple] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._step_lock = threading.Lock()
        self._interval = watch_interval_s
        self._version = "factory"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"linetap-supervisor-{uuid.uuid4().hex}"
        self._notify.bind("\0" + name)
        self._notify.settimeout(0.2)
        self.env["NOTIFY_SOCKET"] = "@" + name
        self._threads = [threading.Thread(target=self._loop, name="supervisor", daemon=True),
                         threading.Thread(target=self._watch, name="path-unit", daemon=True),
                         threading.Thread(target=self._listen, name="notify", daemon=True)]

    # ------------------------------------------------------------- control --

    def start(self) -> Supervisor:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.restart()
        for thread in self._threads:
            thread.join(timeout=60)
        self._notify.close()

    def restart(self) -> None:
        """What ``systemctl restart`` does to the running process: stop it (the loop starts it again)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def step(self) -> str:
        """Run ``linetap update step`` now (the path unit does it on a file change)."""
        with self._step_lock:
            kill = f"kill -TERM $(cat {shlex.quote(str(self._pid_file()))})"
            began = time.monotonic()
            out, cpu = self._linetap("step", "--restart-command", f"sh -c {shlex.quote(kill)}")
            self._record(("step", out, time.monotonic() - began, cpu))
        return out

    def wait_for(self, predicate: Callable[[tuple], bool], *, timeout: float = 120, after: int = 0) -> tuple:
        """The first event from index ``after`` on that ``predicate`` accepts; AssertionError on timeout."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((e for e in self.events[after:] if predicate(e)), None), timeout=timeout)
        assert found is not None, f"no such event within {timeout} s; events: {self.events}"
        return found

    def started(self, version: str, *, after: int = 0, timeout: float = 120) -> tuple:
        return self.wait_for(lambda e: e[:2] == ("started", version), after=after, timeout=timeout)

    # ------------------------------------------------------------- threads --

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            out, cpu = self._linetap("gate")
            self._record(("gate", out, time.monotonic() - began, cpu))
            if self._stop.is_set():
                break
            version = appslots.read_link(self.app_root, appslots.CURRENT)
            program = (self.app_root / appslots.CURRENT / appslots.VENV / "bin" / "linetap" if version
                       else FACTORY_BIN / "linetap")
            self._proc = subprocess.Popen([str(program), *self.args], env=self.env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
            self._version = version or "factory"
            self._write_pid(self._proc.pid)
            self._record(("started", self._version, self._proc.pid, time.monotonic()))
            output, _ = self._proc.communicate()
            self._record(("exited", version or "factory", self._proc.returncode, output[-2000:], time.monotonic()))

    def _watch(self) -> None:
        folder = appslots.update_dir(self.data_dir)
        seen: dict[str, tuple] = {}
        while not self._stop.wait(self._interval):  # a path unit: look at the files' identity, act on a change
            now = {}
            for name in WATCHED:
                try:
                    st = os.stat(folder / name)
                    now[name] = (st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    pass
            if any(now.get(name) != seen.get(name) and name in now for name in WATCHED):
                self.step()
            seen = now

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._notify.recv(4096)
            except (TimeoutError, OSError):
                continue
            if b"READY=1" in message.split(b"\n"):
                self._record(("ready", self._version, time.monotonic()))

    # -------------------------------------------------------------- helpers --

    @property
    def pid(self) -> int | None:
        """The running box process's id (None between two starts)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _linetap(self, action: str, *extra: str) -> tuple[str, float]:
        """Run ``linetap update ACTION``: its output and the CPU seconds it took (its own and its children's)."""
        argv = [str(FACTORY_BIN / "linetap"), "update", action, "--app-root", str(self.app_root),
                "--data-dir", str(self.data_dir), *extra]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        with tempfile.TemporaryFile("w+") as err, subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE,
                                                                    stderr=err, text=True) as proc:
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its resource usage
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            assert proc.returncode == 0, f"update {action} failed ({proc.returncode}): {out}{err.read()}"
        return out, usage.ru_utime + usage.ru_stime

    def _pid_file(self) -> Path:
        return self.app_root.parent / f"{self.app_root.name}.supervised.pid"

    def _write_pid(self, pid: int) -> None:
        self._pid_file().write_text(str(pid))

    def _record(self, event: tuple) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
