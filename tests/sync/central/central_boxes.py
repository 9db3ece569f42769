"""Real boxes for the central store's tests: a spool with keys, calls recorded by the box's own code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyrage

from linetap.drivers.events import CallerId
from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.clock import ManualClock
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink
from linetap.sync import wire

RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=1.0)
# 20 s at 64 kbit/s: about 160 KB, more than one upload part.
BIG_CODEC = CodecParams(rate=RATE, bitrate=64000, segment_s=20.0)


def uuid7_at(wall_s: float, serial: int) -> str:
    ms = int(wall_s * 1000)
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:12]}-7000-8000-{serial:012x}"


@dataclass
class Box:
    """One box: its data dir, spool and clock; ``calls`` are the recording ids it closed, in order."""

    data_dir: Path
    device_id: str
    clock: ManualClock
    spool: Spool
    public_key_b64: str
    calls: list[str] = field(default_factory=list)

    def call(self, seconds: float, *, codec: CodecParams = CODEC, flagged: bool = False,
             number: str | None = "+15551230001", name: str | None = "ACME Corp", synced: bool = True) -> str:
        sink = SpoolSink(self.spool, codec)
        rid = uuid7_at(self.clock.wall(), len(self.calls) + 1)
        call = CallRecord(rid, self.clock.monotonic(), self.clock.wall(), synced,
                          caller=CallerId(number=number, name=name), flagged=flagged)
        t = np.arange(int(RATE * seconds)) / RATE
        frames = (np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1)
                  * 6000).astype(np.int16)
        sink.open(call)
        for start in range(0, len(frames), 160):
            sink.write(frames[start:start + 160])
            self.clock.advance(0.02)
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": self.clock.monotonic(),
                              "events": (CallEvent(0.0, "call-start", {"source": "gpio"}),
                                         CallEvent(0.1, "announcement-start", {}),
                                         CallEvent(2.0, "announcement-end", {}))})
        sink.close(Recording(ended, len(frames), 0.0, (), {"talk_share": 0.5}))
        self.calls.append(rid)
        self.clock.advance(60)
        return rid

    def folder(self, rid: str) -> Path:
        return self.data_dir / "spool" / rid

    def manifest(self, rid: str) -> bytes:
        return (self.folder(rid) / "manifest.json").read_bytes()

    def segments(self, rid: str) -> list[tuple[int, bytes]]:
        entries = json.loads(self.manifest(rid))["segments"]
        return [(e["index"], (self.folder(rid) / f"{e['index']:06d}.age").read_bytes()) for e in entries]

    def parts(self, rid: str, *, manifest: bool = True) -> list[wire.Part]:
        """Every upload message of a recording, segments first, as the uploader sends them."""
        out = [p for index, data in self.segments(rid)
               for p in wire.split(self.device_id, rid, wire.ObjectRef.segment(index), data)]
        if manifest:
            out += wire.split(self.device_id, rid, wire.ObjectRef.manifest(), self.manifest(rid))
        return out


def make_box(root: Path, device_id: str, identity: pyrage.x25519.Identity) -> Box:
    data = root / device_id
    info = keys_init(data, str(identity.to_public()))
    clock = ManualClock()
    spool = Spool(data, device_id=device_id, clock=clock, disk_free=lambda _path: 10 ** 12)
    return Box(data, device_id, clock, spool, info.public_key_b64)


def enrolled(tmp_path: Path, central: Path, device_id: str) -> Box:
    """A box made under ``tmp_path`` whose signing key the central store in ``central`` has enrolled."""
    from linetap.sync.central.keys import load_identity
    from linetap.sync.central.tools import StoreTools

    made = make_box(tmp_path / "boxes", device_id, load_identity(central))
    with StoreTools(central) as tools:
        tools.enroll(made.device_id, made.public_key_b64)
    return made
