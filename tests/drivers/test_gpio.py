"""The front panel on gpiozero's simulated board: real gpiozero devices on MockFactory pins."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from linetap.drivers.events import ButtonPressed, HookChanged
from linetap.drivers.gpio import PATTERNS, DebounceFilter, Panel, sim_pin_factory
from linetap.firmware.errors import ConfigError, DeviceError, DeviceMissing

REC, RED, GREEN, BLUE, PAUSE, FLAG, HOOK = 17, 5, 6, 13, 23, 24, 26
TIMEOUT = 3.0


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; True if it held."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


class Events:
    """Collects what the panel emits; the panel calls it on gpiozero's and its own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[float, object]] = []

    def __call__(self, event: object) -> None:
        with self._lock:
            self._items.append((time.monotonic(), event))

    @property
    def items(self) -> list[object]:
        with self._lock:
            return [event for _, event in self._items]

    def arrival(self, index: int) -> float:
        with self._lock:
            return self._items[index][0]

    def wait_count(self, count: int) -> list[object]:
        assert wait_for(lambda: len(self.items) >= count), \
            f"expected {count} events, got {self.items}"
        return self.items


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = sim_pin_factory()
    yield factory
    factory.close()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_panel(factory: MockFactory, events: Events) -> Iterator[Callable[..., Panel]]:
    panels: list[Panel] = []

    def make(**overrides: object) -> Panel:
        settings: dict[str, object] = dict(
            rec_led=REC, status_led=(RED, GREEN, BLUE), pause_button=PAUSE, flag_button=FLAG,
            hook=HOOK, pin_factory=factory, on_event=events)
        settings.update(overrides)
        panel = Panel(**settings)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.close()


def led_states(factory: MockFactory) -> tuple[float, float, float, float]:
    return tuple(float(factory.pin(n).state) for n in (REC, RED, GREEN, BLUE))


def phase_times(factory: MockFactory, pin: int, transitions: int) -> list[float]:
    """Durations of the first ``transitions`` full phases of a blinking pin, after its start."""
    states = factory.pin(pin).states
    assert wait_for(lambda: len(states) >= transitions + 2), \
        f"GPIO{pin} changed only {len(states) - 1} times: {states}"
    # states[0] is the level before show(), states[1] the blink's first phase starting.
    return [state.timestamp for state in states[2:transitions + 2]]


# Sim factory

def test_sim_pin_factory_gives_pwm_pins() -> None:
    factory = sim_pin_factory()
    try:
        assert isinstance(factory, MockFactory)
        assert isinstance(factory.pin(RED), MockPWMPin)
    finally:
        factory.close()


# Hook sense

def test_active_low_hook_is_off_hook_when_pulled_low(factory, events, make_panel) -> None:
    factory.pin(HOOK).drive_high()
    panel = make_panel(hook_active_high=False)
    assert panel.off_hook is False

    factory.pin(HOOK).drive_low()
    assert events.wait_count(1) == [HookChanged(off_hook=True, source="gpio")]
    assert panel.off_hook is True

    factory.pin(HOOK).drive_high()
    assert events.wait_count(2)[1] == HookChanged(off_hook=False, source="gpio")
    assert panel.off_hook is False


def test_active_high_hook_is_off_hook_when_driven_high(factory, events, make_panel) -> None:
    factory.pin(HOOK).drive_low()
    panel = make_panel(hook_active_high=True)
    assert panel.off_hook is False

    factory.pin(HOOK).drive_high()
    assert events.wait_count(1) == [HookChanged(off_hook=True, source="gpio")]
    assert panel.off_hook is True


def test_hook_state_at_start_is_read_without_an_event(factory, events, make_panel) -> None:
    factory.pin(HOOK).drive_low()
    panel = make_panel(hook_active_high=False)
    assert panel.off_hook is True
    assert events.items == []


def test_no_hook_pin_means_no_hook_state(make_panel) -> None:
    assert make_panel(hook=None).off_hook is None


def test_hook_burst_ending_at_new_level_gives_one_event_after_settling(
        factory, events, make_panel) -> None:
    factory.pin(HOOK).drive_high()
    make_panel(hook_debounce=0.05)
    pin = factory.pin(HOOK)

    for _ in range(5):
        pin.drive_low()
        pin.drive_high()
    last_edge = time.monotonic()
    pin.drive_low()

    assert events.wait_count(1) == [HookChanged(off_hook=True, source="gpio")]
    assert events.arrival(0) - last_edge >= 0.05
    pin.drive_high()
    assert events.wait_count(2) == [HookChanged(off_hook=True, source="gpio"),
                                    HookChanged(off_hook=False, source="gpio")]


def test_hook_burst_returning_to_start_gives_no_event(factory, events, make_panel) -> None:
    factory.pin(HOOK).drive_high()
    make_panel(hook_debounce=0.03, long_press=0.3)
    pin = factory.pin(HOOK)

    for _ in range(5):
        pin.drive_low()
        pin.drive_high()
    # A long press is reported 0.3 s after it starts: ten settle times after the burst.
    factory.pin(FLAG).drive_low()

    assert events.wait_count(1) == [ButtonPressed(button="flag", long=True)]


def test_debounce_filter_merges_edges_inside_the_settle_time() -> None:
    hook = DebounceFilter(level=False, settle=0.03)
    hook.edge(True, now=10.000)
    hook.edge(False, now=10.010)
    hook.edge(True, now=10.020)
    assert hook.poll(10.049) is None
    assert hook.deadline == pytest.approx(10.050)
    assert hook.poll(10.050) is True
    assert hook.level is True
    assert hook.deadline is None
    assert hook.poll(11.0) is None


def test_debounce_filter_ignores_a_glitch_back_to_the_reported_level() -> None:
    hook = DebounceFilter(level=False, settle=0.03)
    hook.edge(True, now=1.0)
    hook.edge(False, now=1.001)
    assert hook.poll(2.0) is None
    assert hook.level is False


def test_debounce_filter_with_no_settle_time_reports_each_change() -> None:
    hook = DebounceFilter(level=False, settle=0.0)
    hook.edge(True, now=1.0)
    assert hook.poll(1.0) is True
    hook.edge(False, now=1.0)
    assert hook.poll(1.0) is False


# Buttons

@pytest.mark.parametrize("button, pin", [("pause", PAUSE), ("flag", FLAG)])
def test_press_released_before_long_press_is_short(factory, events, make_panel,
                                                   button, pin) -> None:
    make_panel(long_press=5.0)
    factory.pin(pin).drive_low()
    factory.pin(pin).drive_high()
    assert events.wait_count(1) == [ButtonPressed(button=button, long=False)]


@pytest.mark.parametrize("button, pin", [("pause", PAUSE), ("flag", FLAG)])
def test_held_press_is_long_once_and_release_adds_nothing(factory, events, make_panel,
                                                          button, pin) -> None:
    make_panel(long_press=0.05)
    pressed_at = time.monotonic()
    factory.pin(pin).drive_low()
    assert events.wait_count(1) == [ButtonPressed(button=button, long=True)]
    assert events.arrival(0) - pressed_at >= 0.05

    factory.pin(pin).drive_high()
    # A second press proves the panel is still listening and that the first added nothing more.
    factory.pin(pin).drive_low()
    factory.pin(pin).drive_high()
    assert events.wait_count(2) == [ButtonPressed(button=button, long=True),
                                    ButtonPressed(button=button, long=False)]


def test_buttons_with_pull_down_are_pressed_high(factory, events, make_panel) -> None:
    make_panel(buttons_pull_up=False, long_press=5.0)
    factory.pin(PAUSE).drive_high()
    factory.pin(PAUSE).drive_low()
    assert events.wait_count(1) == [ButtonPressed(button="pause", long=False)]


# Indicator patterns

@pytest.mark.parametrize("name, expected", [
    ("off", (0.0, 0.0, 0.0, 0.0)),
    ("idle", (0.0, 0.0, 0.15, 0.0)),
    ("recording", (1.0, 0.0, 1.0, 0.0)),
])
def test_steady_pattern_pin_levels(factory, make_panel, name, expected) -> None:
    panel = make_panel()
    panel.show("identify")
    panel.show(name)
    assert led_states(factory) == pytest.approx(expected)
    assert panel.pattern == name
    assert panel.rec_led_lit is (expected[0] == 1.0)


def test_paused_blinks_rec_slowly_under_steady_amber(factory, make_panel) -> None:
    panel = make_panel()
    panel.show("paused")

    on_time, off_time = phase_times(factory, REC, 2)
    assert on_time == pytest.approx(1.0, abs=0.25)
    assert off_time == pytest.approx(1.0, abs=0.25)
    assert [s.state for s in factory.pin(REC).states[1:4]] == [True, False, True]
    assert panel.rec_led_lit is True
    assert led_states(factory)[1:] == pytest.approx((1.0, 0.4, 0.0))
    assert [s.state for s in factory.pin(RED).states] == [0.0, 1.0]  # amber never flickered


def test_fault_blinks_red_fast_with_rec_off(factory, make_panel) -> None:
    panel = make_panel()
    panel.show("fault")

    phases = phase_times(factory, RED, 8)
    assert statistics.median(phases) == pytest.approx(0.1, abs=0.05)
    assert [s.state for s in factory.pin(RED).states[1:5]] == [1.0, 0.0, 1.0, 0.0]
    assert float(factory.pin(GREEN).state) == 0.0
    assert float(factory.pin(BLUE).state) == 0.0
    assert factory.pin(REC).state == 0.0
    assert panel.rec_led_lit is False


def test_identify_alternates_blue_and_white_fast(factory, make_panel) -> None:
    panel = make_panel()
    panel.show("identify")

    phases = phase_times(factory, RED, 8)
    assert statistics.median(phases) == pytest.approx(0.1, abs=0.05)
    red, green = factory.pin(RED).states, factory.pin(GREEN).states
    # Blue stays lit throughout; red and green join it together to make white.
    assert [s.state for s in red[1:5]] == [1.0, 0.0, 1.0, 0.0]
    assert [s.state for s in green[1:5]] == [1.0, 0.0, 1.0, 0.0]
    assert [s.state for s in factory.pin(BLUE).states[1:]] == [1.0]
    assert panel.rec_led_lit is False


def test_show_replaces_a_blinking_pattern(factory, make_panel) -> None:
    panel = make_panel()
    panel.show("fault")
    phase_times(factory, RED, 2)
    panel.show("recording")
    assert led_states(factory) == pytest.approx((1.0, 0.0, 1.0, 0.0))
    assert panel.pattern == "recording"


def test_status_can_show_a_fault_while_rec_stays_lit(factory, make_panel) -> None:
    panel = make_panel()
    panel.show("recording")
    panel.show_status("fault")

    phase_times(factory, RED, 2)
    assert factory.pin(REC).state == 1.0
    assert panel.rec_led_lit is True
    assert panel.pattern == "fault"

    panel.set_recording("paused")
    assert panel.rec_led_lit is True
    panel.set_recording(False)
    assert factory.pin(REC).state == 0.0
    assert panel.rec_led_lit is False


def test_patterns_table_has_the_documented_names() -> None:
    assert set(PATTERNS) == {"off", "idle", "recording", "paused", "fault", "private", "identify"}


def test_unknown_pattern_is_refused_with_the_known_names(make_panel) -> None:
    panel = make_panel()
    panel.show("idle")
    with pytest.raises(ValueError, match="blinky.*off, idle, recording, paused, fault, private, identify"):
        panel.show("blinky")
    with pytest.raises(ValueError, match="blinky"):
        panel.show_status("blinky")
    with pytest.raises(ValueError, match="'on'"):
        panel.set_recording("on")
    assert panel.pattern == "idle"


# Set-up errors and lifetime

def test_one_gpio_given_two_roles_is_a_config_error(make_panel) -> None:
    with pytest.raises(ConfigError, match="GPIO23.*gpio.pause_button.*gpio.flag_button"):
        make_panel(flag_button=PAUSE)


def test_gpio_held_by_another_device_names_pin_and_role(factory, make_panel) -> None:
    other = LED(HOOK, pin_factory=factory)
    with pytest.raises(DeviceError, match="GPIO26 for gpio.hook is already in use"):
        make_panel()
    other.close()
    # The failed panel released the pins it had taken, so a panel can be built now.
    assert make_panel().off_hook is not None


def test_pin_that_does_not_exist_is_a_config_error(make_panel) -> None:
    with pytest.raises(ConfigError, match="GPIO99 for gpio.rec_led"):
        make_panel(rec_led=99)


def test_status_led_without_pwm_is_a_device_error(events) -> None:
    factory = MockFactory()
    try:
        with pytest.raises(DeviceError, match="needs PWM"):
            Panel(rec_led=REC, status_led=(RED, GREEN, BLUE), pause_button=PAUSE,
                  flag_button=FLAG, hook=None, pin_factory=factory, on_event=events)
    finally:
        factory.close()


@pytest.mark.parametrize("setting", [{"long_press": 0}, {"hook_debounce": -0.01}])
def test_nonsense_timings_are_config_errors(make_panel, setting) -> None:
    with pytest.raises(ConfigError, match=next(iter(setting))):
        make_panel(**setting)


def test_missing_pin_factory_is_device_missing_not_simulation(monkeypatch, make_panel) -> None:
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "linetap-no-such-factory")
    with pytest.raises(DeviceMissing, match="lgpio.*`sim` board"):
        make_panel(pin_factory=None)
    assert Device.pin_factory is None


def test_close_twice_releases_pins_and_stops_the_debounce_thread(factory, events) -> None:
    with Panel(rec_led=REC, status_led=(RED, GREEN, BLUE), pause_button=PAUSE,
               flag_button=FLAG, hook=HOOK, pin_factory=factory, on_event=events) as panel:
        panel.show("fault")
    panel.close()

    assert "linetap-gpio-hook-debounce" not in {t.name for t in threading.enumerate()}
    with pytest.raises(DeviceError, match="closed"):
        panel.show("idle")
    with Panel(rec_led=REC, status_led=(RED, GREEN, BLUE), pause_button=PAUSE,
               flag_button=FLAG, hook=HOOK, pin_factory=factory) as again:
        assert again.pattern == "off"
