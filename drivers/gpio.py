"""The front panel: REC LED, status RGB LED, PAUSE and FLAG buttons, hook sense.

One :class:`Panel` owns every GPIO device of the box, built on gpiozero. The
pin factory is injected the gpiozero way: ``pin_factory=None`` means
gpiozero's default (``GPIOZERO_PIN_FACTORY``, lgpio on a Pi) and
:func:`sim_pin_factory` gives the simulated board (gpiozero's own
``MockFactory`` with PWM pins). A missing real factory is an error, never a
silent switch to the simulation.

What the LEDs show is data: :data:`PATTERNS` is the one table of named
indications. :meth:`Panel.show` applies a whole pattern (both LEDs).
Because the REC LED must stay lit for as long as audio is being kept, the two
halves can also be set apart, still from the same table:
:meth:`Panel.set_recording` drives only the REC LED and
:meth:`Panel.show_status` only the status LED, so a fault can be signalled
during a recording without turning the REC LED off.

Threads: ``on_event`` is called on gpiozero's internal threads (the pin
factory's edge-callback thread for presses and releases, a button's hold
thread for long presses) and on the panel's own hook-debounce thread for
:class:`HookChanged`. With the simulated board, edges are delivered on the
thread that calls ``drive_low()`` / ``drive_high()``. Consumers only enqueue
the event and return; an exception raised by ``on_event`` propagates to that
thread's ``threading.excepthook``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar

from gpiozero import LED, RGBLED, Button, DigitalInputDevice, Device
from gpiozero.exc import GPIOPinInUse, PinError, PinFixedPull, PinInvalidPin, PinPWMUnsupported
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory, MockPWMPin

from linetap.drivers.events import ButtonPressed, HookChanged
from linetap.firmware.errors import ConfigError, DeviceError, DeviceMissing

logger = logging.getLogger(__name__)

__all__ = ["PATTERNS", "Blink", "DebounceFilter", "Indication", "Panel", "RecState", "sim_pin_factory"]

Colour = tuple[float, float, float]
RecState = bool | Literal["paused"]
_Device = TypeVar("_Device", bound=Device)

DARK: Colour = (0.0, 0.0, 0.0)
DIM_GREEN: Colour = (0.0, 0.15, 0.0)
GREEN: Colour = (0.0, 1.0, 0.0)
AMBER: Colour = (1.0, 0.4, 0.0)
RED: Colour = (1.0, 0.0, 0.0)
BLUE: Colour = (0.0, 0.0, 1.0)
WHITE: Colour = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Blink:
    """Alternate between two states: ``on_time`` seconds in the first, ``off_time`` in the second."""

    on_time: float
    off_time: float


@dataclass(frozen=True)
class Indication:
    """What both LEDs show for one named pattern.

    ``rec`` is the REC LED: off, steady on, or blinking. The status LED shows
    ``status``; with ``status_blink`` it alternates between ``status`` and
    ``status_alternate``.
    """

    rec: bool | Blink
    status: Colour
    status_blink: Blink | None = None
    status_alternate: Colour = DARK


PATTERNS: dict[str, Indication] = {
    "off": Indication(rec=False, status=DARK),
    "idle": Indication(rec=False, status=DIM_GREEN),
    "recording": Indication(rec=True, status=GREEN),
    "paused": Indication(rec=Blink(1.0, 1.0), status=AMBER),
    "fault": Indication(rec=False, status=RED, status_blink=Blink(0.1, 0.1)),
    # Blue/white at 5 Hz is unlike any working state, so an installer can pick
    # out one box among many across a room.
    # A call the agent made private (or a private call armed): nothing is kept.
    "private": Indication(rec=False, status=BLUE),
    "identify": Indication(rec=False, status=BLUE, status_blink=Blink(0.1, 0.1),
                           status_alternate=WHITE),
}

# The REC LED's states borrow the REC half of these patterns, so the table stays the only source.
_REC_PATTERN: dict[RecState, str] = {False: "off", True: "recording", "paused": "paused"}

_DEBOUNCE_STOP_TIMEOUT = 2.0


def sim_pin_factory() -> MockFactory:
    """The simulated board: gpiozero's MockFactory with PWM pins (the status RGB LED needs PWM).

    Drive inputs with ``factory.pin(n).drive_low()`` / ``drive_high()``; read
    outputs with ``factory.pin(n).state`` and their history with ``.states``.
    """
    return MockFactory(pin_class=MockPWMPin)


class DebounceFilter:
    """A level that counts only once it has held still for ``settle`` seconds. No I/O, no threads.

    This is the filter the kernel applies with lgpio's debounce: a burst of
    edges shorter than ``settle`` that ends where it started reports nothing;
    one that ends at the other level reports that level once, ``settle``
    seconds after its last edge. The panel applies it itself so that every pin
    factory, the simulated one included, behaves the same.
    """

    def __init__(self, level: bool, settle: float) -> None:
        self._level = level
        self._reported = level
        self._settle = settle
        self._deadline: float | None = None

    @property
    def level(self) -> bool:
        """The last level reported by :meth:`poll` (the initial level before that)."""
        return self._reported

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to decide; None while no edge is pending."""
        return self._deadline

    def edge(self, level: bool, now: float) -> None:
        """The raw input changed to ``level`` at time ``now``."""
        self._level = level
        self._deadline = now + self._settle

    def poll(self, now: float) -> bool | None:
        """The newly settled level if it differs from the last one reported, else None."""
        if self._deadline is None or now < self._deadline:
            return None
        self._deadline = None
        if self._level == self._reported:
            return None
        self._reported = self._level
        return self._level


class _HookDebouncer:
    """Runs a :class:`DebounceFilter` on its own thread and reports each settled change."""

    def __init__(self, level: bool, settle: float, report: Callable[[bool], None]) -> None:
        self._filter = DebounceFilter(level, settle)
        self._report = report
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linetap-gpio-hook-debounce",
                                        daemon=True)
        self._thread.start()

    @property
    def level(self) -> bool:
        return self._filter.level

    def edge(self, level: bool) -> None:
        """Record a raw edge. Called on the pin factory's callback thread."""
        with self._changed:
            self._filter.edge(level, time.monotonic())
            self._changed.notify()

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify()
        self._thread.join(_DEBOUNCE_STOP_TIMEOUT)
        if self._thread.is_alive():
            raise DeviceError(f"the hook debounce thread did not stop within "
                              f"{_DEBOUNCE_STOP_TIMEOUT} s; an on_event callback is blocking "
                              f"it: on_event must only enqueue the event and return")

    def _run(self) -> None:
        while (level := self._next_settled_change()) is not None:
            self._report(level)

    def _next_settled_change(self) -> bool | None:
        """Block until the level settles at a value not yet reported; None once stopping."""
        with self._changed:
            while not self._stopping.is_set():
                deadline = self._filter.deadline
                if deadline is None:
                    self._changed.wait()
                    continue
                now = time.monotonic()
                if now < deadline:
                    self._changed.wait(deadline - now)
                    continue
                level = self._filter.poll(now)
                if level is not None:
                    return level
            return None


class _ButtonTracker:
    """Turns one button's press, hold and release into exactly one ButtonPressed per press.

    gpiozero's hold thread can fire ``when_held`` just after the release it
    raced with; the state under the lock makes the first of the two win.
    """

    def __init__(self, name: Literal["pause", "flag"], emit: Callable[[object], None]) -> None:
        self._name = name
        self._emit = emit
        self._lock = threading.Lock()
        self._pressed = False
        self._reported = False

    def pressed(self) -> None:
        with self._lock:
            self._pressed = True
            self._reported = False

    def held(self) -> None:
        with self._lock:
            if not self._pressed or self._reported:
                return
            self._reported = True
        self._emit(ButtonPressed(button=self._name, long=True))

    def released(self) -> None:
        with self._lock:
            report_short = self._pressed and not self._reported
            self._pressed = False
            self._reported = False
        if report_short:
            self._emit(ButtonPressed(button=self._name, long=False))


class Panel:
    """The box's front panel: LEDs with named patterns, two buttons and hook sense.

    Pins are BCM GPIO numbers. ``hook=None`` means the box has no hook input
    (hook state then comes from the line interface or voice activity).
    ``hook_active_high`` is the level the hook input has while off hook.
    ``on_event`` receives :class:`ButtonPressed` (``long=True`` once, the
    moment a button has been held ``long_press`` seconds; ``long=False`` on a
    release before that) and :class:`HookChanged` on each debounced hook
    edge. It runs on gpiozero's threads and the panel's debounce thread (see
    the module docstring): enqueue and return.
    """

    def __init__(self, *, rec_led: int, status_led: tuple[int, int, int], pause_button: int,
                 flag_button: int, hook: int | None, hook_active_high: bool = False,
                 hook_debounce: float = 0.03, buttons_pull_up: bool = True,
                 long_press: float = 1.5, pin_factory: Factory | None = None,
                 on_event: Callable[[object], None] | None = None) -> None:
        if long_press <= 0:
            raise ConfigError(f"long_press={long_press!r} s is not a duration; "
                              f"give the long-press time in seconds, above 0 (e.g. 1.5)")
        if hook_debounce < 0:
            raise ConfigError(f"hook_debounce={hook_debounce!r} s is negative; "
                              f"give 0 or more seconds (e.g. 0.03)")
        if len(status_led) != 3:
            raise ConfigError(f"status_led={status_led!r} must be three GPIOs (red, green, blue)")
        self._roles = _roles(rec_led, status_led, pause_button, flag_button, hook)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._closed = False
        self._devices: list[Device] = []
        self._hook_debouncer: _HookDebouncer | None = None
        self._pattern = "off"
        self._rec: bool | Blink = PATTERNS["off"].rec

        if pin_factory is None:
            _ensure_default_pin_factory()
        try:
            self._build(rec_led, status_led, pause_button, flag_button, hook, hook_active_high,
                        hook_debounce, buttons_pull_up, long_press, pin_factory)
        except BaseException:
            self._close_devices()
            raise
        factory = pin_factory if pin_factory is not None else Device.pin_factory
        logger.info("gpio panel ready pin_factory=%s rec_led=GPIO%d status_led=GPIO%d/%d/%d "
                    "pause_button=GPIO%d flag_button=GPIO%d hook=%s hook_active=%s "
                    "hook_debounce=%.3f long_press=%.2f",
                    type(factory).__name__, rec_led, *status_led, pause_button, flag_button,
                    "none" if hook is None else f"GPIO{hook}",
                    "high" if hook_active_high else "low", hook_debounce, long_press)

    def _build(self, rec_led: int, status_led: tuple[int, int, int], pause_button: int,
               flag_button: int, hook: int | None, hook_active_high: bool,
               hook_debounce: float, buttons_pull_up: bool, long_press: float,
               pin_factory: Factory | None) -> None:
        self._rec_led = self._make("rec_led", lambda: LED(rec_led, pin_factory=pin_factory))
        self._status_led = self._make("status_led", lambda: RGBLED(
            *status_led, pwm=True, pin_factory=pin_factory))
        for name, pin in (("pause", pause_button), ("flag", flag_button)):
            tracker = _ButtonTracker(name, self._emit)
            button = self._make(f"{name}_button", lambda pin=pin: Button(
                pin, pull_up=buttons_pull_up, hold_time=long_press, pin_factory=pin_factory))
            button.when_pressed = tracker.pressed
            button.when_held = tracker.held
            button.when_released = tracker.released
        if hook is None:
            return
        # pull_up=None leaves the pull to the board's hook circuit, and is what lets active_state apply.
        hook_input = self._make("hook", lambda: DigitalInputDevice(
            hook, pull_up=None, active_state=hook_active_high, pin_factory=pin_factory))
        self._hook_debouncer = _HookDebouncer(hook_input.is_active, hook_debounce,
                                              self._hook_settled)
        hook_input.when_activated = lambda: self._hook_debouncer.edge(True)
        hook_input.when_deactivated = lambda: self._hook_debouncer.edge(False)
        # An edge between the first read and the callbacks being attached would be lost;
        # a second read settles to whatever the level really is now.
        self._hook_debouncer.edge(hook_input.is_active)

    def _make(self, role: str, build: Callable[[], _Device]) -> _Device:
        pins = self._pins_of(role)
        try:
            device = build()
        except GPIOPinInUse as exc:
            raise DeviceError(f"{pins} for gpio.{role} is already in use ({exc}); close the other "
                              f"device on it or give gpio.{role} another GPIO") from exc
        except PinInvalidPin as exc:
            raise ConfigError(f"{pins} for gpio.{role} is not a GPIO of this board ({exc}); "
                              f"use a BCM GPIO number, see hardware/pinouts.md") from exc
        except PinFixedPull as exc:
            raise ConfigError(f"{pins} for gpio.{role} has a fixed pull resistor ({exc}); "
                              f"give gpio.{role} a GPIO without one (not GPIO2 or GPIO3)") from exc
        except PinPWMUnsupported as exc:
            raise DeviceError(f"{pins} for gpio.{role} cannot do PWM with this pin factory; "
                              f"the status LED needs PWM: use the lgpio factory on a Pi or "
                              f"sim_pin_factory() for the simulated board") from exc
        except PinError as exc:
            raise DeviceError(f"{pins} for gpio.{role} could not be set up: "
                              f"{type(exc).__name__}: {exc}") from exc
        self._devices.append(device)
        return device

    def _pins_of(self, role: str) -> str:
        pins = [pin for key, pin in self._roles.items() if key.split(".")[0] == role]
        return "/".join(f"GPIO{pin}" for pin in pins)

    # Indication

    def show(self, name: str) -> None:
        """Show pattern ``name`` of :data:`PATTERNS` on both LEDs."""
        indication = _lookup(name)
        with self._lock:
            self._check_open()
            self._apply_rec(indication.rec)
            self._apply_status(indication)
            self._pattern = name
        logger.debug("gpio panel pattern=%s", name)

    def show_status(self, name: str) -> None:
        """Show the status-LED half of pattern ``name``; the REC LED is left as it is."""
        indication = _lookup(name)
        with self._lock:
            self._check_open()
            self._apply_status(indication)
            self._pattern = name
        logger.debug("gpio panel status_pattern=%s", name)

    def set_recording(self, state: RecState) -> None:
        """Drive only the REC LED: ``False`` off, ``True`` steady, ``"paused"`` slow blink."""
        if state not in _REC_PATTERN:
            raise ValueError(f"recording state {state!r} is not one of False, True, 'paused'")
        with self._lock:
            self._check_open()
            self._apply_rec(PATTERNS[_REC_PATTERN[state]].rec)
        logger.debug("gpio panel recording=%s", state)

    @property
    def pattern(self) -> str:
        """The name of the pattern the status LED shows (last :meth:`show` or :meth:`show_status`)."""
        return self._pattern

    @property
    def rec_led_lit(self) -> bool:
        """True while the REC LED is on or blinking."""
        return self._rec is not False

    def _apply_rec(self, rec: bool | Blink) -> None:
        if isinstance(rec, Blink):
            self._rec_led.blink(on_time=rec.on_time, off_time=rec.off_time)
        elif rec:
            self._rec_led.on()
        else:
            self._rec_led.off()
        self._rec = rec

    def _apply_status(self, indication: Indication) -> None:
        if indication.status_blink is None:
            self._status_led.value = indication.status
        else:
            self._status_led.blink(on_time=indication.status_blink.on_time,
                                   off_time=indication.status_blink.off_time,
                                   on_color=indication.status,
                                   off_color=indication.status_alternate)

    # Inputs

    @property
    def off_hook(self) -> bool | None:
        """The debounced hook state (agrees with the last HookChanged); None without a hook pin."""
        if self._hook_debouncer is None:
            return None
        return self._hook_debouncer.level

    def _hook_settled(self, off_hook: bool) -> None:
        logger.info("gpio hook changed off_hook=%s", off_hook)
        self._emit(HookChanged(off_hook=off_hook, source="gpio"))

    def _emit(self, event: object) -> None:
        if isinstance(event, ButtonPressed):
            logger.info("gpio button pressed button=%s long=%s", event.button, event.long)
        if self._on_event is not None:
            self._on_event(event)

    # Lifetime

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError("the GPIO panel is closed; build a new Panel to drive the LEDs")

    def close(self) -> None:
        """Release every GPIO. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_devices()
        logger.info("gpio panel closed")

    def _close_devices(self) -> None:
        # The debouncer stops first so that no HookChanged is reported after close();
        # an edge that still arrives only updates its state.
        try:
            if self._hook_debouncer is not None:
                self._hook_debouncer.stop()
        finally:
            for device in reversed(self._devices):
                device.close()
            self._devices.clear()

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _roles(rec_led: int, status_led: tuple[int, int, int], pause_button: int,
           flag_button: int, hook: int | None) -> dict[str, int]:
    """Board-profile key (under ``gpio.``) -> GPIO, refusing a GPIO given two roles."""
    roles = {"rec_led": rec_led, "status_led.red": status_led[0],
             "status_led.green": status_led[1], "status_led.blue": status_led[2],
             "pause_button": pause_button, "flag_button": flag_button}
    if hook is not None:
        roles["hook"] = hook
    first_role: dict[int, str] = {}
    for role, pin in roles.items():
        if pin in first_role:
            raise ConfigError(f"GPIO{pin} is given to both gpio.{first_role[pin]} and gpio.{role}; "
                              f"give each role its own GPIO in the board profile")
        first_role[pin] = role
    return roles


def _lookup(name: str) -> Indication:
    try:
        return PATTERNS[name]
    except KeyError:
        raise ValueError(f"unknown LED pattern {name!r}; "
                         f"known patterns: {', '.join(PATTERNS)}") from None


def _ensure_default_pin_factory() -> None:
    try:
        Device.ensure_pin_factory()
    except ImportError as exc:  # gpiozero's BadPinFactory is an ImportError, as is a missing lgpio
        raise DeviceMissing(
            f"no GPIO pin factory could be loaded ({type(exc).__name__}: {exc}); on a Raspberry "
            f"Pi install lgpio (apt install python3-lgpio, or pip install lgpio) and give the "
            f"service access to /dev/gpiochip*, or set GPIOZERO_PIN_FACTORY to a factory that "
            f"is installed; on a machine without GPIO choose the `sim` board") from exc
