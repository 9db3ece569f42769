"""A simulated USB headset and PC for the HID driver, over real file descriptors.

:class:`SimHidNodes` stands in for ``/dev``: each node is one end of a
``SOCK_SEQPACKET`` socket pair (one report per read, as on a hidraw or hidg
node), handed to :class:`~linetap.drivers.hid.hidraw.HidTelephony` as a file
descriptor, so the driver's real reader code runs. :class:`SimHeadset` holds
the other end of a headset node: it sends input reports built from its own
report descriptor, reads the LED reports the box writes (hidraw's form: the
report id first, 0 when unnumbered) and can be unplugged and plugged again.
:class:`SimHost` is the PC on the box's gadget node: it sets the softphone's
LEDs and reads the reports the box sends it.

Waiting is on the sockets with a timeout, never on a sleep.
"""

from __future__ import annotations

import errno
import select
import socket
import threading

from linetap.drivers.hid import gadget
from linetap.drivers.hid.descriptor import MAX_REPORT_BYTES, ReportDescriptor, parse_descriptor
from linetap.drivers.hid.telephony import (FLASH, HOOK_SWITCH, LED_USAGE, PHONE_MUTE, TelephonyDecoder,
                                           encode_report)
from linetap.firmware.errors import DeviceTimeout

SIM_HEADSET_DESCRIPTOR = bytes((
    0x05, 0x0B, 0x09, 0x05, 0xA1, 0x01,  # Telephony / Headset / Application
    0x85, 0x02, 0x15, 0x00, 0x25, 0x01, 0x75, 0x01,  # report 2, 1-bit 0..1
    0x09, 0x20, 0x95, 0x01, 0x81, 0x22,  # Hook Switch: absolute
    0x09, 0x2F, 0x09, 0x21, 0x09, 0x24, 0x95, 0x03, 0x81, 0x06,  # Phone Mute, Flash, Redial: relative
    0x95, 0x04, 0x81, 0x01,  # padding
    0x05, 0x08, 0x85, 0x03,  # LEDs, report 3
    0x09, 0x17, 0x09, 0x09, 0x09, 0x18, 0x09, 0x20, 0x95, 0x04, 0x91, 0x22,  # Off-Hook, Mute, Ring, Hold
    0x95, 0x04, 0x91, 0x01,  # padding
    0xC0,
))
"""A simulated headset of the common shape: numbered reports, hook absolute, mute a button."""

_CONTROLS = {"hook": HOOK_SWITCH, "mute": PHONE_MUTE, "flash": FLASH}


class SimHidNodes:
    """Device nodes in memory; the driver opens them by path, as it would ``/dev/hidraw0``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[socket.socket, bytes]] = {}

    def plug(self, path: str, descriptor: bytes = b"") -> socket.socket:
        """Make ``path`` appear; returns the device's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            self._nodes[path] = (theirs, descriptor)
        return ours

    def unplug(self, path: str) -> None:
        with self._lock:
            node = self._nodes.pop(path, None)
        if node is not None and node[0].fileno() >= 0:
            node[0].close()  # not opened yet: nobody else holds it

    def open(self, path: str) -> int:
        with self._lock:
            node = self._nodes.get(path)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such simulated device", path)
            if node[0].fileno() < 0:
                raise OSError(errno.EBUSY, "simulated device already open", path)
            node[0].setblocking(False)
            return node[0].detach()

    def descriptor(self, path: str, fd: int) -> bytes:
        with self._lock:
            return self._nodes[path][1]


class _SimEnd:
    """The device's end of a simulated node."""

    def __init__(self, nodes: SimHidNodes, path: str, descriptor: bytes) -> None:
        self.nodes, self.path, self._descriptor_bytes = nodes, path, descriptor
        self._sock: socket.socket | None = None
        self.plug()

    def plug(self) -> None:
        self._sock = self.nodes.plug(self.path, self._descriptor_bytes)

    def unplug(self) -> None:
        """The device goes away: the driver's next read ends, and the path is gone until :meth:`plug`."""
        self.nodes.unplug(self.path)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, report: bytes) -> None:
        assert self._sock is not None, "plug the simulated device first"
        self._sock.send(report)

    def receive(self, timeout: float = 2.0) -> bytes:
        """The next report the box wrote to this device; DeviceTimeout when none comes in ``timeout`` s."""
        assert self._sock is not None, "plug the simulated device first"
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            raise DeviceTimeout(f"no report reached simulated {self.path} within {timeout} s")
        return self._sock.recv(MAX_REPORT_BYTES + 1)

    def pending(self) -> bool:
        """Whether a report is waiting (without waiting)."""
        return self._sock is not None and bool(select.select([self._sock], [], [], 0)[0])

    def close(self) -> None:
        self.unplug()


class SimHeadset(_SimEnd):
    """A USB headset on ``path``: press its buttons, read its LEDs."""

    def __init__(self, nodes: SimHidNodes, path: str = "/dev/hidraw0",
                 descriptor: bytes = SIM_HEADSET_DESCRIPTOR) -> None:
        self.descriptor: ReportDescriptor = parse_descriptor(descriptor)
        self._levels = {usage: False for usage in _CONTROLS.values()}
        super().__init__(nodes, path, descriptor)

    def set(self, **controls: bool) -> None:
        """Send the input report(s) holding ``hook``, ``mute`` or ``flash`` with the given levels."""
        self._levels.update({_CONTROLS[name]: on for name, on in controls.items()})
        wanted = {_CONTROLS[name] for name in controls}
        for rid in self.descriptor.report_ids("input"):
            if any(wanted & set(f.usages) for f in self.descriptor.fields_of("input", rid)):
                self.send(encode_report(self.descriptor, "input", rid, self._levels))

    def press(self, control: str) -> None:
        """A momentary press: the control set in one report and clear in the next."""
        self.set(**{control: True})
        self.set(**{control: False})

    def leds(self, timeout: float = 2.0) -> dict[str, bool]:
        """The LEDs of the next report the box wrote (hidraw's form: report id first, 0 when unnumbered)."""
        report = self.receive(timeout)
        if not self.descriptor.numbered:
            report = report[1:]
        decoder = TelephonyDecoder(self.descriptor, source="hid-host", kind="output")
        decoder.decode(report)
        return {name: decoder.level(name) for name in ("hook", "mute", "ring", "hold", "microphone")}


class SimHost(_SimEnd):
    """The PC on the box's gadget node: set the softphone's LEDs, read what the box reports."""

    def __init__(self, nodes: SimHidNodes, path: str = "/dev/hidg0") -> None:
        self._leds = dict.fromkeys(LED_USAGE, False)
        super().__init__(nodes, path, b"")

    def set_leds(self, **leds: bool) -> None:
        """Send the output report with ``off_hook``, ``mute``, ``ring``, ``hold``, ``microphone`` set."""
        self._leds.update(leds)
        self.send(encode_report(gadget.descriptor(), "output", 0,
                                {LED_USAGE[name]: on for name, on in self._leds.items()}))

    def controls(self, timeout: float = 2.0) -> dict[str, bool]:
        """The hook, mute and flash bits of the next input report the box sent."""
        report = self.receive(timeout)
        values = {}
        for f in gadget.descriptor().fields_of("input", 0):
            for i, value in enumerate(f.values(report)):
                usage = f.usage_of(i)
                values.update({name: bool(value) for name, u in _CONTROLS.items() if u == usage})
        return values
