"""Whole calls on the simulated board: codec, mock pins and modem, through the real call loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyrage
import pytest
import soundfile

from linetap.firmware.callflow import KEEPING, CallState
from linetap.firmware.clock import ManualClock
from linetap.firmware.config import Config, load_config
from linetap.firmware.dsp import dtmf_tone, tone
from linetap.firmware.recorder import MemorySink
from linetap.firmware.scripted import SimulatedCalls, Step, bundled_speech

RATE = 16000
REC_PIN = 17


def config_with(tmp_path: Path, text: str = "") -> Config:
    path = tmp_path / "linetap.toml"
    path.write_text("[controls]\nlong_press_s = 0.05\n" + text)
    return load_config(path)


def voice(seconds: float, freq: float = 300.0) -> np.ndarray:
    """A steady 'voice' that the voice-activity detector and a listener can both find."""
    return tone(freq, seconds, RATE, level_dbfs=-15)


def run_call(config: Config, near: np.ndarray, far: np.ndarray, script: list[Step], check=None):
    sink = MemorySink()
    calls = SimulatedCalls(config, near, far, sink=sink, clock=ManualClock())
    calls.run(script, after_block=(lambda: check(calls)) if check else None)
    return calls, sink


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, np.ndarray]:
    return bundled_speech(RATE)


def test_announcement_is_played_into_the_line_before_audio_is_kept(tmp_path: Path, speech) -> None:
    near, far = speech
    config = config_with(tmp_path)
    calls, sink = run_call(config, near[: 20 * RATE], far[: 20 * RATE],
                           [Step(1.0, "hook-off"), Step(19.0, "hook-on")])
    prompt = calls.loop.prompts["en"].samples
    played = calls.board.codec.played
    first_play = calls.board.codec.play_log[0]
    assert first_play.frames == len(prompt)
    start = round(first_play.stream_t * RATE)
    assert not played[:start].any()
    assert np.array_equal(played[start:start + len(prompt)], prompt)
    (recording, audio), = sink.recordings
    events = {e.kind: e for e in recording.call.events}
    assert events["announcement-start"].t == 0.0
    assert events["announcement-start"].detail["prompt_sha256"] == calls.loop.prompts["en"].sha256
    assert events["announcement-end"].t == pytest.approx(len(prompt) / RATE, abs=0.03)
    # Keeping starts with the announcement, never before it: the call opened at the
    # hook-off block, the prompt reached the line with the next block, and the first
    # kept sample is that same boundary.
    opened_at = start / RATE - recording.audio_start_s
    assert recording.audio_start_s == 0.0
    assert 1.0 <= opened_at <= 1.0 + 0.1  # hook-off at 1.0 s plus debounce, within a block or so
    assert len(audio) == recording.frames


def test_warning_tone_repeats_at_the_interval(tmp_path: Path) -> None:
    config = config_with(tmp_path, "[consent]\nwarning_interval_s = 10.0\n")
    silence = np.zeros(50 * RATE, np.int16)
    calls, sink = run_call(config, silence, silence, [Step(0.5, "hook-off"), Step(48.0, "hook-on")])
    tone_frames = int(0.5 * RATE)
    plays = [p for p in calls.board.codec.play_log if p.frames == tone_frames]
    starts = [p.stream_t for p in plays]
    assert len(starts) == 4  # prompt ends ~3.9 s; tones at ~13.9, 23.9, 33.9, 43.9 s
    assert np.allclose(np.diff(starts), 10.0, atol=0.03)
    (recording, _), = sink.recordings
    assert [e.kind for e in recording.call.events].count("warning-tone") == 4
    spectrum = np.abs(np.fft.rfft(calls.board.codec.played[int(starts[0] * RATE):][:tone_frames]))
    assert np.fft.rfftfreq(tone_frames, 1 / RATE)[np.argmax(spectrum)] == pytest.approx(1400, abs=5)


def test_opt_out_leaves_no_audio_and_keeps_the_consent_event(tmp_path: Path, speech) -> None:
    near, far = speech
    config = config_with(tmp_path, '[consent]\nopt_out_key = "9"\n')
    far = far[: 20 * RATE].copy()
    digit = dtmf_tone("9", 0.1, RATE)
    far[6 * RATE:6 * RATE + len(digit)] = digit
    calls, sink = run_call(config, near[: 20 * RATE], far, [Step(1.0, "hook-off"), Step(19.0, "hook-on")])
    (recording, audio), = sink.recordings
    assert recording.frames == 0 and len(audio) == 0
    assert not recording.call.recorded
    optout = [e for e in recording.call.events if e.kind == "opt-out"]
    assert len(optout) == 1 and optout[0].detail == {"by": "caller", "channel": "far"}
    assert "9" not in json.dumps([e.detail for e in recording.call.events if e.kind != "announcement-start"])


def test_pause_and_dtmf_spans_are_silent_in_the_stored_audio(tmp_path: Path) -> None:
    config = config_with(tmp_path, "[consent]\nannounce = false\nwarning_tone = false\n")
    near, far = voice(30, 250), voice(30, 350)
    digits = dtmf_tone("4", 0.1, RATE)
    far[15 * RATE:15 * RATE + len(digits)] = digits
    rec_states = []

    def check(calls: SimulatedCalls) -> None:
        keeping = calls.loop.flow.state in KEEPING
        rec_states.append((calls.board.panel.rec_led_lit, keeping))

    calls, sink = run_call(config, near, far, [Step(1.0, "hook-off"), Step(5.0, "pause"),
                                               Step(9.0, "pause"), Step(28.0, "hook-on")], check)
    (recording, audio), = sink.recordings
    events = {e.kind: e.t for e in recording.call.events}
    start = round(recording.audio_start_s * RATE)
    pause_from = round(events["pause-start"] * RATE) - start
    pause_to = round(events["pause-end"] * RATE) - start
    assert events["pause-end"] - events["pause-start"] == pytest.approx(4.0, abs=0.03)
    assert not audio[pause_from:pause_to].any()
    assert np.abs(audio[pause_to + RATE:pause_to + 2 * RATE]).max() > 1000  # speech again after it
    (mask_start, mask_end), = recording.masks
    # The PAUSE press came at stream 5.0 s, so the call's axis starts at 5.0 - pause-start;
    # the digit began at stream 15.0 s and the mask 10 ms (its guard) before it.
    call_origin = 5.0 - events["pause-start"]
    assert mask_start + call_origin == pytest.approx(15.0 - 0.01, abs=0.03)
    masked = audio[round(mask_start * RATE) - start:round(mask_end * RATE) - start]
    assert len(masked) >= int(0.1 * RATE) and not masked.any()
    assert np.abs(audio[round(mask_start * RATE) - start - RATE:round(mask_start * RATE) - start]).max() > 1000
    # The digit itself (a 4 is 770 + 1209 Hz) does not survive anywhere in the stored audio.
    spectrum = np.abs(np.fft.rfft(audio[:, 1].astype(float)))
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    assert spectrum[np.argmin(np.abs(freqs - 1209))] < spectrum[np.argmin(np.abs(freqs - 350))] / 1000
    # The LED followed keeping on every block.
    assert rec_states and all(lit == keeping for lit, keeping in rec_states)
    assert any(keeping for _, keeping in rec_states) and not rec_states[-1][1]


def test_rec_led_pin_is_lit_exactly_while_audio_is_kept(tmp_path: Path) -> None:
    config = config_with(tmp_path, "[consent]\nwarning_tone = false\n")
    seen = []

    def check(calls: SimulatedCalls) -> None:
        pin = calls.board.pin_factory.pin(REC_PIN)
        state = calls.loop.flow.state
        seen.append((state, pin.state))

    run_call(config, voice(12), voice(12, 400), [Step(1.0, "hook-off"), Step(10.0, "hook-on")], check)
    assert {pin for state, pin in seen if state in (CallState.ANNOUNCING, CallState.RECORDING)} == {1.0}
    assert {pin for state, pin in seen if state == CallState.IDLE} == {0.0}


def test_private_call_by_long_press_keeps_nothing(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    calls, sink = run_call(config, voice(12), voice(12, 400),
                           [Step(0.5, "pause-long"), Step(1.0, "hook-off"), Step(10.0, "hook-on")])
    (recording, audio), = sink.recordings
    assert len(audio) == 0 and not recording.call.recorded
    assert [e.kind for e in recording.call.events][:2] == ["call-start", "private"]
    assert not any(p.frames for p in calls.board.codec.play_log)  # no announcement for a private call


def test_caller_id_from_the_modem_is_attached(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    calls, sink = run_call(config, voice(8), voice(8, 400),
                           [Step(0.2, "ring"), Step(0.3, "caller-id", {"number": "5550199", "name": "DOE"}),
                            Step(1.0, "hook-off"), Step(7.0, "hook-on")])
    (recording, _), = sink.recordings
    assert recording.call.caller.number == "5550199"


def test_replay_command_prints_the_call_as_json(tmp_path: Path) -> None:
    near, far = tmp_path / "near.wav", tmp_path / "far.wav"
    soundfile.write(near, voice(6), RATE)
    soundfile.write(far, np.zeros(6 * RATE, np.int16), RATE)
    data = tmp_path / "data"
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    keys = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "--data-dir", str(data), "keys",
                           "init", "--central-recipient", recipient], capture_output=True, text=True,
                          timeout=60)
    assert keys.returncode == 0, keys.stderr
    result = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "replay", str(near), str(far),
                             "--json", "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [e["kind"] for e in report["events"]][:3] == ["call-start", "announcement-start",
                                                         "announcement-end"]
    assert report["recorded"] and report["qa"]["talk_s"]["near"] > 2.0
    assert report["qa"]["talk_s"]["far"] == 0.0
    assert report["stored"]["state"] == "closed" and report["stored"]["segments"] >= 1
    listed = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "spool", "list", "--json",
                             "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert [row["id"] for row in json.loads(listed.stdout)] == [report["call_id"]]
    verified = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "spool", "verify",
                               "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and "OK" in verified.stdout


def test_replay_refuses_to_record_without_a_central_recipient(tmp_path: Path) -> None:
    near = tmp_path / "near.wav"
    soundfile.write(near, voice(2), RATE)
    result = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "replay", str(near), str(near),
                             "--data-dir", str(tmp_path / "empty")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "linetap keys init --central-recipient age1" in result.stderr


def test_a_bad_prompt_stops_replay_before_any_call(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[consent]\nprompts = { en = "/nonexistent/prompt.wav" }\n')
    soundfile.write(tmp_path / "a.wav", voice(2), RATE)
    result = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "--config", str(config),
                             "replay", str(tmp_path / "a.wav"), str(tmp_path / "a.wav")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "consent prompt '/nonexistent/prompt.wav' does not exist" in result.stderr
    assert "call " not in result.stdout


def test_replay_names_a_missing_input_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "replay",
                             str(tmp_path / "near.wav"), str(tmp_path / "far.wav")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"audio file {tmp_path / 'near.wav'} does not exist" in result.stderr


def board_file(tmp_path: Path, *, hook: bool, source: str) -> Path:
    """The simulated board, changed to detect calls by ``source``."""
    text = (Path(__file__).resolve().parents[2] / "hardware" / "boards" / "sim.toml").read_text()
    text = text.replace('name = "sim"', 'name = "sim-variant"').replace(
        'source = "hook-gpio"', f'source = "{source}"')
    if not hook:
        text = text.replace("hook = 26\n", "")
    path = tmp_path / "sim-variant.toml"
    path.write_text(text)
    return path


def test_calls_detected_by_the_voice_modem(tmp_path: Path) -> None:
    board = board_file(tmp_path, hook=False, source="v253")
    config = config_with(tmp_path, f'[device]\nboard = "{board}"\n')
    calls, sink = run_call(config, voice(10), voice(10, 400),
                           [Step(0.5, "ring"), Step(1.0, "modem-hook-off"), Step(8.0, "modem-hook-on")])
    (recording, audio), = sink.recordings
    assert recording.call.events[0].detail == {"source": "modem"}
    assert recording.call.ended_by == "hang-up"
    assert (recording.call.ended_mono - recording.call.started_mono) == pytest.approx(7.0, abs=0.05)
    assert len(audio) > 6 * RATE


def test_calls_detected_by_voice_activity_where_there_is_no_hook_signal(tmp_path: Path) -> None:
    board = board_file(tmp_path, hook=False, source="vad")
    config = config_with(tmp_path, f'[device]\nboard = "{board}"\n[calls]\nend_silence_s = 5.0\n')
    silence = np.zeros(3 * RATE, np.int16)
    # The agent and the caller take turns for 20 s with pauses of 2 s (shorter than
    # end_silence_s, so the call is not split), then the line is silent.
    turns_near = np.concatenate([voice(3), np.zeros(7 * RATE, np.int16)] * 2)
    turns_far = np.concatenate([np.zeros(5 * RATE, np.int16), voice(3, 400), np.zeros(2 * RATE, np.int16)] * 2)
    near = np.concatenate([silence, turns_near, np.zeros(10 * RATE, np.int16)])
    far = np.concatenate([silence, turns_far, np.zeros(10 * RATE, np.int16)])
    calls, sink = run_call(config, near, far, [])
    (recording, audio), = sink.recordings
    assert recording.call.events[0].detail == {"source": "vad"}
    assert recording.call.recorded and len(audio) > 15 * RATE



class _DiskFillsUp(MemorySink):
    """The spool's disk fills after ``room`` frames of a call."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, frames: np.ndarray) -> None:
        from linetap.firmware.errors import SpoolError

        if len(frames) > self.room:
            raise SpoolError("disk full")
        self.room -= len(frames)
        super().write(frames)


def test_alarms_for_the_fleet_follow_what_the_box_cannot_do() -> None:
    from linetap.drivers.events import LineState

    config = load_config(None)
    near, far = voice(12.0), voice(12.0, 500.0)
    calls = SimulatedCalls(config, near, far, sink=_DiskFillsUp(room=RATE * 3), clock=ManualClock())
    alarms: list[tuple[str, bool]] = []
    calls.loop.on_alarm = lambda name, active, detail: alarms.append((name, active))
    calls.loop.process(LineState("lost", "unplugged"))
    calls.loop.process(LineState("ready"))
    calls.run([Step(0.5, "hook-off"), Step(10.0, "hook-on")])
    assert alarms[:2] == [("modem-lost", True), ("modem-lost", False)]
    assert ("not-recording", True) in alarms[2:]  # the disk filled during the call


# --- replay on a hostile box: what could not be stored is an error ------------------------------

def linetap(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linetap.firmware.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def box_with_keys(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    done = linetap("--data-dir", str(data), "keys", "init", "--central-recipient", recipient, timeout=60)
    assert done.returncode == 0, done.stderr
    return data


def test_replay_into_a_full_spool_fails_and_says_what_was_lost(tmp_path: Path) -> None:
    data = box_with_keys(tmp_path)
    config = tmp_path / "small.toml"
    config.write_text("[spool]\nmax_bytes = 1000\n")
    near, far = tmp_path / "near.wav", tmp_path / "far.wav"
    soundfile.write(near, voice(4), RATE)
    soundfile.write(far, voice(4, 400), RATE)
    args = ("--config", str(config), "--data-dir", str(data), "replay", str(near), str(far))
    first = linetap(*args, "--json")
    assert first.returncode == 0, first.stderr  # an empty spool takes the first call whole
    kept = json.loads(first.stdout)
    assert kept["stored"]["bytes"] > 1000
    second = linetap(*args)
    assert second.returncode == 1
    call_id = second.stdout.split()[1].rstrip(":")
    assert f"call {call_id}: nothing stored:" in second.stderr
    assert "max_bytes 1000" in second.stderr and "spool.max_bytes" in second.stderr
    # What was stored before stays stored and intact.
    rows = json.loads(linetap("--data-dir", str(data), "spool", "list", "--json").stdout)
    assert [(r["id"], r["state"]) for r in rows] == [(kept["call_id"], "closed")]
    assert linetap("--data-dir", str(data), "spool", "verify").returncode == 0


def test_replay_fails_when_the_disk_fills_mid_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from linetap.firmware import durable
    from linetap.firmware.cli import main

    data = box_with_keys(tmp_path)
    near, far = tmp_path / "near.wav", tmp_path / "far.wav"
    soundfile.write(near, voice(35), RATE)
    soundfile.write(far, voice(35, 400), RATE)
    write = durable.DurableFiles.write

    def disk_fills_after_two_segments(self, path: Path, data: bytes) -> None:
        if path.name.endswith(".age") and int(path.name.split(".")[0]) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(self, path, data)

    monkeypatch.setattr(durable.DurableFiles, "write", disk_fills_after_two_segments)
    assert main(["--data-dir", str(data), "replay", str(near), str(far), "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["stored"] == {"seq": 1, "state": "closed", "segments": 2, "bytes": report["stored"]["bytes"]}
    assert report["lost"].startswith(f"call {report['call_id']}: audio lost after 20.0 s of 3")
    assert "disk full while writing segment 2" in report["lost"]
    assert report["lost"] in err
    monkeypatch.undo()
    assert main(["--data-dir", str(data), "spool", "verify"]) == 0
