"""The USB headset's HID telephony controls and the box's own HID interface to the PC: the thin driver.

:class:`HidTelephony` opens the headset's ``/dev/hidrawN`` (its report
descriptor read with the ``HIDIOCGRDESC`` ioctl) and the gadget's
``/dev/hidg0``, and runs one reader thread per side: ``linetap-hid-headset``
and ``linetap-hid-host``. Each report read (at most
:data:`~linetap.drivers.hid.descriptor.MAX_REPORT_BYTES`) goes through the
sans-IO :class:`~linetap.drivers.hid.forward.Forwarder`; what it returns is
written to the other side and its events go to ``on_event``.

Threads: ``on_event`` is called on either reader thread, never both at once
(one lock serialises the forwarder, the writes and the calls); consumers only
enqueue. Events: ``HookChanged``, ``MuteChanged``, ``PhoneButton``,
``PhoneLed`` (:mod:`linetap.drivers.events`), and, when the headset goes
away (a read error, ``ENODEV``, end of file), ``LineState("lost")``: the
headset is this board's line. The reader keeps reopening the same path with
the project's back-off (:data:`REOPEN_BACKOFF`) and says ``LineState("ready")``
when the headset is back (it may be another model: its descriptor is read
again). A PC that suspends or unplugs makes writes to the gadget fail; they
are counted (``stats()``), never waited for.

Device nodes are reached through a :class:`HidNodes` (``SystemNodes`` here,
:class:`~linetap.drivers.hid.sim.SimHidNodes` in tests and the simulated
board), so the same reader code runs on real file descriptors in both.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from linetap.drivers.events import LineState
from linetap.drivers.hid.descriptor import (MAX_DESCRIPTOR_BYTES, MAX_REPORT_BYTES, HidDescriptorError,
                                            ReportDescriptor, parse_descriptor)
from linetap.drivers.hid.forward import Forwarder, Step
from linetap.drivers.hid.telephony import TELEPHONY_PAGE, TelephonyDecoder
from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import Clock
from linetap.firmware.errors import DeviceError, DeviceMissing

logger = logging.getLogger(__name__)

REOPEN_BACKOFF = Backoff(initial=0.5, maximum=10.0, factor=2.0, jitter=0.2)
"""Waits between attempts to reopen a lost headset: an agent who replugs wants it back at once."""

HIDIOCGRDESCSIZE = 0x80044801  # _IOR('H', 0x01, int)
HIDIOCGRDESC = 0x90044802  # _IOR('H', 0x02, struct hidraw_report_descriptor): u32 size, u8 value[4096]
_LOST = (errno.ENODEV, errno.EIO, errno.ESHUTDOWN, errno.EPIPE, errno.ENXIO, errno.EBADF, errno.ECONNRESET)
_JOIN_TIMEOUT = 3.0


class HidNodes(Protocol):
    """How the driver reaches device nodes (the I/O layer, injected)."""

    def open(self, path: str) -> int:
        """A non-blocking read-write file descriptor of ``path``; OSError when it is not there."""

    def descriptor(self, path: str, fd: int) -> bytes:
        """The report descriptor of the hidraw node open as ``fd``."""


class SystemNodes:
    """The machine's ``/dev`` nodes."""

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def descriptor(self, path: str, fd: int) -> bytes:
        size = bytearray(4)
        fcntl.ioctl(fd, HIDIOCGRDESCSIZE, size, True)
        length = int.from_bytes(size, "little")
        if not 0 < length <= MAX_DESCRIPTOR_BYTES:
            raise HidDescriptorError(f"{path} reports a descriptor of {length} bytes, "
                                     f"outside 1..{MAX_DESCRIPTOR_BYTES}")
        buf = bytearray(4 + MAX_DESCRIPTOR_BYTES)
        buf[:4] = size
        fcntl.ioctl(fd, HIDIOCGRDESC, buf, True)
        return bytes(buf[4:4 + length])


@dataclass
class _Side:
    """One end: the headset's hidraw node or the gadget's hidg node."""

    name: str  # "headset" or "host"
    path: str
    fd: int | None = None
    reports: int = 0
    last_report: float | None = None
    oversized: int = 0
    lost: int = 0
    reopened: int = 0
    write_failures: int = 0


def telephony_controls(descriptor: ReportDescriptor) -> bool:
    """Whether a descriptor has a Telephony application with a hook switch or a mute button."""
    controls = TelephonyDecoder(descriptor, source="hid-headset").controls
    return any(a >> 16 == TELEPHONY_PAGE for a in descriptor.applications) and bool({"hook", "mute"} & set(controls))


def find_headset(sysfs: str | Path = "/sys/class/hidraw") -> str:
    """The ``/dev/hidrawN`` of the first device whose descriptor has telephony hook or mute controls."""
    seen = []
    for entry in sorted(Path(sysfs).glob("hidraw*")):
        try:
            with open(entry / "device" / "report_descriptor", "rb") as f:
                descriptor = parse_descriptor(f.read(MAX_DESCRIPTOR_BYTES + 1))
        except (OSError, HidDescriptorError) as e:
            seen.append(f"{entry.name} (unreadable: {e})")
            continue
        if telephony_controls(descriptor):
            return f"/dev/{entry.name}"
        seen.append(f"{entry.name} (applications {', '.join(f'0x{a:08X}' for a in descriptor.applications)})")
    raise DeviceMissing(f"no USB headset with telephony controls (hook switch or phone mute) among the HID "
                        f"devices in {sysfs}: {'; '.join(seen) or 'none'}; plug the headset into a USB-A port")


class HidTelephony:
    """A USB headset's telephony controls forwarded to and from the PC, as events for the box.

    Raises :class:`DeviceMissing` when either node is not there,
    :class:`HidDescriptorError` for a descriptor the parser refuses and
    :class:`DeviceError` for a device with no telephony controls. Later
    losses are reported as events and repaired (see the module docstring).
    """

    def __init__(self, headset_path: str, gadget_path: str, on_event: Callable[[object], None], *,
                 clock: Clock, nodes: HidNodes | None = None, reopen_backoff: Backoff = REOPEN_BACKOFF) -> None:
        self._nodes = nodes or SystemNodes()
        self._on_event = on_event
        self._clock = clock
        self._backoff = reopen_backoff
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._headset = _Side("headset", headset_path)
        self._host = _Side("host", gadget_path)
        self._forward = Forwarder(self._open_headset_descriptor())
        try:
            self._host.fd = self._open(self._host, "the box's HID gadget: is the USB gadget set up in configfs?")
        except BaseException:
            self._close_fd(self._headset)
            raise
        self._threads = [threading.Thread(target=self._run, args=(side,), name=f"linetap-hid-{side.name}",
                                          daemon=True) for side in (self._headset, self._host)]
        for thread in self._threads:
            thread.start()
        logger.info("event=hid_open headset=%s gadget=%s relative=%s", headset_path, gadget_path,
                    self._forward.headset.relative)

    # -- opening ------------------------------------------------------------

    def _open(self, side: _Side, what: str) -> int:
        try:
            return self._nodes.open(side.path)
        except FileNotFoundError as e:
            raise DeviceMissing(f"{side.path} ({what}) is not there: {e}") from e
        except OSError as e:
            raise DeviceError(f"{side.path} ({what}) cannot be opened: {e}") from e

    def _open_headset_descriptor(self) -> ReportDescriptor:
        side = self._headset
        side.fd = self._open(side, "the USB headset; `linetap doctor` lists the HID devices found")
        try:
            descriptor = parse_descriptor(self._nodes.descriptor(side.path, side.fd))
            if not telephony_controls(descriptor):
                raise DeviceError(f"{side.path} has no telephony hook switch or mute in its report descriptor; "
                                  "is it the headset? (applications: "
                                  f"{', '.join(f'0x{a:08X}' for a in descriptor.applications) or 'none'})")
        except BaseException:
            self._close_fd(side)
            raise
        return descriptor

    # -- telemetry ----------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """For ``linetap doctor`` and telemetry: reports seen per side, last report time, unknown usages."""
        with self._lock:
            sides = {side.name: {"path": side.path, "open": side.fd is not None, "reports": side.reports,
                                 "last_report": side.last_report, "oversized": side.oversized,
                                 "lost": side.lost, "reopened": side.reopened,
                                 "write_failures": side.write_failures}
                     for side in (self._headset, self._host)}
            decoders = (self._forward.headset, self._forward.host)
            return {**sides, "relative": self._forward.headset.relative,
                    "refused_reports": sum(d.refused for d in decoders),
                    "unknown_usages": sorted(f"0x{u:08X}" for d in decoders for u in d.unknown)}

    # -- the readers ----------------------------------------------------------

    def _run(self, side: _Side) -> None:
        delays = None
        while not self._stopping.is_set():
            if side.fd is None:
                delays = delays or self._backoff.delays()
                if self._stopping.wait(next(delays)):
                    return
                if self._reopen(side):
                    delays = None
                continue
            try:
                report = self._read(side.fd)
            except OSError as e:
                if e.errno not in _LOST:
                    raise
                self._lose(side, os.strerror(e.errno or 0))
                continue
            if report == b"":
                self._lose(side, "end of file")
            elif report is not None:
                self._handle(side, report)

    def _read(self, fd: int) -> bytes | None:
        """One report, b"" at end of file, None when woken to stop or nothing was there."""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        poller.register(self._wake_r, select.POLLIN)
        ready = dict(poller.poll())
        if self._wake_r in ready or fd not in ready:
            return None
        try:
            return os.read(fd, MAX_REPORT_BYTES + 1)
        except BlockingIOError:
            return None

    def _handle(self, side: _Side, report: bytes) -> None:
        with self._lock:
            side.reports += 1
            side.last_report = self._clock.monotonic()
            if len(report) > MAX_REPORT_BYTES:
                side.oversized += 1
                return
            if side is self._headset:
                step = self._forward.from_headset(report)
            else:
                step = self._forward.from_host(report)
            self._deliver_writes(step)
        for event in step.events:
            self._on_event(event)

    def _deliver_writes(self, step: Step) -> None:
        """Write what the forwarder asked for (under the lock)."""
        for report in step.to_host:
            self._write(self._host, report)
        numbered = self._forward.headset.descriptor.numbered
        for report in step.to_headset:  # hidraw takes the report id first, 0 for unnumbered reports
            self._write(self._headset, report if numbered else b"\x00" + report)

    def _write(self, side: _Side, report: bytes) -> None:
        if side.fd is None:
            side.write_failures += 1
            return
        try:
            os.write(side.fd, report)
        except OSError as e:  # a PC that suspends, a headset going away: its reader notices and reopens
            side.write_failures += 1
            logger.debug("hid write failed side=%s error=%s", side.name, e)

    def _lose(self, side: _Side, reason: str) -> None:
        with self._lock:
            side.lost += 1
            self._close_fd(side)
        logger.warning("event=hid_lost side=%s path=%s reason=%s", side.name, side.path, reason)
        if side is self._headset:
            self._on_event(LineState("lost", f"USB headset {side.path}: {reason}"))

    def _reopen(self, side: _Side) -> bool:
        try:
            fd = self._nodes.open(side.path)
        except OSError:
            return False
        if side is self._host:
            with self._lock:
                side.fd, side.reopened = fd, side.reopened + 1
            logger.info("event=hid_back side=host path=%s", side.path)
            return True
        try:
            descriptor = parse_descriptor(self._nodes.descriptor(side.path, fd))
        except (OSError, HidDescriptorError) as e:
            os.close(fd)
            logger.warning("event=hid_reopen_failed path=%s error=%s", side.path, e)
            return False
        with self._lock:
            side.fd, side.reopened = fd, side.reopened + 1
            self._deliver_writes(Step(to_headset=self._forward.plug(descriptor)))
        logger.info("event=hid_back side=headset path=%s", side.path)
        self._on_event(LineState("ready", f"USB headset {side.path}"))
        return True

    # -- life cycle -----------------------------------------------------------

    def _close_fd(self, side: _Side) -> None:
        if side.fd is not None:
            fd, side.fd = side.fd, None
            os.close(fd)

    def close(self) -> None:
        """Stop both readers and close the nodes. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        os.write(self._wake_w, b"x")
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)
        alive = [t.name for t in self._threads if t.is_alive() and t is not threading.current_thread()]
        with self._lock:
            self._close_fd(self._headset)
            self._close_fd(self._host)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if alive:
            raise DeviceError(f"HID readers {', '.join(alive)} did not stop within {_JOIN_TIMEOUT} s")
        logger.info("event=hid_closed headset=%s", self._headset.path)

    def __enter__(self) -> HidTelephony:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
