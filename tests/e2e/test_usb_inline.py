"""A whole call on the simulated USB inline board, through the real call loop, consent, recorder and spool.

The board is ``sim-usb-inline``: the USB bridge between a simulated headset
and a simulated PC (clocks 300 ppm off nominal each way), the real HID
driver on simulated device nodes, gpiozero's mock pins. The call is opened
by the headset's hook switch (the softphone's off-hook LED echoing it),
muted from the headset mid-call and ended from the PC's screen; each script
step waits for its event to reach the loop, the audio runs on a ManualClock.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyrage
import pytest

from linetap.firmware import keys
from linetap.firmware.callloop import open_spool
from linetap.firmware.clock import ManualClock
from linetap.firmware.config import Config, load_config
from linetap.firmware.recorder import MemorySink
from linetap.firmware.scripted import SimulatedCalls, Step, bundled_speech
from linetap.firmware.spool import list_recordings

RATE = 16000
SECONDS = 24


def usb_config(tmp_path: Path) -> Config:
    path = tmp_path / "linetap.toml"
    path.write_text('[device]\nid = "lt-usb-inline"\nboard = "sim-usb-inline"\n')
    return load_config(path)


def best_match(haystack: np.ndarray, needle: np.ndarray) -> tuple[float, int]:
    """The normalised cross-correlation peak of ``needle`` in ``haystack``, and where it is."""
    n = len(haystack) + len(needle)
    size = 1 << (n - 1).bit_length()
    h, k = haystack.astype(np.float64), needle.astype(np.float64)
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(k, size)), size)[:len(haystack) - len(needle)]
    window = np.sqrt(np.convolve(h * h, np.ones(len(needle)), "valid")[:len(corr)])
    score = corr / (np.maximum(window, 1e-9) * np.linalg.norm(k))
    at = int(np.argmax(score))
    return float(score[at]), at


SCRIPT = [Step(1.0, "headset-hook-off"), Step(1.1, "pc-off-hook"),  # the LED echoes the button: one call
          Step(12.0, "headset-mute"), Step(15.0, "headset-mute"),  # muted for 3 s
          Step(21.0, "pc-on-hook")]  # ended on the PC's screen


@pytest.fixture(scope="module")
def call(tmp_path_factory):
    """One call run once for the module's tests: the loop, what the sink got, what the PC received."""
    tmp_path = tmp_path_factory.mktemp("usb-call")
    near = np.zeros(SECONDS * RATE, np.int16)  # a quiet agent: the PC's stream is the announcement alone
    far = bundled_speech(RATE)[1][: SECONDS * RATE]
    sink = MemorySink()
    calls = SimulatedCalls(usb_config(tmp_path), near, far, sink=sink, clock=ManualClock())
    uplink = calls.board.usb.bridge.rig.host  # the simulated PC: what it was given
    happenings = []
    calls.loop._on_happening = happenings.append
    calls.run(SCRIPT)
    return calls, sink, uplink.received, far, happenings


def test_one_call_is_recorded_from_hook_to_hang_up(call) -> None:
    calls, sink, _, far, _ = call
    (recording, audio), = sink.recordings
    kinds = [e.kind for e in recording.call.events]
    assert kinds.count("call-start") == 1 and recording.call.events[0].detail["source"] == "hid-headset"
    assert recording.call.ended_by == "hang-up"
    assert recording.call.ended_mono - recording.call.started_mono == pytest.approx(20.0, abs=0.2)
    assert calls.loop.flow.unexpected == 0  # the LED's echo of the hook never reached the flow
    assert audio.shape == (recording.frames, 2) and recording.frames > 15 * RATE
    # The far side (what the PC played) is in the recording: the caller's speech, through the bridge.
    score, _ = best_match(audio[:, 1], far[5 * RATE:6 * RATE])
    assert score > 0.9


def test_the_announcement_reaches_the_pc_and_the_recording(call) -> None:
    calls, sink, uplink, _, _ = call
    prompt = calls.loop.prompts["en"].samples
    head = prompt[: RATE // 2]  # half a second: the two clocks' drift stays well under a sample's phase there
    score, at = best_match(uplink, head)
    assert score > 0.9, "the consent announcement is not in what the PC received from the box"
    assert 1.0 <= at / RATE <= 1.5  # right after the hook went off at 1 s
    assert not uplink[: RATE].any()  # nothing before the call: the agent was silent
    (recording, audio), = sink.recordings
    score, _ = best_match(audio[:, 0], head)
    assert score > 0.9, "the announcement is not on the recording's near side"


def test_the_mute_span_is_marked_in_the_calls_record(call) -> None:
    _, sink, _, _, happenings = call
    (recording, _), = sink.recordings
    spans = [(e.kind, e.t, e.detail["source"]) for e in recording.call.events if e.kind.startswith("mute")]
    assert [kind for kind, _, _ in spans] == ["mute-start", "mute-end"]
    assert spans[0][1] == pytest.approx(11.0, abs=0.1) and spans[1][1] == pytest.approx(14.0, abs=0.1)
    assert {source for _, _, source in spans} == {"hid-headset"}
    assert any(h.what == "microphone muted" for h in happenings)


def test_the_call_reaches_the_encrypted_spool(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    keys.keys_init(data, str(pyrage.x25519.Identity.generate().to_public()))
    config = usb_config(tmp_path)
    clock = ManualClock()
    sink = open_spool(config, data, clock)
    near = np.zeros(10 * RATE, np.int16)
    far = bundled_speech(RATE)[1][: 10 * RATE]
    calls = SimulatedCalls(config, near, far, sink=sink, clock=clock)
    calls.run([Step(0.5, "pc-off-hook"), Step(4.0, "headset-mute"), Step(8.0, "pc-on-hook")])
    rows = list_recordings(data)
    assert len(rows) == 1 and rows[0]["recorded"] and rows[0]["segments"] >= 1


def test_a_script_for_the_handset_cord_runs_on_the_usb_board(tmp_path) -> None:
    """The demo's and replay's scripts: the hook is the headset's; ring and caller ID are the softphone's."""
    sink = MemorySink()
    far = bundled_speech(RATE)[1][: 8 * RATE]
    calls = SimulatedCalls(usb_config(tmp_path), np.zeros(8 * RATE, np.int16), far, sink=sink,
                           clock=ManualClock())
    calls.run([Step(0.5, "ring"), Step(0.6, "caller-id", {"number": "5550100"}), Step(1.0, "hook-off"),
               Step(7.0, "hook-on")])
    (recording, _), = sink.recordings
    assert recording.call.caller is None and recording.call.events[0].detail["source"] == "hid-headset"
    assert recording.call.ended_by == "hang-up"


def test_a_headset_unplugged_mid_call_closes_it_with_what_was_kept_and_the_next_call_records(tmp_path) -> None:
    sink = MemorySink()
    far = bundled_speech(RATE)[1][: 20 * RATE]
    calls = SimulatedCalls(usb_config(tmp_path), np.zeros(20 * RATE, np.int16), far, sink=sink,
                           clock=ManualClock())
    alarms = []
    calls.loop.on_alarm = lambda name, active, detail: alarms.append((name, active))
    calls.run([Step(0.5, "headset-hook-off"), Step(6.0, "headset-unplug"), Step(9.0, "headset-plug"),
               Step(11.0, "headset-hook-off"), Step(18.0, "headset-hook-on")])
    (lost, lost_audio), (after, _) = sink.recordings
    assert lost.call.ended_by == "hang-up" and lost.call.recorded and len(lost_audio) > 4 * RATE
    assert [e.kind for e in lost.call.events].count("fault") == 1  # the headset's loss, in the record
    assert ("headset-lost", True) in alarms and ("headset-lost", False) in alarms
    assert after.call.recorded and "fault" not in [e.kind for e in after.call.events]
