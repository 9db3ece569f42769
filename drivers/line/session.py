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

The reopen back-off is the project's one back-off
(:class:`linetap.firmware.backoff.Backoff`); :data:`REOPEN_BACKOFF` is the
modem's default.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Literal

import serial
import serial.tools.list_ports

from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineState, LineTone, Ring
from linetap.drivers.line.profiles import CALLER_ID_COMMANDS
from linetap.drivers.v253 import (
    Garbage,
    Response,
    Result,
    ShieldedCode,
    V253Parser,
    V253ProtocolError,
)
from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import Clock
from linetap.firmware.errors import (
    ConfigError,
    DeviceError,
    DeviceLost,
    DeviceMissing,
    DeviceTimeout,
)

logger = logging.getLogger(__name__)

REOPEN_BACKOFF = Backoff(initial=0.5, maximum=30.0, factor=2.0, jitter=0.2)
"""Waits between attempts to reopen a lost modem: near the ceiling, so that the
box comes back soon, yet spread so that boxes on one power circuit do not retry
in step."""

LinkStatus = Literal["connecting", "ready", "lost"]

_READ_SLICE = 0.1  # s a read waits before the reader checks its stop event; also the caller-ID idle gap
_JOIN_TIMEOUT = 3.0
_LINE_EVENTS = (Ring, CallerId, HookChanged, DtmfDigit, LineTone)
_REFUSAL_HINTS = {
    "AT&F": "the modem refuses both ATZ and AT&F; power-cycle it",
    "ATE0": "the modem cannot turn its echo off; is this a modem at all?",
    "ATI": "the modem will not identify itself; is this a modem at all?",
    "AT+FCLASS=8": "the modem has no voice mode; linetap needs a V.253 voice modem",
}


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
                 reopen_backoff: Backoff = REOPEN_BACKOFF, line_select: str | None = None) -> None:
        if not command_timeout > 0:
            raise ConfigError(f"command_timeout={command_timeout!r} s must be positive, e.g. 2.0")
        self._port = port
        self._baudrate = baudrate
        self._clock = clock
        self._on_event = on_event
        self._command_timeout = command_timeout
        self._backoff = reopen_backoff
        self._line_select = line_select
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._outbox: deque[object] = deque()  # delivered by the reader thread only
        self._state: LinkStatus = "connecting"
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
    def state(self) -> LinkStatus:
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
        for delay in self._backoff.delays():
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

    def _set_state(self, state: LinkStatus, detail: str = "") -> None:
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
