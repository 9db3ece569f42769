"""Real boxes for the central store's tests: a spool with keys, calls recorded by the box's own code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
             number: str | None = "+15551230001", name: str | None = "ACME Corp", synced: bool = True,
             metrics: dict[str, Any] | None = None) -> str:
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
        sink.close(Recording(ended, len(frames), 0.0, (), {"talk_share": 0.5} if metrics is None else metrics))
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


# -- what a central store holds, on whichever backend its data dir's central.toml names --

def central_store(central: Path):
    from linetap.sync.central.config import load_config
    from linetap.sync.central.store import open_store

    return open_store(load_config(None, central), central)


def central_index(central: Path):
    """The index of the data dir (close it: ``with central_index(central) as index``)."""
    from linetap.sync.central.config import load_config
    from linetap.sync.central.indexes import open_index

    return open_index(load_config(None, central).index, central)


def stored_object(central: Path, key: str) -> bytes | None:
    """The object under ``key`` in the data dir's store, None when there is none."""
    from linetap.sync.central.store import ObjectMissing

    try:
        return central_store(central).get(key)
    except ObjectMissing:
        return None


def stored_keys(central: Path) -> list[str]:
    """Every object version in the data dir's store by key, sorted (a key twice means a doubled write);
    no temporary file of the file store is an object."""
    from linetap.sync.central.store import FileStore, TMP_PREFIX

    store = central_store(central)
    if isinstance(store, FileStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()
                      and not p.name.startswith(TMP_PREFIX))
    page = store._client.list_object_versions(Bucket=store.bucket, Prefix=store.prefix)  # a test's bucket: one page
    return sorted(v["Key"][len(store.prefix):] for v in page.get("Versions", []))


def add_config(folder: Path, text: str) -> None:
    """Put the sections of ``text`` in the data dir's ``central.toml`` in place of any of the same name;
    the others (the backend's ``[index]`` and ``[store]``) stay."""
    path = Path(folder) / "central.toml"
    new = _sections(text)
    kept = {name: body for name, body in _sections(path.read_text() if path.exists() else "").items()
            if name not in new}
    path.write_text("".join(kept.values()) + "".join(new.values()))


def _sections(text: str) -> dict[str, str]:
    """``[name]`` -> that header and its lines (lines before any header under "")."""
    found: dict[str, str] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            name = line.strip()
        found[name] = found.get(name, "") + line
    return found
