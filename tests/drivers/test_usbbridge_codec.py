"""The thin codec of the USB bridge, mostly through its seam: a fake ``sounddevice`` module.

Why not the ALSA ``file`` plugin device the analog codec's contract test
uses for everything: its ``null`` slave is not paced, so each of the two
duplex streams runs as fast as the CPU lets it. The bridge exists to match
two device clocks; two free-running streams have no clock to match, and the
FIFOs would only measure thread scheduling. So the tests play both devices'
audio threads themselves: they call each stream's callback, period by
period, in time order, as PortAudio would, on a ManualClock, and ``read()``
pumps as on the service's reader thread. The clocks, the hour and the
quality are the core's tests (test_usbbridge.py).

What the file plugin can check, it does (last test, in a subprocess whose
HOME holds the ``.asoundrc``, as in test_audio_contract.py): the real
PortAudio streams open on two named devices, the headset's captured file
comes out as the recording's near side sample for sample, and a headset
whose playback fails (``/dev/full``) ends its stream: DeviceLost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linetap.drivers.usbbridge import UsbBridgeCodec
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import (
    ConfigError,
    DeviceError,
    DeviceLost,
    DeviceMissing,
    DeviceTimeout,
    LinetapError,
)


class FakeStream:
    def __init__(self, sd: FakeSoundDevice, *, device: tuple[int, int], samplerate: int, blocksize: int,
                 dtype: str, channels: tuple[int, int], callback: Any, finished_callback: Any) -> None:
        assert dtype == "int16" and device[0] == device[1]
        if sd.refuse_open.get(device[0]):
            raise sd.PortAudioError("Device unavailable")
        self.device, self.rate, self.block, self.channels = device[0], samplerate, blocksize, channels
        self.callback, self.finished_callback = callback, finished_callback
        self.active = False
        self.closed = False
        sd.streams.append(self)

    def start(self) -> None:
        self.active = True

    def abort(self, ignore_errors: bool = False) -> None:
        self.active = False

    def close(self, ignore_errors: bool = False) -> None:
        self.closed = True

    def period(self, indata: np.ndarray, status: object = None) -> np.ndarray:
        """One period of PortAudio's audio thread: input in, what the callback played out."""
        outdata = np.full((self.block, self.channels[1]), 12345, dtype=np.int16)
        self.callback(indata.reshape(self.block, self.channels[0]), outdata, self.block, None, status)
        return outdata


class FakeSoundDevice(types.ModuleType):
    """What the codec uses of ``sounddevice``: query, rate checks, Stream, PortAudioError."""

    class PortAudioError(Exception):
        pass

    def __init__(self, devices: list[dict[str, Any]], rates: dict[int, set[int]]) -> None:
        super().__init__("sounddevice")
        self.devices, self.rates = devices, rates
        self.streams: list[FakeStream] = []
        self.refuse_open: dict[int, bool] = {}
        self.Stream = lambda **kwargs: FakeStream(self, **kwargs)

    def query_devices(self) -> list[dict[str, Any]]:
        return self.devices

    def _check(self, device: int, samplerate: int) -> None:
        if samplerate not in self.rates[device]:
            raise self.PortAudioError("Invalid sample rate")

    def check_input_settings(self, device: int, *, channels: int, dtype: str, samplerate: int) -> None:
        self._check(device, samplerate)

    def check_output_settings(self, device: int, *, channels: int, dtype: str, samplerate: int) -> None:
        self._check(device, samplerate)


def device(index: int, name: str, inputs: int, outputs: int) -> dict[str, Any]:
    return {"index": index, "name": name, "max_input_channels": inputs, "max_output_channels": outputs,
            "default_samplerate": 48000.0}


def fake_sd(headset_rates: set[int] | None = None) -> FakeSoundDevice:
    devices = [device(0, "bcm2835 Headphones", 0, 2), device(1, "Jabra EVOLVE 30 II: USB Audio (hw:2,0)", 1, 2),
               device(2, "UAC2_Gadget: USB Audio (hw:3,0)", 2, 2)]
    return FakeSoundDevice(devices, {0: {48000}, 1: headset_rates or {16000, 48000}, 2: {48000}})


def tone(frequency: float, rate: int, first: int, count: int) -> np.ndarray:
    n = first + np.arange(count)
    return np.rint(6000 * np.sin(2 * np.pi * frequency * n / rate)).astype(np.int16)


class Bench:
    """Both streams' periods in time order: the headset 200 ppm fast, the PC 200 ppm slow."""

    def __init__(self, codec: UsbBridgeCodec, sd: FakeSoundDevice, clock: ManualClock) -> None:
        self.codec, self.sd, self.clock = codec, sd, clock
        self.headset = sd.streams[0]
        self.next = {"headset": clock.monotonic() + 0.01, "gadget": clock.monotonic() + 0.0137}
        self.period = {"headset": 0.01 / (1 + 200e-6), "gadget": 0.01 / (1 - 200e-6)}
        self.sent = {"headset": 0, "gadget": 0}
        self.out: dict[str, list[np.ndarray]] = {"headset": [], "gadget": []}
        self.gadget_gone = False

    @property
    def gadget(self) -> FakeStream:
        """The gadget's stream: the latest one opened (it is reopened after the PC went away)."""
        return [stream for stream in self.sd.streams if stream.device == 2][-1]

    def run(self, seconds: float) -> list[np.ndarray]:
        blocks: list[np.ndarray] = []
        end = self.clock.monotonic() + seconds
        while min(self.next.values()) <= end:
            name = min(self.next, key=self.next.get)
            self.clock.advance(self.next[name] - self.clock.monotonic())
            self.next[name] += self.period[name]
            if name == "gadget" and self.gadget_gone:
                continue
            stream = self.headset if name == "headset" else self.gadget
            frequency = 440 if name == "headset" else 1000
            indata = tone(frequency, stream.rate, self.sent[name], stream.block)
            indata = np.repeat(indata[:, None], stream.channels[0], axis=1)
            self.sent[name] += stream.block
            self.out[name].append(stream.period(indata))
            while True:
                try:
                    blocks.append(self.codec.read(timeout=0).frames)
                except DeviceTimeout:
                    break
        return blocks


@pytest.fixture
def bench() -> Bench:
    sd, clock = fake_sd(), ManualClock()
    codec = UsbBridgeCodec("jabra", "uac2", clock=clock, rate=16000, block_frames=320, sd=sd)
    codec.start()
    yield Bench(codec, sd, clock)
    codec.close()


def test_it_opens_both_devices_at_their_rates_and_bridges_both_ways(bench: Bench) -> None:
    codec, headset, gadget = bench.codec, bench.headset, bench.gadget
    assert (headset.device, headset.rate, headset.block, headset.channels) == (1, 48000, 480, (1, 2))
    assert (gadget.device, gadget.rate, gadget.block, gadget.channels) == (2, 48000, 480, (2, 2))
    blocks = np.concatenate(bench.run(10.0))
    assert len(blocks) == pytest.approx(10 * 16000, abs=2 * 320)
    # near: the headset's 440 Hz, far: the PC's 1 kHz, both at the recording rate.
    for column, frequency in ((0, 440), (1, 1000)):
        spectrum = np.abs(np.fft.rfft(blocks[16000:16000 * 9, column].astype(float)))
        assert abs(np.argmax(spectrum) / 8 - frequency) < 2
    # What each device was given: the other's tone, on every channel.
    pc = np.concatenate(bench.out["gadget"])
    speaker = np.concatenate(bench.out["headset"])
    assert np.array_equal(pc[:, 0], pc[:, 1]) and np.array_equal(speaker[:, 0], speaker[:, 1])
    for signal, frequency in ((pc[48000:, 0], 440), (speaker[48000:, 0], 1000)):
        spectrum = np.abs(np.fft.rfft(signal[:48000 * 8].astype(float)))
        assert abs(np.argmax(spectrum) / 8 - frequency) < 2
    stats, bridge = codec.stats(), codec.bridge_stats()
    assert (stats.underruns, stats.overruns, stats.dropped_blocks) == (0, 0, 0)
    assert bridge.uplink.frames_in == bench.sent["headset"] and bridge.downlink.frames_in == bench.sent["gadget"]
    assert bridge.uplink.frames_out > 9 * 48000 and bridge.downlink.frames_out > 9 * 48000
    assert bridge.uplink.ppm == pytest.approx(400, abs=150)  # still converging after 10 s


def test_the_devices_own_overflows_are_counted(bench: Bench) -> None:
    status = type("CallbackFlags", (), {"input_overflow": True, "output_underflow": True,
                                        "__bool__": lambda self: True})()
    bench.headset.period(np.zeros(480, np.int16), status)
    assert bench.codec.stats().overruns == 2


def test_consent_reaches_the_pc_and_the_recording(bench: Bench) -> None:
    bench.run(2.0)
    bench.codec.play(tone(1400, 16000, 1, 8000))
    assert bench.codec.play_pending() == 8000
    blocks = np.concatenate(bench.run(1.0))
    assert bench.codec.play_pending() == 0
    spectrum = np.abs(np.fft.rfft(blocks[:8000, 0].astype(float)))  # 2 Hz bins
    assert spectrum[700] > spectrum[220] / 2 > spectrum[500] * 100  # the prompt beside the mic's 440 Hz
    pc = np.concatenate(bench.out["gadget"][-100:])[:, 0].astype(float)
    spectrum = np.abs(np.fft.rfft(pc[:24000]))
    assert spectrum[700] > spectrum[220] / 3 > spectrum[500] * 100  # the PC hears the prompt too
    bench.codec.play(tone(1400, 16000, 1, 8000))
    bench.codec.stop_playing()
    assert bench.codec.play_pending() == 0


def test_an_unplugged_headset_is_a_device_loss_after_the_blocks_it_gave(bench: Bench) -> None:
    got = bench.run(1.0)
    bench.headset.finished_callback()  # PortAudio ends the stream: the headset was pulled out
    with pytest.raises(DeviceLost, match="headset"):
        while True:
            got.append(bench.codec.read(timeout=0).frames)
    assert len(got) == pytest.approx(50, abs=2)
    bench.codec.close()
    assert bench.codec.read() is None


def test_the_pc_going_away_keeps_the_recording_and_reopens_its_stream(bench: Bench) -> None:
    bench.run(2.0)
    bench.gadget_gone = True
    bench.sd.refuse_open[2] = True
    bench.gadget.finished_callback()
    blocks = np.concatenate(bench.run(5.0))
    assert len(blocks) == pytest.approx(5 * 16000, abs=3 * 320)  # the headset side is still recorded
    assert not blocks[16000:, 1].any()
    assert len(bench.sd.streams) == 2  # reopening was tried and refused
    bench.sd.refuse_open[2] = False
    bench.run(15.0)  # the back-off (1 s, then up to 10 s) comes round
    assert len(bench.sd.streams) == 3 and bench.sd.streams[-1].active


def test_the_gadget_opens_at_the_rate_the_pc_chose_and_follows_a_new_choice() -> None:
    sd, clock = fake_sd(), ManualClock()
    sd.rates[2] = {16000}  # the PC chose 16 kHz of the gadget's 48 and 16 kHz
    codec = UsbBridgeCodec("jabra", "uac2", clock=clock, rate=16000, block_frames=320, sd=sd)
    assert codec.settings.gadget_rate == 16000 and codec.settings.headset_rate == 16000
    codec.start()
    bench = Bench(codec, sd, clock)
    assert (bench.gadget.rate, bench.gadget.block) == (16000, 160)
    first = np.concatenate(bench.run(5.0))
    assert len(first) == pytest.approx(5 * 16000, abs=2 * 320)
    sd.rates[2] = {48000}  # the PC switches to 48 kHz: the gadget's stream ends
    bench.gadget.finished_callback()
    then = np.concatenate(bench.run(15.0))
    assert (bench.gadget.rate, bench.gadget.block, bench.gadget.active) == (48000, 480, True)
    assert codec.settings.gadget_rate == 48000 and codec.bridge_stats().downlink.frames_in > 5 * 48000
    assert len(then) == pytest.approx(15 * 16000, abs=3 * 320)  # the recording never stopped
    spectrum = np.abs(np.fft.rfft(then[-16000 * 4:, 1].astype(float)))  # 0.25 Hz bins
    assert np.argmax(spectrum) == pytest.approx(4000, abs=8)  # the PC's 1 kHz, at the right speed
    codec.close()


def test_a_headset_without_the_gadget_rate_runs_at_one_it_takes() -> None:
    sd = fake_sd(headset_rates={44100, 8000})
    codec = UsbBridgeCodec("jabra", "uac2", clock=ManualClock(), rate=16000, block_frames=320, sd=sd)
    assert codec.settings.headset_rate == 44100
    codec.start()
    assert sd.streams[0].rate == 44100 and sd.streams[0].block == 441
    codec.close()
    codec.close()  # safe twice


def test_missing_or_doubled_devices_are_named_with_what_exists() -> None:
    with pytest.raises(DeviceMissing, match=r"headset audio device 'plantronics' not found.*Jabra EVOLVE"):
        UsbBridgeCodec("plantronics", "uac2", clock=ManualClock(), sd=fake_sd())
    with pytest.raises(DeviceMissing, match="bcm2835"):  # found, but it cannot capture
        UsbBridgeCodec("jabra", "headphones", clock=ManualClock(), sd=fake_sd())
    with pytest.raises(ConfigError, match="same audio device"):
        UsbBridgeCodec("USB Audio", "USB Audio", clock=ManualClock(), sd=fake_sd())
    no_rate = fake_sd()
    no_rate.rates[2] = set()
    with pytest.raises(DeviceError, match="c_srate"):
        UsbBridgeCodec("jabra", "uac2", clock=ManualClock(), sd=no_rate)
    with pytest.raises(ConfigError, match="gadget_rate"):
        UsbBridgeCodec("jabra", "uac2", clock=ManualClock(), gadget_rate=44100, headset_rate=48000,
                       sd=fake_sd())


# ------------------------------------------------------------------ real PortAudio --

def _asoundrc(home: Path, headset_played: str) -> str:
    def device(name: str, infile: Path, played: str) -> str:
        return f"""
pcm.{name} {{
  type asym
  playback.pcm {{ type file slave.pcm "null" file "{played}" format "raw" }}
  capture.pcm {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}
}}"""
    return (device("linetap_headset", home / "mic.raw", headset_played)
            + device("linetap_gadget", home / "pc.raw", str(home / "to_pc.raw")))


@pytest.mark.parametrize("lose", [False, True], ids=["runs", "headset-lost"])
def test_real_portaudio_streams_on_two_file_plugin_devices(tmp_path: Path, lose: bool) -> None:
    mic = tone(440, 48000, 0, 48000)
    np.repeat(mic[:, None], 2, axis=1).astype("<i2").tofile(tmp_path / "mic.raw")  # the plugin's 2 channels
    np.zeros((48000, 2), "<i2").tofile(tmp_path / "pc.raw")
    (tmp_path / ".asoundrc").write_text(_asoundrc(tmp_path, "/dev/full" if lose else str(tmp_path / "ear.raw")))
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], env={**os.environ, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["error"] is None, result["error"]
    near = np.load(tmp_path / "near.npy")
    if lose:
        assert result["lost"] and "headset" in result["lost"]
        return
    assert result["lost"] is None and result["headset_rate"] == 48000
    assert len(near) == 40 * 480 and np.array_equal(near, mic[:len(near)])  # the first blocks, unpaced


def _child_main(home: Path) -> None:
    """The subprocess: the real codec on the two file-plugin devices of this HOME's .asoundrc."""
    from linetap.firmware.clock import SystemClock

    result: dict[str, Any] = {"error": None, "lost": None, "headset_rate": None}
    near: list[np.ndarray] = []
    try:
        # Unpaced, the headset's stream outruns the pump: a ring large enough that the first blocks,
        # the ones compared, are all kept.
        with UsbBridgeCodec("LINETAP_HEADSET", "linetap_gadget", clock=SystemClock(), rate=48000,
                            block_frames=480, queue_blocks=5000) as codec:
            result["headset_rate"] = codec.settings.headset_rate
            codec.start()
            try:
                while len(near) < 40:
                    near.append(codec.read(timeout=5.0).frames[:, 0])
            except DeviceLost as lost:
                result["lost"] = str(lost)
    except LinetapError as error:
        result["error"] = [type(error).__name__, str(error)]
    np.save(home / "near.npy", np.concatenate(near) if near else np.zeros(0, np.int16))
    (home / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
