"""The V.253 line session over a pty, against the simulated modem that ships with the package."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterator

import pytest
import serial.tools.list_ports

from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineState, Ring
from linetap.drivers.line import PROFILES, REOPEN_BACKOFF, ModemProfile, SimModem, V253Line
from linetap.drivers.v253 import V253ProtocolError
from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import ConfigError, DeviceError, DeviceMissing, DeviceTimeout

WAIT = 5.0
FAST = Backoff(initial=0.01, maximum=0.05)


class Delivered:
    """Collects what the line delivers, and the thread it was delivered on."""

    def __init__(self) -> None:
        self.events: queue.Queue[object] = queue.Queue()
        self.threads: set[str] = set()

    def __call__(self, event: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.put(event)

    def next(self) -> object:
        return self.events.get(timeout=WAIT)

    def take(self, count: int) -> list[object]:
        return [self.next() for _ in range(count)]

    def until(self, wanted: object) -> list[object]:
        """Every event up to and including ``wanted``."""
        seen = [self.next()]
        while seen[-1] != wanted:
            seen.append(self.next())
        return seen


def profile_without(name: str, *commands: str, base: str = "conexant") -> ModemProfile:
    """A profile like ``base`` that answers ERROR to ``commands``."""
    return ModemProfile(name, {c: a for c, a in PROFILES[base].answers.items() if c not in commands})


@pytest.fixture
def delivered() -> Delivered:
    return Delivered()


@pytest.fixture
def sim() -> Iterator[SimModem]:
    with SimModem("conexant") as modem:
        yield modem


@pytest.fixture
def line(sim: SimModem, clock: ManualClock, delivered: Delivered) -> Iterator[V253Line]:
    with V253Line(sim.path, clock=clock, on_event=delivered, command_timeout=1.0,
                  reopen_backoff=FAST) as opened:
        assert delivered.take(2) == [LineState("connecting"), LineState("ready")]
        yield opened


# -- initialisation ------------------------------------------------------------------


@pytest.mark.parametrize("profile, caller_id_command, tried", [
    ("conexant", "AT+VCID=1", ["AT+VCID=1"]),
    ("rockwell", "AT#CID=1", ["AT+VCID=1", "AT#CID=1"]),
])
def test_init_keeps_the_first_caller_id_command_the_modem_takes(
        profile: str, caller_id_command: str, tried: list[str], clock: ManualClock,
        delivered: Delivered) -> None:
    with SimModem(profile) as sim, V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert line.caller_id_command == caller_id_command
        assert line.state == "ready"
        commands = sim.commands
        assert [c for c in commands if "CID" in c] == tried
        assert commands[:3] == ["ATZ", "ATE0", "ATI"]
        assert commands[-1] == "AT+FCLASS=8"


def test_percent_ccid_is_the_last_resort(clock: ManualClock, delivered: Delivered) -> None:
    profile = ModemProfile("percent", {**profile_without("p", "AT+VCID=1").answers, "AT%CCID=1": ("OK",)})
    with SimModem(profile) as sim, V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert line.caller_id_command == "AT%CCID=1"
        assert [c for c in sim.commands if "CID" in c] == ["AT+VCID=1", "AT#CID=1", "AT%CCID=1"]


def test_a_modem_without_caller_id_still_comes_up(clock: ManualClock, delivered: Delivered,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with SimModem(profile_without("no-cid", "AT+VCID=1")) as sim, caplog.at_level(logging.WARNING), \
            V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert line.caller_id_command is None
        assert line.state == "ready"
        assert "event=caller_id_unsupported" in caplog.text
        sim.caller_id(number="5551234")  # a modem with caller ID off prints none
        sim.ring()
        assert delivered.take(3)[2] == Ring()


def test_identity_from_ati_and_ati3(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem("conexant") as sim, V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert line.identity == "56000 / linetap simulated modem, conexant profile"
    with SimModem("rockwell") as sim, V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert line.identity == "linetap simulated modem, rockwell profile"


def test_reset_falls_back_to_factory_defaults(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem(profile_without("no-atz", "ATZ")) as sim, \
            V253Line(sim.path, clock=clock, on_event=delivered) as line:
        assert sim.commands[:2] == ["ATZ", "AT&F"]
        assert line.state == "ready"


def test_line_select_is_sent_after_voice_mode(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem("conexant") as sim, \
            V253Line(sim.path, clock=clock, on_event=delivered, line_select="0"):
        assert sim.commands[-2:] == ["AT+FCLASS=8", "AT+VLS=0"]


def test_a_silent_modem_times_out_naming_command_and_port(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem("mute-ati") as sim:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout) as error:
            V253Line(sim.path, clock=clock, on_event=delivered, command_timeout=0.3)
        assert time.monotonic() - started < 3.0
        assert "'ATI'" in str(error.value)
        assert sim.path in str(error.value)
        assert "command_timeout" in str(error.value)
    assert delivered.events.empty()


def test_a_modem_without_voice_mode_is_refused(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem(profile_without("data-only", "AT+FCLASS=8")) as sim:
        with pytest.raises(DeviceError, match=r"AT\+FCLASS=8.*no voice mode"):
            V253Line(sim.path, clock=clock, on_event=delivered)


def test_an_answer_out_of_protocol_raises_a_protocol_error(clock: ManualClock, delivered: Delivered) -> None:
    profile = ModemProfile("confused", {**PROFILES["conexant"].answers, "ATE0": ("NO CARRIER",)})
    with SimModem(profile) as sim:
        with pytest.raises(V253ProtocolError, match=r"'ATE0'.*'NO CARRIER'"):
            V253Line(sim.path, clock=clock, on_event=delivered)


def test_pyserial_urls_are_opened_too(clock: ManualClock, delivered: Delivered) -> None:
    # loop:// echoes every command back and answers none: a modem that never says OK.
    with pytest.raises(DeviceTimeout, match=r"loop://.*'ATZ'"):
        V253Line("loop://", clock=clock, on_event=delivered, command_timeout=0.2)


def test_a_missing_port_lists_the_ports_that_exist(clock: ManualClock, delivered: Delivered) -> None:
    with pytest.raises(DeviceMissing) as error:
        V253Line("/dev/serial/by-id/usb-no-such-modem-if00", clock=clock, on_event=delivered)
    message = str(error.value)
    assert "/dev/serial/by-id/usb-no-such-modem-if00" in message
    present = sorted(port.device for port in serial.tools.list_ports.comports())
    assert f"serial ports here: {', '.join(present) if present else 'none'}" in message


def test_bad_settings_are_config_errors(clock: ManualClock, delivered: Delivered) -> None:
    with pytest.raises(ConfigError, match="command_timeout"):
        V253Line("loop://", clock=clock, on_event=delivered, command_timeout=0)
    with pytest.raises(ConfigError, match="initial"):
        Backoff(initial=5, maximum=1)
    with pytest.raises(ConfigError, match="jitter"):
        Backoff(jitter=1.5)


# -- events ------------------------------------------------------------------------


def test_ring_caller_id_handset_and_dtmf_arrive_in_order(sim: SimModem, line: V253Line,
                                                         delivered: Delivered) -> None:
    sim.ring()
    sim.caller_id(number="5551234", name="SMITH JOHN", date="1129", time="0930")
    sim.ring()
    sim.handset(off_hook=True)
    for digit in "9*#":
        sim.dtmf(digit)
    sim.handset(off_hook=False)
    assert delivered.take(8) == [
        Ring(),
        CallerId(number="5551234", name="SMITH JOHN", date="1129", time="0930"),
        Ring(),
        HookChanged(off_hook=True, source="modem"),
        DtmfDigit("9"), DtmfDigit("*"), DtmfDigit("#"),
        HookChanged(off_hook=False, source="modem"),
    ]
    assert delivered.threads == {"linetap-line-reader"}


def test_caller_id_sent_last_is_delivered_after_an_idle_gap(sim: SimModem, line: V253Line,
                                                           delivered: Delivered) -> None:
    sim.caller_id(number="P", date="0101", time="0000")
    assert delivered.next() == CallerId(date="0101", time="0000", reason_withheld="private")


def test_distinctive_ring_and_a_latin1_name_arrive_whole(sim: SimModem, line: V253Line,
                                                         delivered: Delivered) -> None:
    # Rockwell with distinctive ring on in its stored profile, on a Finnish line (Latin-1 name).
    sim.send(b"\r\nRING 2\r\n\r\nDATE = 0612\r\nTIME = 0915\r\nNAME = M\xe4kinen\r\n"
             b"NMBR = 0401234567\r\n\r\nRING 2\r\n")
    assert delivered.take(3) == [
        Ring("2"), CallerId(number="0401234567", name="Mäkinen", date="0612", time="0915"), Ring("2")]
    assert line.dropped == 0


def test_voice_mode_caller_id_framed_as_a_complex_event_drops_nothing(sim: SimModem, line: V253Line,
                                                                      delivered: Delivered) -> None:
    # Conexant/CX93001 in voice mode (AT+FCLASS=8, AT+VCID=1): DLE R, DLE X <caller ID> DLE ., DLE R.
    sim.send(b"\x10R\x10XDATE=0321\r\nTIME=1405\r\nNMBR=5045551234\r\nNAME=A N OTHER\r\n\x10.\x10R")
    assert delivered.take(3) == [
        Ring(), CallerId(number="5045551234", name="A N OTHER", date="0321", time="1405"), Ring()]
    assert line.dropped == 0


def test_the_simulated_modem_sends_distinctive_rings_8bit_names_and_framed_caller_id(
        sim: SimModem, line: V253Line, delivered: Delivered) -> None:
    sim.ring("B")
    sim.caller_id(number="0401234567", name="Järvinen", encoding="latin-1")
    sim.ring("B")
    sim.caller_id(number="Restricted", name="Mäkinen", framed=True)
    assert delivered.take(4) == [
        Ring("B"), CallerId(number="0401234567", name="Järvinen"), Ring("B"),
        CallerId(name="Mäkinen", reason_withheld="private")]
    assert line.dropped == 0


def test_noise_is_counted_and_does_not_hide_the_next_ring(sim: SimModem, line: V253Line,
                                                        delivered: Delivered) -> None:
    sim.send(bytes(range(0x80, 0x100)) + b"\r\n" + b"z" * 2000 + b"\r\n")
    sim.ring()
    assert delivered.next() == Ring()
    assert line.dropped == 2


def test_the_reader_thread_is_named_and_stops_on_close(sim: SimModem, clock: ManualClock,
                                                       delivered: Delivered) -> None:
    line = V253Line(sim.path, clock=clock, on_event=delivered)
    assert "linetap-line-reader" in {t.name for t in threading.enumerate()}
    line.close()
    line.close()
    assert "linetap-line-reader" not in {t.name for t in threading.enumerate()}


# -- losing the modem ------------------------------------------------------------------


def test_unplug_then_replug_comes_back_ready(sim: SimModem, line: V253Line, clock: ManualClock,
                                             delivered: Delivered) -> None:
    clock.advance(60)
    sim.unplug()
    lost = delivered.next()
    assert isinstance(lost, LineState) and lost.state == "lost" and lost.detail
    assert line.state == "lost"
    assert line.state_since == clock.monotonic()
    assert line.reconnects == 0
    sim.replug()
    assert delivered.until(LineState("ready"))[-2:] == [LineState("connecting"), LineState("ready")]
    assert line.state == "ready"
    assert line.reconnects == 1
    assert sim.commands.count("AT+FCLASS=8") == 2
    sim.ring()
    assert delivered.next() == Ring()


def test_a_port_back_but_silent_is_retried(clock: ManualClock, delivered: Delivered) -> None:
    with SimModem("conexant") as sim, V253Line(sim.path, clock=clock, on_event=delivered,
                                                command_timeout=0.2, reopen_backoff=FAST) as line:
        delivered.take(2)
        sim.unplug()
        assert delivered.next().state == "lost"
        sim.profile = PROFILES["mute-ati"]
        sim.replug()
        assert delivered.next() == LineState("connecting")
        failed = delivered.next()
        assert failed.state == "lost" and "DeviceTimeout" in failed.detail
        sim.profile = PROFILES["conexant"]
        delivered.until(LineState("ready"))
        assert line.reconnects == 1


def test_close_while_waiting_to_reopen_is_prompt(sim: SimModem, clock: ManualClock,
                                                 delivered: Delivered) -> None:
    line = V253Line(sim.path, clock=clock, on_event=delivered,
                    reopen_backoff=Backoff(initial=30.0, jitter=0))
    delivered.take(2)
    sim.unplug()
    assert delivered.next().state == "lost"
    started = time.monotonic()
    line.close()
    assert time.monotonic() - started < 2.0
    assert "linetap-line-reader" not in {t.name for t in threading.enumerate()}


def test_reopen_backoff_doubles_up_to_its_maximum_with_jitter() -> None:
    delays = REOPEN_BACKOFF.delays(random.Random(7))
    waits = [next(delays) for _ in range(10)]
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    for wait, expected in zip(waits, nominal):
        assert expected * 0.8 <= wait <= expected
    assert len(set(waits)) > 1


# -- the simulated modem itself -----------------------------------------------------------


def test_sim_unplug_removes_the_link_and_replug_restores_it() -> None:
    with SimModem() as sim:
        assert sim.plugged
        sim.unplug()
        assert not sim.plugged
        sim.replug()
        assert sim.plugged
    assert not sim.plugged


def test_sim_refuses_what_a_modem_cannot_do() -> None:
    with pytest.raises(ValueError, match="known profiles"):
        SimModem("no-such-chipset")
    with SimModem() as sim:
        with pytest.raises(ValueError, match="DTMF digit"):
            sim.dtmf("X")
    with pytest.raises(DeviceError, match="closed"):
        sim.ring()
