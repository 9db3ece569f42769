"""One contract, two codecs: SimCodec and SoundDeviceCodec on an ALSA file-plugin device.

The real codec runs in a subprocess (this file run as a script) whose HOME
holds an ``.asoundrc``, because PortAudio reads the ALSA configuration once per
process. How the file plugin behaves, and what the tests do about it:

- It records into ``file`` whatever passes through it, captured audio
  included, so capture and playback get separate plugins under ``type asym``.
- It is not paced: a duplex stream runs thousands of blocks a second. The
  ring is sized to hold every block a test reads; it drops the newest blocks
  when full, so the first ones, which the tests compare, are always kept.
- When ``infile`` runs out the stream does not end and does not go silent:
  capture carries on with stale buffer contents. Tests compare only the
  frames the file holds.
- ``played.raw`` starts with PortAudio's priming silence, so a prompt is found
  by its first non-zero sample. Any rate and channel count is accepted; the
  raw file is read and written at the stream's rate and channel count.
- A playback file that cannot be written (``/dev/full``) makes PortAudio end
  the stream: the real "device lost mid-stream" path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from linetap.drivers.audio import Block, Codec, CodecStats, SimCodec, SoundDeviceCodec, tone
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import DeviceLost, LinetapError

DEVICE_NAME = "linetap_test"
SUBPROCESS_TIMEOUT = 60


@dataclass
class Run:
    blocks: list[Block]
    stats: CodecStats
    lost: str | None  # DeviceLost's message, if read() raised it
    line: np.ndarray  # mono, what went into the call on the line-out channel(s)
    line_rate: int
    other_channels_peak: int  # loudest sample on playback channels that are not line-out
    line_outs_agree: bool  # every line-out channel carried the same signal


def record(codec: Codec, *, blocks: int, prompt: np.ndarray | None = None) -> tuple[list[Block], CodecStats, str | None]:
    """The scenario both codecs go through: start, queue a prompt, read until both are done."""
    got: list[Block] = []
    lost = None
    codec.start()
    if prompt is not None:
        codec.play(prompt)
    try:
        while len(got) < blocks or codec.play_pending():
            block = codec.read(timeout=10)
            if block is None:
                break
            got.append(block)
    except DeviceLost as error:
        lost = str(error)
    stats = codec.stats()
    codec.close()
    return got[:blocks], stats, lost


class SimRig:
    kind = "sim"

    def run(self, line_in: np.ndarray, *, near: int = 0, far: int = 1, rate: int = 16000,
            block_frames: int = 320, blocks: int, prompt: np.ndarray | None = None,
            out_channels: int = 2, line_out: tuple[int, ...] = (0,), lose_device: bool = False) -> Run:
        codec = SimCodec(line_in[:, near].copy(), line_in[:, far].copy(), rate=rate,
                         block_frames=block_frames, clock=ManualClock(), queue_blocks=blocks + 10)
        if lose_device:
            codec.lose_device(after_blocks=3)
        got, stats, lost = record(codec, blocks=blocks, prompt=prompt)
        return Run(got, stats, lost, codec.played, rate, 0, True)


class DeviceRig:
    """Runs SoundDeviceCodec on a file-plugin device in a subprocess; ``native_rate`` forces the device rate."""

    kind = "device"

    def __init__(self, home: Path) -> None:
        self.home = home

    def write_asoundrc(self, *, playback_file: str) -> None:
        (self.home / ".asoundrc").write_text(f"""
pcm.{DEVICE_NAME} {{
  type asym
  playback.pcm {{ type file slave.pcm "null" file "{playback_file}" format "raw" }}
  capture.pcm {{ type file slave.pcm "null" file "/dev/null" infile "{self.home / 'captured.raw'}" format "raw" }}
}}
""")

    def child(self, spec: dict) -> dict:
        (self.home / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "HOME": str(self.home)}
        done = subprocess.run([sys.executable, __file__, str(self.home)], env=env, capture_output=True,
                              text=True, timeout=SUBPROCESS_TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((self.home / "result.json").read_text())

    def run(self, line_in: np.ndarray, *, near: int = 0, far: int = 1, rate: int = 16000,
            block_frames: int = 320, blocks: int, prompt: np.ndarray | None = None,
            out_channels: int = 2, line_out: tuple[int, ...] = (0,), lose_device: bool = False,
            native_rate: int | None = None) -> Run:
        played = self.home / "played.raw"
        self.write_asoundrc(playback_file="/dev/full" if lose_device else str(played))
        line_in.astype("<i2").tofile(self.home / "captured.raw")
        if prompt is not None:
            np.save(self.home / "prompt.npy", prompt)
        codec = dict(rate=rate, block_frames=block_frames, channels=line_in.shape[1], near=near, far=far,
                     out_channels=out_channels, line_out=list(line_out), queue_blocks=blocks + 10,
                     native_rate=native_rate)
        # Upper case: the device is picked by a case-insensitive part of its name.
        result = self.child({"device": DEVICE_NAME.upper(), "codec": codec, "blocks": blocks,
                             "prompt": prompt is not None})
        assert result["error"] is None, result["error"]
        frames = np.load(self.home / "frames.npy")
        got = [Block(seq, t, f) for seq, t, f in zip(result["seqs"], result["ts"], frames)]
        out = (np.fromfile(played, dtype="<i2").reshape(-1, out_channels) if played.exists()
               else np.zeros((0, out_channels), dtype=np.int16))
        others = [c for c in range(out_channels) if c not in line_out]
        return Run(got, CodecStats(**result["stats"]), result["lost"], out[:, line_out[0]].copy(),
                   native_rate or rate, int(np.abs(out[:, others]).max(initial=0)),
                   all(np.array_equal(out[:, c], out[:, line_out[0]]) for c in line_out))


def _child_main(home: Path) -> None:
    """The subprocess side of DeviceRig: the real codec under this process's ALSA configuration."""
    spec = json.loads((home / "spec.json").read_text())
    result: dict = {"error": None, "lost": None, "seqs": [], "ts": [], "stats": None}
    frames = np.zeros((0, spec["codec"]["block_frames"], 2), dtype=np.int16)
    try:
        codec = SoundDeviceCodec(spec["device"], **spec["codec"])
        prompt = np.load(home / "prompt.npy") if spec["prompt"] else None
        got, stats, result["lost"] = record(codec, blocks=spec["blocks"], prompt=prompt)
        result["seqs"] = [b.seq for b in got]
        result["ts"] = [b.t for b in got]
        result["stats"] = stats.__dict__
        if got:
            frames = np.stack([b.frames for b in got])
    except LinetapError as error:
        result["error"] = [type(error).__name__, str(error)]
    np.save(home / "frames.npy", frames)
    (home / "result.json").write_text(json.dumps(result))


@pytest.fixture(params=["sim", "device"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> SimRig | DeviceRig:
    return SimRig() if request.param == "sim" else DeviceRig(tmp_path)


@pytest.fixture
def device_rig(tmp_path: Path) -> DeviceRig:
    return DeviceRig(tmp_path)


def distinct_channels(frames: int, channels: int) -> np.ndarray:
    """Every sample different and each channel in its own value range, so any mix-up shows."""
    rng = np.random.default_rng(channels)
    noise = rng.integers(-200, 200, size=(frames, channels))
    return (noise + 4000 * np.arange(channels) - 8000).astype(np.int16)


@pytest.mark.parametrize(("channels", "near", "far"), [(2, 0, 1), (2, 1, 0), (4, 3, 1)])
def test_blocks_carry_the_mapped_channels_near_then_far(rig, channels: int, near: int, far: int) -> None:
    blocks = 25
    line_in = distinct_channels(blocks * 320, channels)
    run = rig.run(line_in, near=near, far=far, blocks=blocks)
    assert [b.seq for b in run.blocks] == list(range(blocks))
    assert [b.t for b in run.blocks] == pytest.approx([k * 0.02 for k in range(blocks)])
    for block in run.blocks:
        assert block.frames.shape == (320, 2)
        assert block.frames.dtype == np.int16
    captured = np.concatenate([b.frames for b in run.blocks])
    assert np.array_equal(captured, line_in[:, [near, far]])


@pytest.mark.parametrize(("rate", "block_frames"), [(8000, 160), (48000, 480)])
def test_other_pipeline_rates_capture_the_input_unchanged(rig, rate: int, block_frames: int) -> None:
    line_in = distinct_channels(10 * block_frames, 2)
    run = rig.run(line_in, rate=rate, block_frames=block_frames, blocks=10)
    assert np.array_equal(np.concatenate([b.frames for b in run.blocks]), line_in)
    assert run.blocks[-1].t == pytest.approx(9 * block_frames / rate)


@pytest.mark.parametrize(("out_channels", "line_out"), [(2, (0,)), (2, (1,)), (2, (0, 1)), (4, (1, 3))])
def test_played_prompt_reaches_the_line_out_channels_only(rig, out_channels: int,
                                                          line_out: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    prompt = (rng.integers(1000, 20000, size=1000) * rng.choice([-1, 1], size=1000)).astype(np.int16)
    run = rig.run(distinct_channels(40 * 320, 2), blocks=20, prompt=prompt,
                  out_channels=out_channels, line_out=line_out)
    start = int(np.flatnonzero(run.line)[0])
    assert np.array_equal(run.line[start:start + len(prompt)], prompt)
    assert not run.line[start + len(prompt):].any()
    assert run.line_outs_agree
    assert run.other_channels_peak == 0


def test_a_lost_device_is_reported_by_read(rig) -> None:
    run = rig.run(distinct_channels(40 * 320, 2), blocks=20, lose_device=True)
    assert run.lost is not None and "audio device" in run.lost
    assert len(run.blocks) < 20
    assert [b.seq for b in run.blocks] == list(range(len(run.blocks)))


def test_missing_device_names_the_devices_that_exist(device_rig: DeviceRig) -> None:
    device_rig.write_asoundrc(playback_file=str(device_rig.home / "played.raw"))
    result = device_rig.child({"device": "USB Audio", "codec": {"rate": 16000, "block_frames": 320},
                               "blocks": 1, "prompt": False})
    kind, message = result["error"]
    assert kind == "DeviceMissing"
    assert "'USB Audio' not found" in message
    assert f"'{DEVICE_NAME}' (in " in message
    assert "audio.device" in message


def level_dbfs(samples: np.ndarray) -> float:
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    return 20 * np.log10(max(rms, 1e-9) * np.sqrt(2) / 32767)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_a_48khz_device_is_resampled_to_the_pipeline_rate_both_ways(device_rig: DeviceRig) -> None:
    line_in = np.column_stack([tone(1000, 0.5, 48000, -12.0), tone(3000, 0.5, 48000, -20.0)])
    prompt = tone(1000, 0.3, 16000, -6.0)
    run = device_rig.run(line_in, native_rate=48000, blocks=25, prompt=prompt, line_out=(0,))

    captured = np.concatenate([b.frames for b in run.blocks])
    assert captured.shape == (8000, 2)
    steady = captured[320:]  # past the decimator's start-up
    assert peak_hz(steady[:, 0], 16000) == pytest.approx(1000, abs=3)
    assert peak_hz(steady[:, 1], 16000) == pytest.approx(3000, abs=3)
    assert level_dbfs(steady[:, 0]) == pytest.approx(-12.0, abs=0.2)
    assert level_dbfs(steady[:, 1]) == pytest.approx(-20.0, abs=0.2)

    assert run.line_rate == 48000
    sounding = np.flatnonzero(run.line)
    played = run.line[sounding[0]:sounding[-1] + 1]
    assert len(played) == pytest.approx(3 * len(prompt), abs=3 * 2 * 24 + 3)
    middle = played[len(played) // 4: 3 * len(played) // 4]
    assert peak_hz(middle, 48000) == pytest.approx(1000, abs=3)
    assert level_dbfs(middle) == pytest.approx(-6.0, abs=0.2)
    assert run.other_channels_peak == 0


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
