"""The USB device the PC sees on the USB inline board, made through configfs.

On ``pi4-usb-inline`` the Pi's USB-C port runs in device mode (dwc2) and the
PC finds a composite USB headset there: UAC2 audio both ways (the PC plays
to our "speaker", records from our "mic") and a HID interface with the
Telephony usage page (hook switch, mute, and the LEDs the PC sets). Its
names and ids are our own, never the headset's: manufacturer ``linetap``,
product ``linetap inline headset``, the box's device id as serial number,
and the vendor/product id pair of the board profile (pid.codes' test pair
1209:0001 unless a fleet has its own).

This module owns the gadget's configfs layout (one owner: the image's unit
builds it with ``linetap gadget up``, ``linetap doctor`` reads it back).
:func:`plan` is pure: the folders, attribute writes and links that make the
gadget, from a :class:`GadgetSpec`. :func:`gadget_up` carries the plan out
under a root folder (``/`` on a box, a temporary folder in tests, where
configfs is a plain folder), binds the gadget to the USB device controller
and is idempotent: a gadget already bound is left alone, a half-made one is
torn down and made again. :func:`gadget_down` unbinds and removes it; it is
safe when nothing is there.

The HID report descriptor is given, not known here (it belongs to the HID
driver, ``linetap.drivers.hid.gadget``), so the firmware core imports no driver.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from linetap.firmware.errors import DeviceError, DeviceMissing

logger = logging.getLogger(__name__)

CONFIGFS = Path("sys/kernel/config/usb_gadget")  # under the root
UDC_CLASS = Path("sys/class/udc")  # the USB device controllers, under the root
NAME = "linetap"
CONFIG = "configs/c.1"
UAC2 = "uac2.usb0"
HID = "hid.usb0"
LANGUAGE = "strings/0x409"  # US English, what every host reads
MANUFACTURER = "linetap"
PRODUCT = "linetap inline headset"
SAMPLE_BYTES = 2  # 16-bit samples both ways
MONO = 0x1  # channel mask: one channel each way (a headset's mic and a call's audio are mono)
MAX_SERIAL = 126  # a USB string descriptor holds 126 UTF-16 characters
CONTROLLER_HINT = ("add `dtoverlay=dwc2,dr_mode=peripheral` to config.txt and `modules-load=dwc2` to "
                   "cmdline.txt on the boot partition, then reboot (hardware/bring-up.md)")


@dataclass(frozen=True)
class GadgetSpec:
    """What the PC will see: ids, serial number, audio rates and the HID report descriptor."""

    vendor_id: int
    product_id: int
    serial: str
    rates: tuple[int, ...]
    hid_descriptor: bytes
    hid_report_length: int  # the longest report in the descriptor, in bytes

    def __post_init__(self) -> None:
        if not 0 < self.vendor_id <= 0xFFFF or not 0 <= self.product_id <= 0xFFFF:
            raise ValueError(f"USB ids {self.vendor_id:#x}:{self.product_id:#x} do not fit 16 bits")
        if not self.serial or len(self.serial) > MAX_SERIAL or not self.serial.isprintable():
            raise ValueError(f"serial number {self.serial!r}: give 1..{MAX_SERIAL} printable characters")
        if not self.rates or not self.hid_descriptor or not 0 < self.hid_report_length <= 64:
            raise ValueError("a gadget needs at least one rate, a HID report descriptor and reports of "
                             "1..64 bytes (a full-speed interrupt endpoint's packet)")


@dataclass(frozen=True)
class Write:
    """Write ``value`` to the attribute ``path`` (relative to the gadget's folder)."""

    path: str
    value: bytes


@dataclass(frozen=True)
class Mkdir:
    path: str


@dataclass(frozen=True)
class Link:
    """Put function ``function`` into the configuration (a symbolic link, as configfs wants)."""

    function: str


Step = Write | Mkdir | Link


def _text(value: str | int) -> bytes:
    return f"{value}\n".encode()


def plan(spec: GadgetSpec) -> list[Step]:
    """Every step that makes the gadget, in the order configfs accepts them."""
    rates = ",".join(str(r) for r in spec.rates)
    steps: list[Step] = [
        Write("idVendor", _text(f"{spec.vendor_id:#06x}")),
        Write("idProduct", _text(f"{spec.product_id:#06x}")),
        Write("bcdDevice", _text("0x0100")),
        Write("bcdUSB", _text("0x0200")),
        # Miscellaneous class with interface association: how a host groups audio + HID as one headset.
        Write("bDeviceClass", _text("0xef")),
        Write("bDeviceSubClass", _text("0x02")),
        Write("bDeviceProtocol", _text("0x01")),
        Mkdir(LANGUAGE),
        Write(f"{LANGUAGE}/manufacturer", _text(MANUFACTURER)),
        Write(f"{LANGUAGE}/product", _text(PRODUCT)),
        Write(f"{LANGUAGE}/serialnumber", _text(spec.serial)),
        Mkdir(f"functions/{UAC2}"),
        # c_* is what the PC plays (our capture), p_* what the PC records (our playback).
        Write(f"functions/{UAC2}/c_chmask", _text(MONO)),
        Write(f"functions/{UAC2}/c_srate", _text(rates)),
        Write(f"functions/{UAC2}/c_ssize", _text(SAMPLE_BYTES)),
        Write(f"functions/{UAC2}/p_chmask", _text(MONO)),
        Write(f"functions/{UAC2}/p_srate", _text(rates)),
        Write(f"functions/{UAC2}/p_ssize", _text(SAMPLE_BYTES)),
        Mkdir(f"functions/{HID}"),
        Write(f"functions/{HID}/protocol", _text(0)),
        Write(f"functions/{HID}/subclass", _text(0)),
        Write(f"functions/{HID}/report_length", _text(spec.hid_report_length)),
        Write(f"functions/{HID}/report_desc", spec.hid_descriptor),
        Mkdir(CONFIG),
        Mkdir(f"{CONFIG}/{LANGUAGE}"),
        Write(f"{CONFIG}/{LANGUAGE}/configuration", _text("audio + telephony")),
        # Self-powered (header or PoE): we draw nothing from the PC's port.
        Write(f"{CONFIG}/bmAttributes", _text("0xc0")),
        Write(f"{CONFIG}/MaxPower", _text(2)),
        Link(UAC2),
        Link(HID),
    ]
    return steps


def gadget_dir(root: Path) -> Path:
    return root / CONFIGFS / NAME


def controllers(root: Path) -> list[str]:
    """The USB device controllers this machine has (``fe980000.usb`` on a Pi 4 in device mode)."""
    folder = root / UDC_CLASS
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def bound_controller(root: Path) -> str | None:
    """The controller our gadget is bound to, or None (no gadget, or not bound)."""
    try:
        udc = (gadget_dir(root) / "UDC").read_text().strip()
    except OSError:
        return None
    return udc or None


def controller_state(root: Path, udc: str) -> str | None:
    """What the controller says of its link: ``configured`` once the PC has enumerated us."""
    try:
        return (root / UDC_CLASS / udc / "state").read_text().strip()
    except OSError:
        return None


def gadget_up(root: Path, spec: GadgetSpec) -> str:
    """Make the gadget under ``root`` and bind it; returns the controller's name.

    Raises DeviceMissing when configfs or the controller is missing, with the fix.
    """
    base = root / CONFIGFS
    if not base.is_dir():
        raise DeviceMissing(f"{base} does not exist: configfs is not mounted or libcomposite is not "
                            f"loaded; run `modprobe libcomposite` (the usb-gadget unit does)")
    udcs = controllers(root)
    if not udcs:
        raise DeviceMissing(f"no USB device controller in {root / UDC_CLASS}: the USB-C port is not in "
                            f"device mode; {CONTROLLER_HINT}")
    bound = bound_controller(root)
    if bound is not None:
        logger.info("usb gadget already bound udc=%s", bound)
        return bound
    if gadget_dir(root).exists():
        gadget_down(root)  # half made, or made with other values: start clean
    _carry_out(gadget_dir(root), plan(spec))
    _write(gadget_dir(root) / "UDC", _text(udcs[0]), Write("UDC", _text(udcs[0])))
    logger.info("usb gadget bound udc=%s id=%04x:%04x rates=%s", udcs[0], spec.vendor_id, spec.product_id,
                ",".join(map(str, spec.rates)))
    return udcs[0]


def _carry_out(gadget: Path, steps: list[Step]) -> None:
    gadget.mkdir()
    for step in steps:
        match step:
            case Mkdir(path=path):
                (gadget / path).mkdir(parents=True, exist_ok=True)
            case Write(path=path, value=value):
                _write(gadget / path, value, step)
            case Link(function=function):
                link = gadget / CONFIG / function
                if not link.is_symlink():
                    link.symlink_to(gadget / "functions" / function)


def _put(path: Path, value: bytes) -> None:
    with open(path, "wb") as attribute:  # one write() per value, as configfs wants it
        attribute.write(value)


def _write(path: Path, value: bytes, step: Write) -> None:
    try:
        _put(path, value)
    except OSError as exc:
        if step.path.endswith("_srate") and b"," in value and exc.errno == errno.EINVAL:
            # Kernels before 5.19 take one rate per direction: offer the first, the bridge converts.
            first = value.split(b",")[0].strip() + b"\n"
            logger.warning("usb gadget: this kernel takes one rate, offering %s Hz only", first.decode().strip())
            _write(path, first, Write(step.path, first))
            return
        raise DeviceError(f"usb gadget: writing {step.path} failed: {exc.strerror}; is another gadget "
                          f"bound to the controller (`grep . /{CONFIGFS}/*/UDC`)? remove it first") from exc


def gadget_down(root: Path) -> bool:
    """Unbind and remove the gadget under ``root``; False when there was none."""
    gadget = gadget_dir(root)
    if not gadget.exists():
        return False
    if bound_controller(root) is not None:
        (gadget / "UDC").write_text("\n")
    config = gadget / CONFIG
    for function in (UAC2, HID):
        link = config / function
        if link.is_symlink():
            link.unlink()
    # Deepest first. On configfs a folder goes with its attributes; a plain folder (tests) empties first.
    for folder in (config / LANGUAGE, config, gadget / "functions" / UAC2, gadget / "functions" / HID,
                   gadget / LANGUAGE, gadget):
        _remove(folder)
    logger.info("usb gadget removed")
    return True


def _remove(folder: Path) -> None:
    if not folder.is_dir():
        return
    try:
        folder.rmdir()
        return
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.unlink(entry)
        elif entry.is_dir() and entry.name in ("functions", "configs", "strings", "os_desc", "webusb"):
            _remove(entry)
    folder.rmdir()
