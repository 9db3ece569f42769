"""The line interface: a V.253 voice modem on a serial port, real or simulated.

:class:`V253Line` opens the modem with pyserial's ``serial_for_url`` (so a
``/dev/serial/by-id/...`` path, a pty or ``loop://`` all work), brings it into
voice mode with caller ID on, and turns what it reports into the events of
:mod:`linetap.drivers.events`. The protocol itself lives in the sans-IO
:mod:`linetap.drivers.v253`; this module only moves bytes.

The initialisation copes with the common chipsets: ``ATZ`` (``AT&F`` if
refused), ``ATE0``, ``ATI`` and ``ATI3`` for :attr:`V253Line.identity`,
caller ID with the first of ``AT+VCID=1`` (Conexant, Agere, US Robotics),
``AT#CID=1`` (Rockwell, Zoom), ``AT%CCID=1`` that answers ``OK``, then
``AT+FCLASS=8`` for voice mode, where the modem reports handset and DTMF
events. ``line_select`` adds ``AT+VLS=<value>`` for modems that report the
local handset only with a given line routing (``0`` on most: the phone on
the line, the modem listening).

A modem that goes away (USB unplugged, a driver reset) is reopened at the
same path with back-off, initialised again, and reported ``ready``;
:class:`~linetap.drivers.events.LineState` events and the :attr:`V253Line.state`
and :attr:`V253Line.reconnects` properties tell the rest of the box.

Threads: ``on_event`` is called on the line's reader thread
(``linetap-line-reader``) only, for every event, ``LineState`` changes
included; events seen while the constructor initialises the modem are
delivered once that thread starts. Consumers only enqueue the event and
return; an exception raised by ``on_event`` propagates to the reader
thread's ``threading.excepthook`` and stops the reader.

Time: command timeouts and back-off are real time, waited on the port and
the stop event, because they pace a real device; the injected clock stamps
state changes (:attr:`V253Line.state_since`).

:class:`SimModem` is a scripted modem on the master side of a pty, with a
stable symlink like udev's by-id links, so that tests and the demo run the
real :class:`V253Line` code against it.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Literal

import serial
import serial.tools.list_ports

from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineState, LineTone, Ring
from linetap.drivers.v253 import (
    Garbage,
    Response,
    Result,
    ShieldedCode,
    V253Parser,
    V253ProtocolError,
)
from linetap.firmware.clock import Clock
from linetap.firmware.errors import (
    ConfigError,
    DeviceError,
    DeviceLost,
    DeviceMissing,
    DeviceTimeout,
)

logger = logging.getLogger(__name__)

__all__ = ["CALLER_ID_COMMANDS", "PROFILES", "Backoff", "ModemProfile", "SimModem", "V253Line"]

CALLER_ID_COMMANDS = ("AT+VCID=1", "AT#CID=1", "AT%CCID=1")
"""Ways to turn on formatted caller ID, in the order tried; the first answered OK is kept."""

State = Literal["connecting", "ready", "lost"]

_READ_SLICE = 0.1  # s a read waits before the reader checks its stop event; also the caller-ID idle gap
_JOIN_TIMEOUT = 3.0
_LINE_EVENTS = (Ring, CallerId, HookChanged, DtmfDigit, LineTone)
_REFUSAL_HINTS = {
    "AT&F": "the modem refuses both ATZ and AT&F; power-cycle it",
    "ATE0": "the modem cannot turn its echo off; is this a modem at all?",
    "ATI": "the modem will not identify itself; is this a modem at all?",
    "AT+FCLASS=8": "the modem has no voice mode; linetap needs a V.253 voice modem",
}


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts to reopen a lost modem.

    ``initial`` seconds, multiplied by ``factor`` after each failed attempt up
    to ``maximum``; each wait is spread by up to ``jitter`` (a fraction) either
    way so that boxes on one power circuit do not retry in step.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError(f"reopen back-off initial={self.initial} s, maximum={self.maximum} s: "
                              f"need 0 < initial <= maximum, e.g. 0.5 and 30")
        if self.factor < 1:
            raise ConfigError(f"reopen back-off factor={self.factor} would shrink the wait; use 1 or more, e.g. 2")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"reopen back-off jitter={self.jitter} must be a fraction in [0, 1), e.g. 0.1")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The waits before each attempt, without end."""
        delay = self.initial
        while True:
            yield min(self.maximum, delay * (1 + rng.uniform(-self.jitter, self.jitter)))
            delay = min(self.maximum, delay * self.factor)


def _serial_ports() -> str:
    ports = sorted(port.device for port in serial.tools.list_ports.comports())
    return ", ".join(ports) if ports else "none"


class V253Line:
    """A V.253 voice modem: ring, caller ID, handset and DTMF events, kept alive across unplugs.

    Opens ``port`` and initialises the modem before returning. A port that
    does not exist raises :class:`DeviceMissing` listing the serial ports that
    do; a modem that does not answer a command within ``command_timeout``
    seconds raises :class:`DeviceTimeout`; a modem that refuses a command it
    must accept raises :class:`DeviceError`, one that answers out of protocol
    :class:`~linetap.drivers.v253.V253ProtocolError`. Later losses are not
    raised: they are reported as ``LineState("lost")`` and repaired.

    ``on_event`` is called on the reader thread (see the module docstring).
    """

    def __init__(self, port: str, *, clock: Clock, on_event: Callable[[object], None],
                 baudrate: int = 115200, command_timeout: float = 2.0,
                 reopen_backoff: Backoff = Backoff(), line_select: str | None = None) -> None:
        if not command_timeout > 0:
            raise ConfigError(f"command_timeout={command_timeout!r} s must be positive, e.g. 2.0")
        self._port = port
        self._baudrate = baudrate
        self._clock = clock
        self._on_event = on_event
        self._command_timeout = command_timeout
        self._backoff = reopen_backoff
        self._line_select = line_select
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._outbox: deque[object] = deque()  # delivered by the reader thread only
        self._state: State = "connecting"
        self._state_since = clock.monotonic()
        self._reconnects = 0
        self._dropped = 0
        self._closed = False
        self._reader: threading.Thread | None = None
        self.identity = ""
        """What the modem said to ATI and ATI3, for the birth message and support."""
        self.caller_id_command: str | None = None
        """The caller-ID command the modem accepted, or None if it took none of them."""

        self._publish(LineState("connecting"))
        self._serial = self._open()
        self._parser = V253Parser()
        try:
            self._initialise(self._serial, self._parser)
        except BaseException:
            self._serial.close()
            raise
        self._set_state("ready")
        self._reader = threading.Thread(target=self._run, name="linetap-line-reader", daemon=True)
        self._reader.start()

    # -- telemetry ----------------------------------------------------------

    @property
    def port(self) -> str:
        """The serial device path or pyserial URL the line opens."""
        return self._port

    @property
    def state(self) -> State:
        """``connecting``, ``ready`` or ``lost``."""
        with self._lock:
            return self._state

    @property
    def state_since(self) -> float:
        """The clock's monotonic time of the last state change."""
        with self._lock:
            return self._state_since

    @property
    def reconnects(self) -> int:
        """How many times the modem was lost and brought back."""
        with self._lock:
            return self._reconnects

    @property
    def dropped(self) -> int:
        """How many pieces of unreadable input were dropped (line noise, overlong lines)."""
        with self._lock:
            return self._dropped

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Stop the reader and close the port. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(_JOIN_TIMEOUT)
        with self._lock:
            port = self._serial
        port.close()
        if reader is not None and reader.is_alive() and reader is not threading.current_thread():
            raise DeviceError(f"the line reader for {self._port} did not stop within {_JOIN_TIMEOUT} s; "
                              f"the modem or its USB driver is hung")
        logger.info("event=line_closed port=%s", self._port)

    def __enter__(self) -> V253Line:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- opening and initialising -------------------------------------------

    def _open(self) -> serial.SerialBase:
        is_url = "://" in self._port
        if not is_url and not os.path.exists(self._port):
            raise self._missing()
        try:
            return serial.serial_for_url(self._port, baudrate=self._baudrate, timeout=_READ_SLICE,
                                         write_timeout=self._command_timeout, exclusive=not is_url)
        except ValueError as exc:
            raise ConfigError(f"serial settings for {self._port} are invalid ({exc}); "
                              f"check line.baudrate (modems take 115200)") from exc
        except serial.SerialException as exc:
            if exc.errno == errno.ENOENT:
                raise self._missing() from exc
            raise DeviceError(f"cannot open the modem at {self._port} ({exc}); check that no other program "
                              f"(ModemManager, a getty) holds it and that this user may open it "
                              f"(group dialout)") from exc

    def _missing(self) -> DeviceMissing:
        return DeviceMissing(f"the modem port {self._port} does not exist; serial ports here: "
                             f"{_serial_ports()}; check the modem's USB cable and set line.port to its "
                             f"/dev/serial/by-id/... path")

    def _initialise(self, port: serial.SerialBase, parser: V253Parser) -> None:
        reset, _ = self._command(port, parser, "ATZ", may_refuse=True)
        if reset.code != "OK":
            self._command(port, parser, "AT&F")
        self._command(port, parser, "ATE0")
        _, identity = self._command(port, parser, "ATI")
        details, more = self._command(port, parser, "ATI3", may_refuse=True)
        if details.code == "OK":
            identity += more
        caller_id_command = None
        for command in CALLER_ID_COMMANDS:
            result, _ = self._command(port, parser, command, may_refuse=True)
            if result.code == "OK":
                caller_id_command = command
                break
        if caller_id_command is None:
            logger.warning("event=caller_id_unsupported port=%s tried=%s", self._port,
                           ",".join(CALLER_ID_COMMANDS))
        self._command(port, parser, "AT+FCLASS=8")
        parser.voice = True
        if self._line_select is not None:
            self._command(port, parser, f"AT+VLS={self._line_select}")
        with self._lock:
            self.identity = " / ".join(identity)
            self.caller_id_command = caller_id_command
        logger.info("event=modem_ready port=%s identity=%r caller_id=%s", self._port,
                    self.identity, caller_id_command)

    def _command(self, port: serial.SerialBase, parser: V253Parser, command: str, *,
                 may_refuse: bool = False) -> tuple[Result, list[str]]:
        """Send one command; return its final result and the information lines before it."""
        logger.debug("event=modem_command port=%s command=%s", self._port, command)
        try:
            return self._exchange(port, parser, command, may_refuse)
        except DeviceError:
            raise  # DeviceTimeout is also an OSError (TimeoutError): keep it as it is
        except (serial.SerialException, OSError) as exc:
            raise DeviceLost(f"the modem at {self._port} went away while answering {command!r} ({exc}); "
                             f"check its USB cable and power") from exc

    def _exchange(self, port: serial.SerialBase, parser: V253Parser, command: str,
                  may_refuse: bool) -> tuple[Result, list[str]]:
        port.write(command.encode("ascii") + b"\r")
        deadline = time.monotonic() + self._command_timeout
        info: list[str] = []
        while True:
            for event in parser.events():
                if isinstance(event, Result):
                    return self._check_result(command, event, may_refuse), info
                if isinstance(event, Response):
                    if event.line.upper() != command.upper():  # the echo, until ATE0 is through
                        info.append(event.line)
                else:
                    self._handle(event)
            if self._stopping.is_set():
                raise DeviceLost(f"the line at {self._port} was closed while waiting for {command!r}")
            if time.monotonic() >= deadline:
                raise DeviceTimeout(f"the modem at {self._port} did not answer {command!r} within "
                                    f"{self._command_timeout} s; check that it is a V.253 voice modem and "
                                    f"powered, or raise command_timeout for a slow one")
            data = port.read(port.in_waiting or 1)
            if data:
                parser.receive_data(data)

    def _check_result(self, command: str, result: Result, may_refuse: bool) -> Result:
        if result.code == "OK" or (result.code == "ERROR" and may_refuse):
            return result
        if result.code == "ERROR":
            hint = _REFUSAL_HINTS.get(command, "check the modem's manual for this command")
            raise DeviceError(f"the modem at {self._port} refused {command!r} (ERROR); {hint}")
        raise V253ProtocolError(f"the modem at {self._port} answered {command!r} with {result.code!r}, "
                                f"which is not an answer to a command; another program may be using "
                                f"the port, or the modem is in a call")

    # -- the reader thread ----------------------------------------------------

    def _run(self) -> None:
        self._deliver()
        while not self._stopping.is_set():
            error = self._read()
            if error is None or self._stopping.is_set():
                break
            self._lose(error)
            self._reopen()

    def _read(self) -> Exception | None:
        """Read and deliver until stopped (None) or until the port fails (its error)."""
        with self._lock:
            port, parser = self._serial, self._parser
        while not self._stopping.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                return exc
            if data:
                parser.receive_data(data)
            else:
                parser.flush()
            for event in parser.events():
                self._handle(event)
            self._deliver()
        return None

    def _lose(self, error: Exception) -> None:
        with self._lock:
            port, parser = self._serial, self._parser
        parser.receive_data(b"")
        for event in parser.events():
            self._handle(event)
        port.close()
        logger.warning("event=line_lost port=%s error=%r", self._port, str(error))
        self._set_state("lost", f"{type(error).__name__}: {error}")
        self._deliver()

    def _reopen(self) -> None:
        for delay in self._backoff.delays(self._rng):
            if self._stopping.wait(delay):
                return
            try:
                port = self._open()
            except DeviceMissing:
                logger.debug("event=line_still_missing port=%s waited=%.2f", self._port, delay)
                continue
            except DeviceError as exc:
                logger.warning("event=line_reopen_failed port=%s error=%r", self._port, str(exc))
                continue
            self._set_state("connecting")
            self._deliver()
            parser = V253Parser()
            try:
                self._initialise(port, parser)
            except DeviceError as exc:
                port.close()
                if self._stopping.is_set():
                    return
                logger.warning("event=line_init_failed port=%s error=%r", self._port, str(exc))
                self._set_state("lost", f"{type(exc).__name__}: {exc}")
                self._deliver()
                continue
            with self._lock:
                self._serial, self._parser = port, parser
                self._reconnects += 1
            self._set_state("ready")
            self._deliver()
            return

    # -- events ---------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, _LINE_EVENTS):
            self._publish(event)
        elif isinstance(event, Garbage):
            with self._lock:
                self._dropped += 1
            logger.debug("event=line_garbage port=%s reason=%r bytes=%d", self._port, event.reason,
                         len(event.data))
        elif isinstance(event, ShieldedCode):
            logger.debug("event=modem_report port=%s code=%s meaning=%r", self._port, event.code, event.meaning)
        else:
            logger.debug("event=modem_unsolicited port=%s kind=%s", self._port, type(event).__name__)

    def _set_state(self, state: State, detail: str = "") -> None:
        with self._lock:
            self._state = state
            self._state_since = self._clock.monotonic()
        logger.info("event=line_state port=%s state=%s", self._port, state)
        self._publish(LineState(state, detail))

    def _publish(self, event: object) -> None:
        self._outbox.append(event)

    def _deliver(self) -> None:
        while self._outbox:
            self._on_event(self._outbox.popleft())


# -- the simulated modem --------------------------------------------------------


@dataclass(frozen=True)
class ModemProfile:
    """How a simulated modem answers: command (upper case) → the lines it sends back.

    A command missing from ``answers`` gets ``ERROR``; one mapped to ``None``
    is never answered, like a modem that hangs on it.
    """

    name: str
    answers: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", MappingProxyType(dict(self.answers)))


_OK = ("OK",)
_BASICS: dict[str, tuple[str, ...] | None] = {
    "ATZ": _OK, "AT&F": _OK, "ATE0": _OK, "ATE1": _OK, "AT+FCLASS=0": _OK, "AT+FCLASS=8": _OK,
    "AT+VLS=0": _OK,
}
PROFILES: Mapping[str, ModemProfile] = MappingProxyType({profile.name: profile for profile in (
    # Conexant-style: takes AT+VCID=1 (as do Agere and US Robotics chipsets).
    ModemProfile("conexant", {**_BASICS, "ATI": ("56000", "OK"),
                              "ATI3": ("linetap simulated modem, conexant profile", "OK"),
                              "AT+VCID=1": _OK}),
    # Rockwell-style: only AT#CID=1, and no ATI3.
    ModemProfile("rockwell", {**_BASICS, "ATI": ("linetap simulated modem, rockwell profile", "OK"),
                              "AT#CID=1": _OK}),
    # Hangs on ATI: the session must time out cleanly.
    ModemProfile("mute-ati", {**_BASICS, "ATI": None, "AT+VCID=1": _OK}),
)})

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
