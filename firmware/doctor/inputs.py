"""The checks of what the box listens to: the front panel's pins, the hook signal and the voice modem."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gpiozero.exc import GPIOZeroError

from linetap.drivers.events import HookChanged
from linetap.drivers.line import CALLER_ID_COMMANDS
from linetap.firmware.board import HEADER_PIN
from linetap.firmware.config import Config
from linetap.firmware.doctor.context import STOP_SERVICE, Context, no_config, profile_ref
from linetap.firmware.doctor.report import CheckResult, failed, passed, skipped, warned
from linetap.firmware.errors import ConfigError, DeviceError, DeviceMissing, LinetapError


def _gpio_roles(config: Config) -> dict[str, str]:
    return {path: f"GPIO{pin} (header pin {HEADER_PIN[pin]})"
            for path, pin in config.board_profile().gpio.assigned().items()}


def check_gpio(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("gpio")
    roles = _gpio_roles(config)
    try:
        with ctx.parts.panel(config) as panel:
            off_hook = panel.off_hook
    except (DeviceError, ConfigError) as exc:
        return failed("gpio", str(exc).split("; ")[0],
                      f"{STOP_SERVICE}; otherwise another program holds the pin (`gpioinfo` shows who), "
                      f"or give the role another free GPIO in {profile_ref(config)} "
                      f"(hardware/pinouts.md)", error=str(exc), pins=roles)
    except GPIOZeroError as exc:
        return failed("gpio", f"gpiozero cannot claim the panel's pins: {exc}",
                      f"{STOP_SERVICE}; check that this user is in group gpio (`id`) and that "
                      f"/dev/gpiochip* exists", pins=roles)
    hook = "no hook input" if off_hook is None else f"hook reads {'off' if off_hook else 'on'} hook"
    return passed("gpio", f"{len(roles)} pins claimed and released; {hook}", pins=roles, off_hook=off_hook)


class _HookWatch:
    """Collects hook changes from a driver thread for the thread running the checks."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._changed = threading.Condition()
        self._states: list[bool] = []

    def on_event(self, event: object) -> None:
        """Called on the panel's debounce thread or the modem's reader thread."""
        if isinstance(event, HookChanged) and event.source == self._source:
            with self._changed:
                self._states.append(event.off_hook)
                self._changed.notify_all()

    def wait_for(self, off_hook: bool, deadline: float, clock: Callable[[], float]) -> bool:
        with self._changed:
            while True:
                if off_hook in self._states:
                    del self._states[: self._states.index(off_hook) + 1]
                    return True
                left = deadline - clock()
                if left <= 0:
                    return False
                self._changed.wait(left)


def check_hook(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("hook")
    profile = config.board_profile()
    source = profile.call_detect.source
    if source == "vad":
        return skipped("hook", "this board has no hook signal (call_detect.source = \"vad\"): calls start "
                               "on voice activity; make a test call to see one start")
    if source == "hid":
        return skipped("hook", "this board's hook is the USB headset's hook switch and the softphone's "
                               "off-hook LED: the hid check watches their reports")
    if ctx.hook_test_s is None:
        return skipped("hook", "not asked for: run `linetap doctor --hook-test` and lift and replace "
                               "the handset when told")
    watch = _HookWatch("gpio" if source == "hook-gpio" else "modem")
    where = (f"GPIO{profile.gpio.hook} (header pin {HEADER_PIN[profile.gpio.hook]})"
             if profile.gpio.hook is not None and source == "hook-gpio" else "the voice modem")
    try:
        device = (ctx.parts.panel(config, watch.on_event) if source == "hook-gpio"
                  else ctx.parts.line(config, ctx.clock, watch.on_event))
    except (DeviceError, ConfigError) as exc:
        return skipped("hook", f"the hook input cannot be opened (see the gpio or modem check): {exc}")
    assert device is not None  # the profile schema requires a modem for call_detect v253
    deadline = time.monotonic() + ctx.hook_test_s
    seen: list[str] = []
    with device:
        for step, off_hook in (("lift", True), ("replace", False)):
            ctx.ask(step)
            if not watch.wait_for(off_hook, deadline, time.monotonic):
                break
            seen.append("off hook" if off_hook else "on hook")
    details = {"source": source, "input": where, "seen": seen, "seconds": ctx.hook_test_s}
    if len(seen) == 2:
        return passed("hook", f"{where} saw the handset lifted and put back", **details)
    missing = "lifted" if not seen else "put back"
    if source == "hook-gpio":
        polarity = "high" if profile.gpio.hook_active == "low" else "low"
        fix = (f"check the optocoupler: collector to {where}, emitter to GND, its input across the mic "
               f"pair (or the line loop) per hardware/wiring.md; if it changes the wrong way, set "
               f"gpio.hook_active = \"{polarity}\" in {profile_ref(config)}")
    else:
        fix = ("this modem may not report the local handset: try line_select (AT+VLS=0), or use a "
               "hook-gpio board with an optocoupler (hardware/wiring.md)")
    return failed("hook", f"the handset was not seen {missing} within {ctx.hook_test_s:g} s on {where}",
                  fix, **details)


def check_modem(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("modem")
    line_profile = config.board_profile().line
    if line_profile.driver == "none":
        return skipped("modem", "this board has no voice modem (line.driver = \"none\")")
    try:
        line = ctx.parts.line(config, ctx.clock, lambda event: None)
    except DeviceMissing as exc:
        return failed("modem", str(exc).split("; ")[0],
                      f"plug the modem in and set line.port in {profile_ref(config)} to its "
                      f"/dev/serial/by-id/... path (serial ports here: `linetap devices`)", error=str(exc))
    except LinetapError as exc:
        return failed("modem", f"the modem did not initialise: {exc}",
                      f"{STOP_SERVICE}; check that ModemManager is not running (`systemctl status "
                      f"ModemManager`) and that the modem is a V.253 voice modem", error=str(exc))
    assert line is not None
    with line:
        identity, caller_id = line.identity, line.caller_id_command
    details = {"port": line.port, "identity": identity, "caller_id_command": caller_id}
    if caller_id is None:
        return warned("modem", f"modem {identity!r} answers but took none of {', '.join(CALLER_ID_COMMANDS)}: "
                               f"no caller ID",
                      "use a modem whose chipset supports formatted caller ID (Conexant, Agere, US "
                      "Robotics, Rockwell), and set the ATA and the modem to the same country", **details)
    return passed("modem", f"modem {identity!r} answers ATI; caller ID on with {caller_id}", **details)
