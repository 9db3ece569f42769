"""The USB handset bridge, sans-IO: the core between a simulated headset and PC on their own clocks.

Every run is driven by simulated device periods in time order (``SimRig``),
so an hour of call takes seconds and no test sleeps. The headset's and the
PC's clocks are 300 ppm off nominal in opposite directions (600 ppm apart),
each device's callbacks late by a random jitter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from linetap.drivers.audio import Block
from linetap.drivers.usbbridge import (
    BridgeCore,
    BridgeSettings,
    FractionalResampler,
    SimEndpoint,
    SimRig,
    SimUsbBridge,
)
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import ConfigError, DeviceLost


def tone(frequency: float, rate: int, amplitude: float = 8000.0) -> Callable[[int, int], np.ndarray]:
    def signal(first: int, count: int) -> np.ndarray:
        n = first + np.arange(count)
        return np.rint(amplitude * np.sin(2 * np.pi * frequency * n / rate)).astype(np.int16)
    return signal


def noise(seed: int) -> Callable[[int, int], np.ndarray]:
    """Speech-like wide-band noise that is a function of the sample index (so an hour needs no memory)."""
    def signal(first: int, count: int) -> np.ndarray:
        n = first + np.arange(count, dtype=np.uint64)
        hashed = (n * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(65521)
        return (hashed.astype(np.int64) - 32760).astype(np.int16) // 4
    return signal


def rig(*, rate: int = 16000, headset_rate: int = 16000, gadget_rate: int = 48000, block_ms: float = 10.0,
        headset_ppm: float = 300, host_ppm: float = -300, jitter_s: float = 0.0005, keep: bool = True,
        mic: object = None, pc: object = None, **settings: object) -> SimRig:
    s = BridgeSettings(rate=rate, block_frames=rate // 50, headset_rate=headset_rate, gadget_rate=gadget_rate,
                       device_block_ms=block_ms, **settings)
    headset = SimEndpoint("headset", rate=headset_rate, block=s.headset_block, ppm=headset_ppm,
                          jitter_s=jitter_s, seed=1, keep=keep,
                          signal=mic if mic is not None else tone(440, headset_rate))
    host = SimEndpoint("host", rate=gadget_rate, block=s.gadget_block, ppm=host_ppm, jitter_s=jitter_s,
                       seed=2, start_s=0.0031, keep=keep,
                       signal=pc if pc is not None else tone(1000, gadget_rate))
    return SimRig(BridgeCore(s), headset, host)


def collect(the_rig: SimRig, seconds: float) -> np.ndarray:
    """Run ``seconds`` and return every recorded block, stacked."""
    blocks: list[np.ndarray] = []

    def take(r: SimRig) -> None:
        while (frames := r.core.take_block()) is not None:
            blocks.append(frames)

    the_rig.run(seconds, take)
    return np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int16)


def seen(frequency: float, sender_ppm: float, receiver_ppm: float) -> float:
    """A tone's frequency as counted in the receiver's samples at its nominal rate."""
    return frequency * (1 + sender_ppm * 1e-6) / (1 + receiver_ppm * 1e-6)


def clean_db(signal: np.ndarray, frequency: float, rate: int, window: int) -> float:
    """The worst signal-to-residual ratio over windows, after fitting a tone with a slowly moving phase.

    A dropout, a click or a step of the resampler shows as a window with a poor ratio.
    """
    worst = np.inf
    t = np.arange(window) / rate
    w = 2 * np.pi * frequency * t
    basis = np.stack([np.sin(w), np.cos(w), t * np.sin(w), t * np.cos(w), t * t * np.sin(w),
                      t * t * np.cos(w)], axis=1)
    for start in range(0, len(signal) - window + 1, window):
        piece = signal[start:start + window].astype(np.float64)
        fit, *_ = np.linalg.lstsq(basis, piece, rcond=None)
        residual = piece - basis @ fit
        worst = min(worst, 10 * np.log10(np.mean(piece ** 2) / max(np.mean(residual ** 2), 1e-9)))
    return worst


# ------------------------------------------------------------------ clocks --

def test_an_hour_with_the_clocks_600_ppm_apart_has_no_dropout_and_bounded_latency() -> None:
    """An hour at +300 ppm (headset) against -300 ppm (PC), at 16 kHz with 100 ms periods so it runs in seconds.

    Checked all along: no underrun or overrun either way, the added latency inside its bounds
    once converged, the learnt mismatch at 600 ppm, and both taps sample-exact with what passed.
    """
    the_rig = rig(gadget_rate=16000, block_ms=100, jitter_s=0.002, keep=False, mic=noise(1))
    core = the_rig.core
    received: list[np.ndarray] = []
    the_rig.headset._on_receive = lambda samples, t: received.append(samples.copy())
    blocks: list[np.ndarray] = []
    times, uplink, downlink = [], [], []

    def step(r: SimRig) -> None:
        times.append(r.now)
        uplink.append(core.uplink.latency_s())
        downlink.append(core.downlink.latency_s())
        while (frames := core.take_block()) is not None:
            blocks.append(frames)

    recorded, far_pending = 0, np.zeros(0, np.int16)
    for minute in range(60):
        the_rig.run(60.0, step)
        got = np.concatenate(blocks)
        blocks.clear()
        assert np.array_equal(got[:, 0], noise(1)(recorded, len(got))), f"near differs in minute {minute}"
        far = np.concatenate([far_pending, *received])
        received.clear()
        assert np.array_equal(got[:, 1], far[:len(got)]), f"far differs in minute {minute}"
        far_pending = far[len(got):]
        recorded += len(got)
    stats = core.stats()
    converged = np.array(times) > 60
    for name, values in (("uplink", np.array(uplink)), ("downlink", np.array(downlink))):
        direction = getattr(stats, name)
        assert (direction.underruns, direction.overruns) == (0, 0), name
        target = getattr(core, name).target_s
        assert values.max() < target + 0.015, (name, "throughout", values.max())
        settled = values[converged]
        assert target - 0.012 < settled.min() and settled.max() < target + 0.012, (name, settled.min(), settled.max())
    # The learnt mismatch wanders with the 2 ms callback jitter seen through 100 ms periods.
    assert stats.uplink.ppm == pytest.approx(600, abs=40)
    assert stats.downlink.ppm == pytest.approx(-600, abs=40)
    assert recorded == pytest.approx(3600 * 16000 * (1 + 300e-6), abs=2 * 16000 * 0.1 + 320)


def test_the_other_way_round_the_fifo_converges_and_the_pc_hears_a_clean_tone() -> None:
    """Headset -300 ppm, PC +300 ppm, real 10 ms periods at 48 kHz: converges, and the audio stays clean."""
    the_rig = rig(rate=48000, headset_rate=48000, headset_ppm=-300, host_ppm=300, mic=tone(1000, 48000))
    the_rig.run(120.0)
    stats = the_rig.core.stats()
    assert (stats.uplink.underruns, stats.uplink.overruns, stats.downlink.underruns,
            stats.downlink.overruns) == (0, 0, 0, 0)
    assert stats.uplink.ppm == pytest.approx(-600, abs=10)
    # 20 ms one way at most, with 10 ms periods (the target: 5 ms margin plus one period).
    assert stats.uplink.latency_ms < 20 and stats.downlink.latency_ms < 20
    pc = the_rig.host.received
    # After the start (the FIFO's first silence), 100 ms windows of the PC's signal fit a clean tone.
    assert clean_db(pc[48000 * 5:], seen(1000, -300, 300), 48000, 4800) > 60
    speaker = the_rig.headset.received
    assert clean_db(speaker[48000 * 5:], seen(1000, 300, -300), 48000, 4800) > 60


def test_a_late_pump_within_the_margin_costs_no_dropout() -> None:
    """The real pump is a Python thread: it may take each period's input up to 4 ms late."""
    s = BridgeSettings(rate=16000, block_frames=320, headset_rate=48000, gadget_rate=48000)
    headset = SimEndpoint("headset", rate=48000, block=480, ppm=300, jitter_s=0.0005, seed=1,
                          signal=tone(440, 48000), keep=False)
    host = SimEndpoint("host", rate=48000, block=480, ppm=-300, jitter_s=0.0005, seed=2, start_s=0.0031,
                       signal=tone(1000, 48000), keep=False)
    late = SimRig(BridgeCore(s), headset, host, pump_delay_s=0.004)
    recorded = collect(late, 120.0)
    stats = late.core.stats()
    assert (stats.uplink.underruns, stats.uplink.overruns, stats.downlink.underruns,
            stats.downlink.overruns) == (0, 0, 0, 0)
    assert len(recorded) == pytest.approx(120 * 16000 * (1 + 300e-6), abs=2 * 320)
    assert clean_db(recorded[16000 * 5:, 1], seen(1000, -300, 300), 16000, 1600) > 60


def test_a_rate_step_is_followed_without_a_dropout() -> None:
    the_rig = rig(block_ms=20)
    the_rig.run(60.0)
    the_rig.headset.set_ppm(-300)  # a 600 ppm step: the headset's clock now matches the PC's other side
    the_rig.run(120.0)
    stats = the_rig.core.stats()
    assert (stats.uplink.underruns, stats.uplink.overruns, stats.downlink.underruns,
            stats.downlink.overruns) == (0, 0, 0, 0)
    assert stats.uplink.ppm == pytest.approx(0, abs=10)
    assert abs(stats.uplink.level_ms - the_rig.core.uplink.target_s * 1000) < 3


def test_a_clock_jump_costs_one_resync_then_the_bridge_settles() -> None:
    the_rig = rig(block_ms=10)
    the_rig.run(30.0)
    the_rig.headset.jump(0.060)  # the headset's periods stop for 60 ms, then carry on
    the_rig.run(1.0)
    after_jump = the_rig.core.stats()
    assert after_jump.uplink.underruns <= 1 and after_jump.downlink.overruns <= 1
    the_rig.run(60.0)
    settled = the_rig.core.stats()
    assert (settled.uplink.underruns, settled.uplink.overruns, settled.downlink.underruns,
            settled.downlink.overruns) == (after_jump.uplink.underruns, after_jump.uplink.overruns,
                                           after_jump.downlink.underruns, after_jump.downlink.overruns)
    assert settled.downlink.latency_ms < 20 and settled.uplink.latency_ms < 20


def test_the_pc_suspending_silences_the_far_side_and_the_recording_goes_on() -> None:
    the_rig = rig(block_ms=10)
    collect(the_rig, 20.0)
    the_rig.host.pause(until=the_rig.now + 5.0)
    recorded = collect(the_rig, 10.0)
    assert len(recorded) == pytest.approx(10 * 16000 * (1 + 300e-6), abs=2 * 320)
    assert not recorded[16000 * 1:16000 * 4, 1].any()  # far is silence while the PC sleeps
    assert recorded[16000 * 7:, 1].any()  # and back after it wakes
    stats = the_rig.core.stats()
    # The PC stopping mid-stream is one underrun on its way to the headset, then silence, uncounted.
    assert (stats.uplink.underruns, stats.uplink.overruns, stats.downlink.underruns,
            stats.downlink.overruns) == (0, 0, 1, 0)


# ------------------------------------------------------------------ taps --

@pytest.mark.parametrize("rate, headset_rate", [(16000, 16000), (48000, 48000), (16000, 48000),
                                                (16000, 44100), (16000, 8000), (8000, 32000)])
def test_the_taps_are_what_passed(rate: int, headset_rate: int) -> None:
    """Near is the mic as it entered the uplink, far what the headset was given: sample for sample
    at the headset rate, or exactly their fixed conversion to the recording rate."""
    mic = noise(3)
    the_rig = rig(rate=rate, headset_rate=headset_rate, mic=mic)
    recorded = collect(the_rig, 10.0)
    sent = mic(0, the_rig.headset.sent)
    given = the_rig.headset.received
    if headset_rate != rate:
        sent = FractionalResampler(headset_rate, rate).process(sent)
        given = FractionalResampler(headset_rate, rate).process(given)
    assert len(recorded) > 9 * rate
    assert np.array_equal(recorded[:, 0], sent[:len(recorded)])
    assert np.array_equal(recorded[:, 1], given[:len(recorded)])
    assert recorded[:, 1].any()


@pytest.mark.parametrize("headset_rate", [44100, 8000])
def test_a_headset_at_a_rate_the_gadget_does_not_offer_is_converted(headset_rate: int) -> None:
    the_rig = rig(headset_rate=headset_rate, gadget_rate=48000, mic=tone(700, headset_rate),
                  pc=tone(1100, 48000))
    recorded = collect(the_rig, 30.0)
    stats = the_rig.core.stats()
    assert (stats.uplink.underruns, stats.downlink.underruns, stats.uplink.overruns,
            stats.downlink.overruns) == (0, 0, 0, 0)
    assert clean_db(recorded[16000 * 5:, 0], 700, 16000, 1600) > 60
    # far: the PC's tone, moved to the headset's clock (600 ppm slower), then to the recording rate.
    far_db = clean_db(recorded[16000 * 5:, 1], seen(1100, -300, 300), 16000, 1600)
    assert far_db > (60 if headset_rate > 8000 else 40)
    assert clean_db(the_rig.host.received[48000 * 5:], seen(700, 300, -300), 48000, 4800) > 60


# ------------------------------------------------------------------ consent --

def test_consent_goes_to_the_pc_and_the_agent_and_into_the_recording_like_an_analog_board() -> None:
    mic = tone(440, 16000, amplitude=3000)
    the_rig = rig(mic=mic, pc=tone(1000, 48000, amplitude=3000))
    core = the_rig.core
    before = collect(the_rig, 5.0)
    prompt = tone(1400, 16000, amplitude=4000)(1, 16000)  # a 1 s warning tone (its first sample not 0)
    core.play(prompt)
    assert core.play_pending() == 16000
    recorded = collect(the_rig, 3.0)
    assert core.play_pending() == 0
    # The recorded near side is the mic plus the prompt, exactly: the prompt starts at the first
    # headset period after play(), so find it by what is left after taking the mic away.
    mic_part = mic(len(before), len(recorded))
    extra = recorded[:, 0].astype(np.int32) - mic_part
    begin = int(np.flatnonzero(extra)[0])
    assert np.array_equal(extra[begin:begin + 16000], prompt)
    assert not extra[begin + 16000:].any()
    assert begin < 2 * 160  # from the next headset period on
    # The far side stays what the PC played; the agent heard the prompt on top of it.
    heard = the_rig.headset.received[-3 * 16000:].astype(np.int32)
    far = recorded[:, 1].astype(np.int32)
    assert np.abs(heard[-len(far):] - far).max() > 3000
    # The PC received it (resampled to its clock): 1400 Hz is loud in the uplink while it plays.
    pc = the_rig.host.received[-3 * 48000:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pc[: 48000]))
    assert spectrum[1400] > 10 * spectrum[2000]


def test_stop_playing_cuts_the_prompt_short_and_prompt_to_agent_can_be_off() -> None:
    the_rig = rig(prompt_to_agent=False, mic=tone(440, 16000, amplitude=0), pc=tone(1, 48000, amplitude=0))
    core = the_rig.core
    the_rig.run(2.0)
    core.play(tone(1400, 16000)(0, 32000))
    the_rig.run(0.5)
    assert 0 < core.play_pending() < 32000
    core.stop_playing()
    assert core.play_pending() == 0
    the_rig.run(1.0)
    assert not the_rig.headset.received.any()  # the agent heard nothing of it


# ------------------------------------------------------------------ codec --

def test_the_simulated_bridge_is_a_codec_and_reports_a_lost_headset_after_its_blocks() -> None:
    clock = ManualClock()
    codec = SimUsbBridge(clock=clock, rate=16000, block_frames=320)
    codec.start()
    blocks = [codec.read(timeout=1.0) for _ in range(500)]
    assert all(isinstance(b, Block) and b.frames.shape == (320, 2) for b in blocks)
    assert [b.seq for b in blocks] == list(range(500))
    assert blocks[-1].t == pytest.approx(499 * 0.02)
    assert clock.monotonic() - 1000 == pytest.approx(10.0, abs=0.05)  # paced by the simulated devices
    codec.play(np.full(1600, 1000, np.int16))
    assert codec.play_pending() == 1600
    codec.rig.headset.unplug(at=codec.rig.now + 0.5)
    got = []
    with pytest.raises(DeviceLost, match="headset"):
        while True:
            got.append(codec.read(timeout=1.0))
    assert len(got) == pytest.approx(25, abs=2)
    assert codec.stats().blocks == 500 + len(got)
    codec.close()
    assert codec.read() is None


def test_the_simulated_bridge_plays_its_sources_like_sim_codec_and_ends_with_them() -> None:
    near = tone(440, 16000)(0, 32000)
    far = tone(1000, 16000)(0, 24000)
    settings = BridgeSettings(rate=16000, block_frames=320, headset_rate=16000)
    codec = SimUsbBridge(near, far, clock=ManualClock(), settings=settings)
    codec.start()
    blocks = []
    while (block := codec.read(timeout=1.0)) is not None:
        blocks.append(block.frames)
    recorded = np.concatenate(blocks)
    assert len(recorded) == pytest.approx(32000 + 1600, abs=640)  # the sources, and 0.1 s to drain the PC's
    assert np.array_equal(recorded[:32000, 0], near)  # the headset runs at the recording rate
    # far crossed the PC's 48 kHz and two clocks: the same tone, a little later, then silence.
    spectrum = np.abs(np.fft.rfft(recorded[4000:20000, 1].astype(float)))
    assert np.argmax(spectrum) == 1000
    assert not recorded[26000:, 1].any()
    codec.close()


# ------------------------------------------------------------------ hostile parameters --

@pytest.mark.parametrize("field, value", [
    ("rate", 44100), ("rate", True), ("rate", "16000"), ("headset_rate", 12345), ("headset_rate", -48000),
    ("gadget_rate", 44100), ("gadget_rate", 8000), ("block_frames", 0), ("block_frames", 10 ** 9),
    ("block_frames", 2.5), ("block_frames", True), ("device_block_ms", 0), ("device_block_ms", 1000),
    ("device_block_ms", float("nan")), ("margin_ms", float("inf")), ("margin_ms", -1), ("max_ppm", 0),
    ("max_ppm", 10 ** 7), ("prompt_to_agent", "yes"),
])
def test_hostile_settings_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        BridgeSettings(**{field: value})


@pytest.mark.parametrize("kwargs, name", [({"ppm": 1e6}, "ppm"), ({"ppm": float("nan")}, "ppm"),
                                          ({"jitter_s": 0.5}, "jitter_s"), ({"jitter_s": -1}, "jitter_s")])
def test_hostile_simulated_devices_are_refused_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        SimEndpoint("headset", rate=48000, block=480, **kwargs)


def test_a_gadget_rate_switch_restarts_the_directions_and_refuses_rates_the_gadget_lacks() -> None:
    core = BridgeCore(BridgeSettings())
    core.play(np.ones(320, np.int16))
    core.set_gadget_rate(16000)
    assert (core.settings.gadget_rate, core.uplink.out_rate, core.downlink.resampler.in_rate) == (16000,) * 3
    assert core.play_pending() == 320  # the headset's side carries on
    with pytest.raises(ConfigError, match="gadget_rate"):
        core.set_gadget_rate(44100)


def test_devices_that_do_not_match_the_settings_are_refused() -> None:
    s = BridgeSettings()
    with pytest.raises(ConfigError, match="pump_delay_s"):
        SimRig(BridgeCore(s), SimEndpoint("headset", rate=48000, block=480),
               SimEndpoint("host", rate=48000, block=480), pump_delay_s=1.0)
    with pytest.raises(ConfigError, match="do not match"):
        SimRig(BridgeCore(s), SimEndpoint("headset", rate=44100, block=441),
               SimEndpoint("host", rate=48000, block=480))
