"""The audio checks: the codec streams, each channel carries signal, near and far are wired the right way.

How the signal checks decide:

- ``signal`` listens ``listen_s`` seconds (a test call should be in progress)
  and takes each channel's speech level as the 90th percentile of its 20 ms
  block levels. A channel below ``calls.vad_min_level_dbfs`` (the level the
  box takes for silence) has no signal; one with samples at full scale clips.
- ``channels`` plays a 1004 Hz test tone (the telephone test-tone frequency,
  at the warning tone's level, half a second) into the line-out channels and
  measures that one frequency on both inputs, before and after. The
  announcement is injected into the mic pair, the very pair the near input
  taps, so the tone must come back loudest on near; the far input hears it
  only through the phone's sidetone. Louder on far by 6 dB or more means near
  and far are swapped; heard on neither means the announcement does not
  reach the call; within 6 dB of each other cannot be decided and is a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from linetap.drivers.audio import Codec, tone
from linetap.firmware.board import USB_BRIDGES
from linetap.firmware.config import Config
from linetap.firmware.doctor.context import READ_TIMEOUT_S, STOP_SERVICE, Context, no_config, profile_ref
from linetap.firmware.doctor.report import CheckResult, failed, passed, skipped, warned
from linetap.firmware.dsp.levels import clip_count, peak_dbfs, rms_dbfs
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceMissing

TEST_TONE_HZ = 1004.0  # the telephone network's test-tone frequency: in band, unlike speech formants
TEST_TONE_S = 0.5
TONE_WINDOW_S = 1.0  # listened to before and after the tone starts; covers the codec's round trip
HEARD_ABOVE_BASELINE_DB = 10.0
SWAP_MARGIN_DB = 6.0
QUIET_PEAK_DBFS = -30.0  # speech peaks below this leave the recording noisy; aim for -12 dBFS


def check_audio(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("audio")
    audio = config.board_profile().audio
    device = audio.headset if audio.driver in USB_BRIDGES else audio.device
    details: dict[str, Any] = {"driver": audio.driver, "device": device, "rate": config.audio.rate,
                               "channels": audio.channels, "out_channels": audio.out_channels}
    try:
        codec = ctx.parts.codec(config)
    except DeviceMissing as exc:
        return failed("audio", f"audio device {device!r} not found",
                      f"set {'audio.headset / audio.gadget' if audio.driver in USB_BRIDGES else 'audio.device'} "
                      f"in {profile_ref(config)} to part of one of these names: "
                      f"{_audio_device_names()}; is the codec plugged in (`aplay -l`)?",
                      error=str(exc), **details)
    except (DeviceError, ConfigError) as exc:
        return failed("audio", str(exc), f"fix audio.* in {profile_ref(config)}, or use a codec "
                                         f"that takes these rates and channel counts", **details)
    try:
        codec.start()
        block = codec.read(timeout=READ_TIMEOUT_S)
    except DeviceError as exc:
        return failed("audio", f"the audio device opens but does not stream: {exc}",
                      f"{STOP_SERVICE}; then check `fuser -v /dev/snd/*` and `dmesg`", **details)
    finally:
        codec.close()
    if block is None:
        return failed("audio", "the audio device delivered no audio", f"{STOP_SERVICE}; check `dmesg`",
                      **details)
    name = getattr(codec, "device_name", "simulated codec")
    device_rate = getattr(codec, "device_rate", config.audio.rate)
    details.update(device_name=name, device_rate=device_rate)
    return passed("audio", f"{name!r} streams {audio.channels} in / {audio.out_channels} out at "
                           f"{device_rate} Hz for the {config.audio.rate} Hz pipeline", **details)


def _audio_device_names() -> str:
    from linetap.drivers.audio import list_devices

    names = [d.name for d in list_devices()]
    return ", ".join(repr(n) for n in names) if names else "none at all (`linetap devices` lists them)"


def _capture(codec: Codec, seconds: float) -> np.ndarray:
    """At least ``seconds`` of (near, far) frames from a started codec."""
    wanted = round(seconds * codec.rate)
    chunks, got = [], 0
    while got < wanted:
        block = codec.read(timeout=READ_TIMEOUT_S)
        if block is None:
            raise DeviceLost(f"the audio stream ended after {got / codec.rate:.2f} s of the "
                             f"{seconds:.2f} s asked for")
        chunks.append(block.frames)
        got += len(block.frames)
    return np.concatenate(chunks)


@contextmanager
def _started(ctx: Context, config: Config) -> Iterator[Codec]:
    codec = ctx.parts.codec(config)
    try:
        codec.start()
        yield codec
    finally:
        codec.close()


def check_signal(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("signal")
    ctx.say(f"listening {ctx.listen_s:g} s to both sides: keep a test call going, both people talking")
    try:
        with _started(ctx, config) as codec:
            frames = _capture(codec, ctx.listen_s)
    except (DeviceError, ConfigError) as exc:
        return skipped("signal", f"the audio device does not work (see the audio check): {exc}")
    block = codec.block_frames
    whole = frames[: len(frames) // block * block]
    levels = np.array([rms_dbfs(chunk) for chunk in whole.reshape(-1, block, 2)])
    speech = np.percentile(levels, 90, axis=0)
    peaks, clips = peak_dbfs(frames), clip_count(frames)
    floor = config.calls.vad_min_level_dbfs
    details = {"seconds": round(len(frames) / codec.rate, 3), "silence_below_dbfs": floor}
    for index, side in enumerate(("near", "far")):
        details[side] = {"speech_dbfs": round(float(speech[index]), 1),
                         "peak_dbfs": round(float(peaks[index]), 1), "clipped": int(clips[index])}
    summary = f"near {speech[0]:.0f} dBFS, far {speech[1]:.0f} dBFS (speech level over {ctx.listen_s:g} s)"
    silent = [side for index, side in enumerate(("near", "far")) if speech[index] < floor]
    if len(silent) == 2:
        return failed("signal", f"no signal on either channel: {summary}",
                      "make a test call while doctor listens; if one is going, the codec's line in is "
                      "not connected to the tap (T1/T2 secondaries to line in L/R, hardware/wiring.md)",
                      **details)
    if silent == ["far"]:
        return failed("signal", f"no signal on far channel: tap not connected? {summary}",
                      "connect the earpiece-pair tap (C2, R2, T2) to line in R; check the handset-cord "
                      "breakout's earpiece pins (hardware/wiring.md)", **details)
    if silent == ["near"]:
        return failed("signal", f"no signal on near channel: tap not connected? {summary}",
                      "connect the mic-pair tap (C1, R1, T1) to line in L; the mic pair is 20-30 dB "
                      "quieter, so also check the capture gain (`alsamixer`) (hardware/wiring.md)",
                      **details)
    hot = [side for index, side in enumerate(("near", "far")) if clips[index]]
    if hot:
        return warned("signal", f"{' and '.join(hot)} clips (samples at full scale): {summary}",
                      "lower the level: a larger load R3 across T2 for far, the capture gain in "
                      "`alsamixer` for both; aim for speech peaks near -12 dBFS", **details)
    quiet = [side for index, side in enumerate(("near", "far")) if peaks[index] < QUIET_PEAK_DBFS]
    if quiet:
        return warned("signal", f"{' and '.join(quiet)} is quiet (peaks below {QUIET_PEAK_DBFS:g} dBFS): "
                                f"{summary}",
                      "raise the level: the capture gain in `alsamixer` (then `alsactl store`), or a "
                      "lower R1 for near (not below 2.2 kOhm); aim for speech peaks near -12 dBFS",
                      **details)
    return passed("signal", summary, **details)


def _tone_dbfs(frames: np.ndarray, freq: float, rate: int) -> np.ndarray:
    """The level of one frequency in each column, in dBFS of a full-scale sine."""
    ref = np.exp(-2j * np.pi * freq * np.arange(len(frames)) / rate)
    amplitude = 2 * np.abs(ref @ frames.astype(np.float64)) / len(frames)
    return 20 * np.log10(np.maximum(amplitude, 1e-3) / 32767)


def check_channels(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("channels")
    audio = config.board_profile().audio
    if audio.driver in USB_BRIDGES:
        return skipped("channels", "the USB bridge mixes the announcement into what the PC receives "
                                   "digitally: there is no wiring to check (the usb-audio check sees both ways)")
    test_tone = tone(TEST_TONE_HZ, TEST_TONE_S, config.audio.rate, config.consent.warning_level_dbfs)
    try:
        with _started(ctx, config) as codec:
            before = _capture(codec, TONE_WINDOW_S)
            codec.play(test_tone)
            after = _capture(codec, TONE_WINDOW_S)
    except (DeviceError, ConfigError) as exc:
        return skipped("channels", f"the audio device does not work (see the audio check): {exc}")
    base = _tone_dbfs(before, TEST_TONE_HZ, codec.rate)
    heard = _tone_dbfs(after, TEST_TONE_HZ, codec.rate)
    rise = heard - base
    details = {"tone_hz": TEST_TONE_HZ, "line_out": list(audio.line_out),
               "near": {"before_dbfs": round(float(base[0]), 1), "after_dbfs": round(float(heard[0]), 1)},
               "far": {"before_dbfs": round(float(base[1]), 1), "after_dbfs": round(float(heard[1]), 1)}}
    on_near, on_far = rise >= HEARD_ABOVE_BASELINE_DB
    outputs = ", ".join(str(c) for c in audio.line_out)
    if not (on_near or on_far):
        return failed("channels", f"the test tone played on line out {outputs} came back on neither input: "
                                  f"the announcement does not reach the call",
                      f"wire line out (channel {outputs}) through R4/R6, T3, C3 and R5 onto the mic pair "
                      f"(hardware/wiring.md), or fix audio.line_out in {profile_ref(config)}", **details)
    if heard[1] - heard[0] >= SWAP_MARGIN_DB and on_far:
        return failed("channels", f"near and far look swapped: the test tone injected into the mic pair is "
                                  f"{heard[1] - heard[0]:.0f} dB louder on far (capture channel {audio.far}) "
                                  f"than on near (channel {audio.near})",
                      f"swap the line-in L and R wires at the codec, or exchange audio.near and audio.far in "
                      f"{profile_ref(config)}", **details)
    if heard[0] - heard[1] >= SWAP_MARGIN_DB:
        return passed("channels", f"test tone back on near {heard[0] - heard[1]:.0f} dB above far: "
                                  f"near and far as wired, announcement reaches the mic pair", **details)
    return warned("channels", f"the test tone is about as loud on near as on far "
                              f"({heard[0]:.0f} / {heard[1]:.0f} dBFS): cannot tell whether they are swapped",
                  "check that T1 taps the mic pair and T2 the earpiece pair (not both on one pair), and "
                  "that the two transformers' wires are not bundled together (hardware/wiring.md)", **details)
