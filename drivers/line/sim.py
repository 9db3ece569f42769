"""A scripted voice modem on the master side of a pty, with a stable symlink.

It ships with the package, as gpiozero's mock pins do: the symlink stands in
for udev's by-id links, so that tests and the demo run the real
:class:`~linetap.drivers.line.session.V253Line` code against it.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import shutil
import tempfile
import threading
import tty
from collections.abc import Callable
from types import TracebackType

from linetap.drivers.line.profiles import CALLER_ID_COMMANDS, PROFILES, ModemProfile
from linetap.firmware.errors import DeviceError, DeviceTimeout

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT = 3.0
_DLE = b"\x10"
_DTMF_DIGITS = "0123456789*#ABCD"
_CALL_TIMEOUT = 5.0


class _Job:
    """Work handed to the simulated modem's thread, and how it went."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.done = threading.Event()
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.work()
        except OSError as exc:
            self.error = exc
        finally:
            self.done.set()


class SimModem:
    """A scripted voice modem on the master side of a pty, for tests and the demo.

    ``path`` is a symlink to the pty's slave side, in a temporary folder,
    like udev's ``/dev/serial/by-id`` links: :meth:`unplug` removes it and
    hangs the pty up; :meth:`replug` points it at a fresh pty. The modem
    answers commands as ``profile`` says, echoing them until ``ATE0``, and
    prints caller ID only once a caller-ID command was accepted, and handset
    and DTMF events only in voice mode (``AT+FCLASS=8``), as real ones do.

    The modem runs on its own thread (``linetap-sim-modem``), which owns
    every file descriptor; the injecting methods hand it their work and
    return once it is done, so what they send is in the pty when they return.
    """

    def __init__(self, profile: ModemProfile | str = "conexant") -> None:
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise ValueError(f"unknown simulated modem profile {profile!r}; "
                                 f"known profiles: {', '.join(PROFILES)}")
            profile = PROFILES[profile]
        self.profile = profile
        self._folder = tempfile.mkdtemp(prefix="linetap-sim-modem-")
        self.path = os.path.join(self._folder, "usb-linetap-sim-modem-if00")
        self._master: int | None = None
        self._slave: int | None = None
        self._echo = True
        self._caller_id = False
        self._voice = False
        self._command_buffer = bytearray()
        self._commands: list[str] = []
        self._commands_lock = threading.Lock()
        self._work: queue.Queue[_Job] = queue.Queue()
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = threading.Event()
        self._closed = False
        self._plug()
        self._thread = threading.Thread(target=self._run, name="linetap-sim-modem", daemon=True)
        self._thread.start()

    @property
    def commands(self) -> list[str]:
        """Every command the modem received, in order (upper case)."""
        with self._commands_lock:
            return list(self._commands)

    @property
    def plugged(self) -> bool:
        """True while the link exists (between :meth:`replug` and :meth:`unplug`)."""
        return os.path.lexists(self.path)

    # -- what a test or the demo injects ----------------------------------------

    def ring(self, cadence: str | None = None) -> None:
        """One ring burst: ``RING``, or ``RING <cadence>`` for a distinctive ring (``RING 2``, ``RING B``)."""
        self._call(lambda: self._send_lines([f"RING {cadence}" if cadence else "RING"]))

    def caller_id(self, number: str | None = None, name: str | None = None, date: str | None = None,
                  time: str | None = None, *, encoding: str = "utf-8", framed: bool = False) -> None:
        """A formatted caller-ID block (``DATE``, ``TIME``, ``NMBR``, ``NAME``); ``"P"``/``"O"`` withhold.

        ``encoding``: how a name with letters beyond ASCII reaches the line
        (``"latin-1"`` or ``"utf-8"``). ``framed``: as a V.253 complex event
        report (``DLE X`` ... ``DLE .``), as voice-mode modems send it.
        """
        fields = [("DATE", date), ("TIME", time), ("NMBR", number), ("NAME", name)]
        lines = [f"{tag} = {value}" for tag, value in fields if value is not None]

        def send() -> None:
            if not self._caller_id:
                logger.debug("event=sim_caller_id_off path=%s", self.path)
            elif framed:
                body = b"".join(line.encode(encoding) + b"\r\n" for line in lines)
                self._write(_DLE + b"X" + body + _DLE + b".")
            else:
                self._send_lines(lines, encoding)
        self._call(send)

    def handset(self, off_hook: bool) -> None:
        """The local handset goes off hook (``DLE H``) or back on hook (``DLE h``)."""
        self._call(lambda: self._send_event(b"H" if off_hook else b"h"))

    def dtmf(self, digit: str) -> None:
        """A DTMF digit heard on the line (``DLE`` + digit)."""
        if len(digit) != 1 or digit not in _DTMF_DIGITS:
            raise ValueError(f"DTMF digit {digit!r} is not one of {_DTMF_DIGITS}")
        self._call(lambda: self._send_event(digit.encode("ascii")))

    def send(self, data: bytes) -> None:
        """Raw bytes from the modem, for noise and for protocol cases the helpers do not cover."""
        self._call(lambda: self._write(data))

    def unplug(self) -> None:
        """Pull the USB cable: the link disappears and the pty hangs up."""
        self._call(self._unplug)

    def replug(self) -> None:
        """Plug it back in: a new pty behind the same link, the modem in its power-on state."""
        self._call(self._plug)

    # -- life cycle ---------------------------------------------------------------

    def close(self) -> None:
        """Stop the modem's thread and remove its pty and link. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        os.write(self._wake_write, b"x")
        self._thread.join(_JOIN_TIMEOUT)
        self._unplug()
        os.close(self._wake_read)
        os.close(self._wake_write)
        shutil.rmtree(self._folder, ignore_errors=True)
        if self._thread.is_alive():
            raise DeviceError(f"the simulated modem thread did not stop within {_JOIN_TIMEOUT} s")

    def __enter__(self) -> SimModem:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the modem's thread -------------------------------------------------------

    def _call(self, work: Callable[[], None]) -> None:
        if self._closed:
            raise DeviceError("the simulated modem is closed; make a new SimModem")
        job = _Job(work)
        self._work.put(job)
        os.write(self._wake_write, b"x")
        if not job.done.wait(_CALL_TIMEOUT):
            raise DeviceTimeout(f"the simulated modem thread did not act within {_CALL_TIMEOUT} s")
        if job.error is not None:
            raise DeviceError(f"the simulated modem at {self.path} failed: {job.error}") from job.error

    def _run(self) -> None:
        while not self._stopping.is_set():
            watched = [self._wake_read] if self._master is None else [self._wake_read, self._master]
            readable, _, _ = select.select(watched, [], [], 1.0)
            if self._wake_read in readable:
                os.read(self._wake_read, 256)
                while not self._work.empty():
                    self._work.get_nowait().run()
                # The work may have swapped the pty: look again before reading it.
                continue
            if self._master is not None and self._master in readable:
                try:
                    data = os.read(self._master, 1024)
                except BlockingIOError:
                    continue
                self._received(data)

    def _plug(self) -> None:
        self._unplug()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        staging = self.path + ".new"
        os.symlink(os.ttyname(slave), staging)
        os.replace(staging, self.path)
        self._master, self._slave = master, slave
        self._echo, self._caller_id, self._voice = True, False, False
        self._command_buffer.clear()
        logger.debug("event=sim_plugged path=%s tty=%s", self.path, os.ttyname(slave))

    def _unplug(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def _received(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x0D:
                command = self._command_buffer.decode("ascii", "replace").strip()
                self._command_buffer.clear()
                self._command(command)
            elif byte != 0x0A:
                self._command_buffer.append(byte)

    def _command(self, command: str) -> None:
        if self._echo:
            self._write(command.encode("ascii", "replace") + b"\r")
        upper = command.upper()
        if not upper.startswith("AT"):
            return
        with self._commands_lock:
            self._commands.append(upper)
        answer = self.profile.answers.get(upper, ("ERROR",))
        if answer is None:
            return
        if answer[-1] == "OK":
            self._apply(upper)
        self._send_lines(answer)

    def _apply(self, command: str) -> None:
        if command in ("ATZ", "AT&F"):
            self._echo, self._caller_id, self._voice = True, False, False
        elif command in ("ATE0", "ATE1"):
            self._echo = command == "ATE1"
        elif command in CALLER_ID_COMMANDS:
            self._caller_id = True
        elif command.startswith("AT+FCLASS="):
            self._voice = command == "AT+FCLASS=8"

    def _send_lines(self, lines: list[str] | tuple[str, ...], encoding: str = "ascii") -> None:
        self._write(b"".join(b"\r\n" + line.encode(encoding) + b"\r\n" for line in lines))

    def _send_event(self, code: bytes) -> None:
        if self._voice:
            self._write(_DLE + code)
        else:
            logger.debug("event=sim_not_in_voice_mode path=%s", self.path)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            logger.debug("event=sim_unplugged_write path=%s bytes=%d", self.path, len(data))
            return
        os.write(self._master, data)
