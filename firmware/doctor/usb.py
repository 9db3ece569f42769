"""The USB inline board's checks: our gadget, the PC, the headset, audio both ways, HID, clock drift.

They run only on a board with a ``[gadget]`` section (``pi4-usb-inline`` and
its simulated twin), after the modem check, in the order an installer fixes
things: the gadget made and bound to the USB-C port's controller
(``gadget``), the PC enumerating it (``pc``), the headset on a USB-A port
(``headset``: its hidraw node with the Telephony usage, its sound card),
audio flowing both ways through the bridge (``usb-audio``), HID reports
seen (``hid``) and the two USB clocks' drift within what the bridge corrects
(``drift``).

The first three read files only, under ``ctx.root`` (``/`` on a box, a fake
sysfs and configfs folder in tests): the gadget's configfs folder
(:mod:`linetap.firmware.usbgadget` owns its layout), ``/sys/class/udc`` and
``/sys/class/hidraw``. The last three build the bridge and the HID driver
as the service would, through ``ctx.parts``, and watch them for
``ctx.listen_s`` seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware import usbgadget
from linetap.firmware.config import Config
from linetap.firmware.doctor.context import READ_TIMEOUT_S, STOP_SERVICE, Context, no_config, profile_ref
from linetap.firmware.doctor.report import CheckResult, failed, passed, skipped, warned
from linetap.firmware.errors import ConfigError, DeviceError, DeviceMissing

GADGET_UNIT = "linetap-usb-gadget"
RESTART_GADGET = (f"`sudo systemctl restart {GADGET_UNIT}`, then `journalctl -b -u {GADGET_UNIT}` says "
                  f"what it could not do")
# The bridge steers up to ±1000 ppm (BridgeSettings.max_ppm); USB audio clocks are within ±300 ppm of
# nominal, so two differ by 600 at most. Beyond that a device runs far off, or lies about its rate.
DRIFT_WARN_PPM = 700.0
DRIFT_FAIL_PPM = 1000.0


def usb_inline(config: Config) -> bool:
    """Whether the config's board is a USB inline board (these checks apply)."""
    return config.board_profile().gadget is not None


def _configfs_value(root: Path, attribute: str) -> str | None:
    try:
        return (usbgadget.gadget_dir(root) / attribute).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def check_gadget(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("gadget")
    gadget = usbgadget.gadget_dir(ctx.root)
    if config.board_profile().audio.driver.startswith("sim"):
        return skipped("gadget", "the simulated board has no USB-C port; the simulated PC stands in for it")
    controllers = usbgadget.controllers(ctx.root)
    details: dict[str, Any] = {"configfs": str(gadget), "controllers": controllers}
    if not controllers:
        return failed("gadget", "no USB device controller: the USB-C port is not in device mode",
                      usbgadget.CONTROLLER_HINT, **details)
    if not gadget.is_dir():
        return failed("gadget", f"no linetap gadget in configfs ({gadget})", RESTART_GADGET, **details)
    udc = usbgadget.bound_controller(ctx.root)
    ids = f"{_configfs_value(ctx.root, 'idVendor')}:{_configfs_value(ctx.root, 'idProduct')}"
    serial = _configfs_value(ctx.root, f"{usbgadget.LANGUAGE}/serialnumber")
    details.update(udc=udc, ids=ids, serial=serial)
    if udc is None:
        return failed("gadget", "the linetap gadget exists but is not bound to the USB controller",
                      f"{RESTART_GADGET}; another gadget may hold the controller "
                      f"(`grep . /sys/kernel/config/usb_gadget/*/UDC`)", **details)
    if serial != config.device.id:
        return warned("gadget", f"the gadget's serial number is {serial!r}, not the device id "
                                f"{config.device.id!r}", f"{RESTART_GADGET} to make it again", **details)
    return passed("gadget", f"gadget {ids} (serial {serial}) bound to {udc}", **details)


# What the controller's state means for the installer, and what to do; "configured" passes.
_PC_STATES: dict[str, tuple[str, str]] = {
    "not attached": ("no PC on the USB-C port", "connect the box's USB-C port to the PC with a data cable "
                                                "(a charge-only cable carries no data)"),
    "suspended": ("the PC has suspended the port (asleep, or USB power saving)", "wake the PC; if it keeps "
                  "suspending, turn off USB selective suspend for the headset in the PC's power settings"),
    "powered": ("the PC powers the port but has not spoken to the box yet", "unplug and replug the USB-C "
                "cable; try another port on the PC (not a hub)"),
    "default": ("the PC reset the box but did not give it an address", "try another cable or PC port; "
                "`dmesg` on a Linux PC says why"),
    "addressed": ("the PC addressed the box but did not configure it: its driver refused the device",
                  "look at the PC's device manager (or `dmesg` on Linux) for the linetap inline headset"),
}


def check_pc(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("pc")
    if config.board_profile().audio.driver.startswith("sim"):
        return skipped("pc", "the simulated board's PC is simulated; the usb-audio check exercises it")
    udc = usbgadget.bound_controller(ctx.root)
    if udc is None:
        return skipped("pc", "the gadget is not bound (see the gadget check)")
    state = usbgadget.controller_state(ctx.root, udc)
    details = {"udc": udc, "state": state}
    if state == "configured":
        return passed("pc", f"the PC enumerated the box ({udc} configured)", **details)
    finding, fix = _PC_STATES.get(state or "", (f"the controller reports {state!r}", "see `dmesg` on the box"))
    return failed("pc", finding, fix, **details)


def check_headset(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("headset")
    audio = config.board_profile().audio
    if audio.driver.startswith("sim"):
        return skipped("headset", "the simulated board's headset is simulated")
    hid = config.board_profile().hid
    try:
        node = hid.headset or ctx.parts.find_headset(ctx.root / "sys/class/hidraw")
    except DeviceMissing as exc:
        return failed("headset", "no USB headset with telephony controls (hook switch or mute) found",
                      "plug the headset into one of the box's USB-A ports (not USB-C); a headset without "
                      "HID telephony controls cannot open calls: set hid.headset if it has them elsewhere",
                      error=str(exc))
    names = ctx.audio_names()
    cards = [name for name in names if audio.headset and audio.headset.lower() in name.lower()
             and not (audio.gadget and audio.gadget.lower() in name.lower())]
    details = {"hidraw": node, "audio_devices": names}
    if not cards:
        return failed("headset", f"the headset's controls are at {node} but no sound device matches "
                                 f"audio.headset = {audio.headset!r}",
                      f"set audio.headset in {profile_ref(config)} to part of the headset's name among "
                      f"these: {', '.join(map(repr, names)) or 'none'} (`linetap devices`)", **details)
    return passed("headset", f"headset controls at {node}, sound device {cards[0]!r}", sound_device=cards[0],
                  **details)


@dataclass(frozen=True)
class _Window:
    """What the bridge did while doctor listened: frames in from each end, its counters at the end."""

    seconds: float
    moved: dict[str, int | None]
    stats: dict[str, Any]


def _listen_to_bridge(ctx: Context, config: Config) -> _Window:
    """Run the bridge for ``ctx.listen_s`` (once: the usb-audio and drift checks share the run).

    Raises DeviceError or ConfigError when the bridge does not open or stops.
    """
    if "usb-bridge" in ctx.memo:
        return ctx.memo["usb-bridge"]
    codec = ctx.parts.codec(config)
    try:
        codec.start()
        before = _flow(codec)
        frames = 0
        while frames < ctx.listen_s * codec.rate:
            block = codec.read(timeout=READ_TIMEOUT_S)
            if block is None:
                break
            frames += len(block.frames)
        after = _flow(codec)
        moved = {side: None if after[side] is None or before[side] is None else after[side] - before[side]
                 for side in after}
        window = _Window(round(frames / codec.rate, 3), moved, _bridge_stats(codec))
    finally:
        codec.close()
    ctx.memo["usb-bridge"] = window
    return window


def check_usb_audio(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("usb-audio")
    try:
        window = _listen_to_bridge(ctx, config)
    except (DeviceError, ConfigError) as exc:
        return failed("usb-audio", f"the bridge does not run: {exc}",
                      f"{STOP_SERVICE}; see the headset and pc checks, and `dmesg`", error=str(exc))
    details = {"seconds": window.seconds, "frames": window.moved, "stats": window.stats}
    if None in window.moved.values():
        return skipped("usb-audio", "this bridge does not count the frames each end sends", **details)
    still = [side for side, count in window.moved.items() if not count]
    if not still:
        return passed("usb-audio", "audio flows both ways: " + ", ".join(f"{count} frames {side}"
                                                                         for side, count in window.moved.items()),
                      **details)
    fixes = {"from headset": "the headset mic sends nothing: replug the headset; `arecord -l` must list it",
             "from PC": "the PC plays nothing to the box: choose the linetap inline headset as the softphone's "
                        "speaker (and the PC's playback device), and start a test call"}
    return failed("usb-audio", f"no audio {' and '.join(still)} in {ctx.listen_s:g} s",
                  "; ".join(fixes[side] for side in still), **details)


def _bridge_stats(codec: Any) -> dict[str, Any]:
    """The bridge's own figures (both directions' counters, levels, ppm), as plain data."""
    stats = codec.bridge_stats() if hasattr(codec, "bridge_stats") else codec.rig.core.stats()
    return dataclasses.asdict(stats)


def _flow(codec: Any) -> dict[str, int | None]:
    """Frames received so far from each USB end (None where the bridge does not count them)."""
    stats = _bridge_stats(codec)
    return {"from headset": stats["uplink"].get("frames_in"), "from PC": stats["downlink"].get("frames_in")}


def check_hid(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("hid")
    try:
        hid = ctx.parts.hid(config, lambda event: None)
    except (DeviceError, ConfigError) as exc:
        return failed("hid", f"the HID controls do not open: {exc}",
                      f"{STOP_SERVICE}; see the gadget and headset checks", error=str(exc))
    with hid:
        ctx.say(f"watching HID for {ctx.listen_s:g} s: press the headset's mute button twice")
        stats = ctx.parts.watch_hid(hid, ctx.listen_s)
    reports = {side: int(stats.get(side, {}).get("reports", 0)) for side in ("headset", "host")}
    details = {"reports": reports, "unknown_usages": stats.get("unknown_usages", []),
               "write_failures": {side: stats.get(side, {}).get("write_failures", 0) for side in reports}}
    if reports["headset"] == 0:
        return warned("hid", f"no HID report from the headset in {ctx.listen_s:g} s",
                      "press the headset's mute or call button while doctor listens (`--listen 10`); if "
                      "nothing comes, the headset sends its buttons elsewhere: replug it", **details)
    return passed("hid", f"HID reports seen: {reports['headset']} from the headset, {reports['host']} from "
                         f"the PC", **details)


def check_drift(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("drift")
    try:
        stats = _listen_to_bridge(ctx, config).stats
    except (DeviceError, ConfigError) as exc:
        return skipped("drift", f"the bridge does not run (see the usb-audio check): {exc}")
    ppm = stats["uplink"]["ppm"]  # the headset's clock over the PC's, as the bridge learnt it
    details = {"drift_ppm": round(float(ppm), 1), "warn_ppm": DRIFT_WARN_PPM, "fail_ppm": DRIFT_FAIL_PPM}
    finding = f"the PC's and the headset's USB clocks differ by {ppm:+.0f} ppm"
    if abs(ppm) >= DRIFT_FAIL_PPM:
        return failed("drift", f"{finding}: more than the bridge corrects",
                      "a device runs far off its rate: try another headset, or another port on the PC",
                      **details)
    if abs(ppm) >= DRIFT_WARN_PPM:
        return warned("drift", f"{finding}: more than two crystals should", "watch for clicks in "
                      "recordings; try another headset or PC port", **details)
    return passed("drift", f"{finding}, corrected by the bridge", **details)


USB_CHECKS: tuple[tuple[str, Callable[[Context], CheckResult]], ...] = (
    ("gadget", check_gadget),
    ("pc", check_pc),
    ("headset", check_headset),
    ("usb-audio", check_usb_audio),
    ("hid", check_hid),
    ("drift", check_drift),
)
"""The USB inline board's checks, run after the modem check on such a board only."""
