"""Real modem output through the call flow to the spool: distinctive rings end calls, withheld reasons are kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyrage
import pytest

from linetap.drivers.events import CallerId, HookChanged
from linetap.drivers.v253 import Garbage, V253Parser
from linetap.firmware import callflow as cf
from linetap.firmware.callflow import CallEvent, CallFlow, CallPolicy, CallRecord, CallState
from linetap.firmware.clock import ManualClock
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink, list_recordings

POLICY = CallPolicy(opt_out_key="9", prompt_sha256="ab" * 32)
HOOK_OFF = HookChanged(off_hook=True, source="gpio")
HOOK_ON = HookChanged(off_hook=False, source="gpio")


def modem(flow: CallFlow, data: bytes) -> list[cf.Action]:
    """What the flow does with a modem's output, as the line driver would deliver it."""
    parser = V253Parser()
    parser.receive_data(data)
    parser.flush()
    actions: list[cf.Action] = []
    for event in parser.events():
        assert not isinstance(event, Garbage), event
        actions += flow.handle(event)
    return actions


def recording_flow(clock: ManualClock) -> CallFlow:
    flow = CallFlow(POLICY, clock, new_call_id=lambda: "call-1")
    flow.handle(HOOK_OFF)
    flow.handle(cf.PromptFinished())
    assert flow.state == CallState.RECORDING
    return flow


@pytest.mark.parametrize("ring", [b"RING 2", b"RING B"])
def test_a_distinctive_ring_starts_ringing(ring: bytes, clock: ManualClock) -> None:
    # Rockwell (RING 2) and USR/3Com (RING B) with distinctive ring on in the stored profile.
    flow = CallFlow(POLICY, clock)
    modem(flow, b"\r\n" + ring + b"\r\n")
    assert flow.state == CallState.RINGING


@pytest.mark.parametrize("ring", [b"RING 2", b"RING B"])
def test_a_distinctive_ring_in_the_hang_up_grace_closes_the_call(ring: bytes, clock: ManualClock) -> None:
    flow = recording_flow(clock)
    clock.advance(5)
    flow.handle(HOOK_ON)
    clock.advance(0.3)  # inside hangup_grace_s: a flash, unless the line rings
    actions = modem(flow, b"\r\n" + ring + b"\r\n")
    closed = [a for a in actions if isinstance(a, cf.CloseCall)]
    assert len(closed) == 1 and closed[0].call.ended_mono == pytest.approx(closed[0].call.started_mono + 5)
    assert flow.state == CallState.RINGING


@pytest.mark.parametrize("block, reason", [
    # Conexant/CX93001 (AT+VCID=1).
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Restricted\r\nNAME = WITHHELD\r\n", "private"),
    # Rockwell (AT#CID=1).
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = O\r\nNAME = O\r\n", "out-of-area"),
    # USR/3Com (AT#CID=1).
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = 0000000000\r\nNAME = NO NAME\r\n", "unavailable"),
    # Intel/Ambient MD566x (AT+VCID=1): caller ID heard, not decoded.
    (b"MESG = CALID_202\r\n", "failed"),
])
def test_the_call_record_carries_the_reason_and_no_placeholder(block: bytes, reason: str,
                                                               clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    modem(flow, b"\r\nRING\r\n\r\n" + block + b"\r\nRING\r\n")
    call = flow.handle(HOOK_OFF)[0].call
    assert call.caller_withheld == reason
    assert call.caller.number is None and call.caller.name is None


def test_no_caller_id_has_no_reason(clock: ManualClock) -> None:
    flow = CallFlow(POLICY, clock)
    assert flow.handle(HOOK_OFF)[0].call.caller_withheld is None


# -- the spool ---------------------------------------------------------------------------

RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=1.0)


class PlainSegmenter:
    """One "OggS"-tagged plaintext piece per call: enough to seal, no encoder needed."""

    def __init__(self, codec: CodecParams) -> None:
        self._frames: list[np.ndarray] = []

    def write(self, frames: np.ndarray) -> list[bytes]:
        self._frames.append(frames)
        return []

    def finish(self) -> bytes:
        return b"OggS" + b"".join(f.tobytes() for f in self._frames)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    keys_init(tmp_path / "data", str(pyrage.x25519.Identity.generate().to_public()))
    return tmp_path / "data"


def open_spool(data: Path, clock: ManualClock) -> Spool:
    return Spool(data, device_id="lt-desk-1", clock=clock, disk_free=lambda _path: 10 ** 12)


def call_with(clock: ManualClock, caller: CallerId | None) -> CallRecord:
    return CallRecord("0199a000-0000-7000-8000-000000000001", clock.monotonic(), clock.wall(), True,
                      caller=caller)


def test_the_manifest_carries_the_reason_plain_and_seals_no_placeholder(data: Path, clock: ManualClock) -> None:
    parser = V253Parser()
    # Conexant/CX93001 (AT+VCID=1) on a line whose caller withholds the number.
    parser.receive_data(b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Restricted\r\n")
    parser.flush()
    [caller] = list(parser.events())
    call = call_with(clock, caller)
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, PlainSegmenter)
        sink.open(call)
        opening = json.loads((spool.root / call.call_id / "open.json").read_bytes())
        sink.write(np.zeros((RATE, 2), np.int16))
        clock.advance(1)
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": clock.monotonic(),
                              "events": (CallEvent(0.0, "call-start", {"source": "gpio"}),)})
        sink.close(Recording(ended, RATE, 0.0, (), {}))
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    assert opening["caller_withheld"] == "private" and opening["caller"] is None
    assert manifest["caller_withheld"] == "private" and manifest["caller"] is None
    assert all(b"Restricted" not in p.read_bytes() for p in data.rglob("*") if p.is_file())


def test_a_reason_survives_a_power_cut(data: Path, clock: ManualClock) -> None:
    call = call_with(clock, CallerId(reason_withheld="out-of-area"))
    spool = open_spool(data, clock)
    sink = SpoolSink(spool, CODEC, PlainSegmenter)
    sink.open(call)
    spool.close()  # the process dies here: no close, no manifest
    with open_spool(data, clock) as spool:
        assert spool.recovery.of("closed-after-crash")
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    assert manifest["ended_by"] == "power-loss" and manifest["caller_withheld"] == "out-of-area"
    assert [r["id"] for r in list_recordings(data)] == [call.call_id]


def test_a_known_caller_has_no_reason_in_the_manifest(data: Path, clock: ManualClock) -> None:
    call = call_with(clock, CallerId(number="5551234567"))
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, PlainSegmenter)
        sink.open(call)
        ended = CallRecord(**{**call.__dict__, "ended_by": "hang-up", "ended_mono": clock.monotonic()})
        sink.close(Recording(ended, 0, None, (), {}))
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    assert manifest["caller_withheld"] is None and isinstance(manifest["caller"], str)
