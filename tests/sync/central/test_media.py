"""Console playback and peaks: the sans-IO cores, and peaks made from a real ingested recording."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyrage
import pytest
from central_boxes import enrolled

from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init
from linetap.sync.central.media import (AgeFormatError, ListenSessions, RangeNotSatisfiable, SegmentMap,
                                        age_header_length, age_plaintext_size, listen_token, parse_range)
from linetap.sync.central.peaks import MAX_BUCKETS, Peaks, PeaksBuilder, PeaksError, bucket_ms_for, markers
from linetap.sync.central.peaksjob import compute_peaks, fill_all
from linetap.sync.central.store import segment_key
from linetap.sync.central.stored import Stored

RECIPIENT = pyrage.x25519.Identity.generate().to_public()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 30_000, 65_535, 65_536, 65_537, 65_552, 131_072, 200_001])
def test_the_plaintext_size_of_an_age_file_follows_from_its_size_and_header(size: int) -> None:
    data = pyrage.encrypt(b"\x01" * size, [RECIPIENT])  # a fresh header each time: age adds random stanzas
    assert age_plaintext_size(len(data), age_header_length(data)) == size


def test_bytes_that_are_not_age_are_named() -> None:
    with pytest.raises(AgeFormatError, match="not an age file"):
        age_header_length(b"OggS" + bytes(100))
    with pytest.raises(AgeFormatError, match="no end of the age header"):
        age_header_length(b"age-encryption.org/v1\n-> X25519 " + b"A" * 70_000)
    data = pyrage.encrypt(b"x" * 100, [RECIPIENT])
    header = age_header_length(data)
    with pytest.raises(AgeFormatError, match="shorter than its tag"):
        age_plaintext_size(header + 16 + 65_552 + 5, header)  # a chunk cut short
    with pytest.raises(AgeFormatError, match="no room"):
        age_plaintext_size(header + 10, header)


def test_pieces_of_the_segments_join_to_exactly_the_range_asked() -> None:
    rng = random.Random(7)
    for _ in range(300):
        sizes = [rng.choice([0, 1, 2, 50, 999]) for _ in range(rng.randint(1, 8))]
        if sum(sizes) == 0:
            continue
        segments = [bytes(rng.randrange(256) for _ in range(s)) for s in sizes]
        whole = b"".join(segments)
        first = rng.randrange(len(whole))
        last = rng.randrange(first, len(whole))
        pieces = SegmentMap(sizes).pieces(first, last)
        assert b"".join(segments[p.index][p.start:p.stop] for p in pieces) == whole[first:last + 1]
        assert all(p.stop > p.start for p in pieces)  # an empty segment is never fetched
    with pytest.raises(ValueError):
        SegmentMap([10]).pieces(5, 10)


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-", (0, 99)), ("bytes=10-19", (10, 19)), ("bytes=90-500", (90, 99)),
    ("bytes=-10", (90, 99)), ("bytes=-500", (0, 99)), ("BYTES = 5-6", (5, 6)),
    ("bytes=0-1,5-6", None), ("bytes=5-4", None), ("bytes=01-5", None), ("bytes=+1-5", None),
    ("bytes=１-5", None), ("items=0-5", None), ("bytes=" + "9" * 300, None), ("bytes=-", None),
])
def test_a_range_header_is_answered_or_ignored(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=99999999999-"])
def test_a_range_outside_the_file_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, 100)
    assert caught.value.size == 100


def test_one_listen_is_logged_once_until_it_goes_idle() -> None:
    listens = ListenSessions(idle_ms=1000, max_entries=3)
    key = ("ann", "desk-1", "r1", "tok")
    assert listens.first(key, 0) and not listens.first(key, 500) and not listens.first(key, 1400)
    assert listens.first(key, 2500)  # idle past 1 s: a new listen
    assert listens.first(("ann", "desk-1", "r1", "other"), 2600)
    for n in range(5):
        listens.first(("eve", "d", "r", str(n)), 3000)
    assert len(listens._seen) == 3  # bounded, whatever tokens a client invents
    assert listen_token("a1_-B") == "a1_-B" and listen_token("../x") == "" and listen_token("x" * 65) == ""


def test_peaks_are_the_min_and_max_per_bucket_of_each_lane_in_any_block_sizes() -> None:
    rate = 8000
    t = np.arange(rate * 3) / rate
    audio = np.stack([np.sin(2 * np.pi * 100 * t) * 0.5, np.where(t < 1.5, 0.0, 0.25)], axis=1).astype(np.float32)
    whole = PeaksBuilder(rate, 50)
    whole.add(audio)
    made = whole.finish((3, 4))
    pieces = PeaksBuilder(rate, 50)
    rng = random.Random(1)
    at = 0
    while at < len(audio):
        step = rng.randint(1, 1000)
        pieces.add(audio[at:at + step])
        at += step
    again = pieces.finish((3, 4))
    assert len(made.low) == 60 and np.array_equal(made.low, again.low) and np.array_equal(made.high, again.high)
    assert made.high[:, 0].max() == 64 and made.low[:, 0].min() == -64  # 0.5 of full scale
    assert made.high[:29, 1].max() == 0 and made.high[31:, 1].min() == 32  # the caller starts at 1.5 s
    stored = Peaks.from_bytes(made.to_bytes())
    assert stored.sizes == (3, 4) and np.array_equal(stored.high, made.high)
    assert stored.as_json()["lanes"][0]["name"] == "agent"
    int16 = PeaksBuilder(rate, 50)
    int16.add((audio * 32767).astype(np.int16))
    assert np.abs(int16.finish().high.astype(int) - made.high.astype(int)).max() <= 1


def test_long_calls_get_wider_buckets_and_broken_peaks_are_refused() -> None:
    assert bucket_ms_for(60_000) == 50 and bucket_ms_for(3_600_000) == 450
    assert 3_600_000 / bucket_ms_for(3_600_000) <= MAX_BUCKETS
    data = PeaksBuilder(8000, 50).finish((1,)).to_bytes()
    for broken in (b"", b"nonsense" * 10, data[:-1], data + b"\x00", b"LTPK1" + bytes(50)):
        with pytest.raises(PeaksError):
            Peaks.from_bytes(broken)


def test_markers_are_on_the_audio_axis_and_ignore_what_is_malformed() -> None:
    manifest = {
        "audio": {"start_ms": 1000},
        "events": [{"t_ms": 1100, "kind": "announcement-start"}, {"t_ms": 4000, "kind": "announcement-end"},
                   {"t_ms": 16000, "kind": "warning-tone"}, {"t_ms": 20000, "kind": "flag"},
                   {"t_ms": "soon", "kind": "opt-out"}, {"t_ms": 30000, "kind": "hook-flash"}, "junk"],
        "pauses": [[8000, 12000], [40000, None], ["x", 1]], "mutes": [[21000, 22000]],
        "masks": [[25000, 25500]],
    }
    assert markers(manifest) == [
        {"kind": "announcement", "at_ms": 100, "end_ms": 3000}, {"kind": "pause", "at_ms": 7000, "end_ms": 11000},
        {"kind": "tone", "at_ms": 15000, "end_ms": None}, {"kind": "flag", "at_ms": 19000, "end_ms": None},
        {"kind": "mute", "at_ms": 20000, "end_ms": 21000},
        {"kind": "masked-dtmf", "at_ms": 24000, "end_ms": 24500}, {"kind": "pause", "at_ms": 39000, "end_ms": None}]
    assert markers({"events": "no", "audio": 5}) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A central store with two calls ingested from a real box: (data dir, device, recording)."""
    tmp = tmp_path_factory.mktemp("media")
    central = tmp / "central"
    keys_init(central)
    box = enrolled(tmp, central, "desk-1")
    calls = [box.call(4.0), box.call(2.0)]
    with Ingest(central) as ingest:
        for rid in calls:
            acks = [a for p in box.parts(rid) for a in ingest.receive(p)]
            assert acks[-1].status == "stored"
    return central, "desk-1", calls[0]


def test_peaks_of_a_stored_call_hold_its_audio_and_its_segments_sizes(store: tuple[Path, str, str]) -> None:
    central, device, rid = store
    with Stored(central) as stored:
        peaks = compute_peaks(stored, device, rid)
        row = stored.recording(rid, device)
        entries = stored.checked_manifest(row)["segments"]
        derived = []
        for entry in entries:
            data = stored.checked_segment(row, entry)
            derived.append(age_plaintext_size(len(data), age_header_length(data)))
    assert list(peaks.sizes) == derived and len(derived) == 4  # 1 s segments
    assert abs(len(peaks.low) - 80) <= 1  # 4 s in 50 ms buckets
    # The box's test call: a 300 Hz tone on the agent's side, 500 Hz on the caller's, at 6000/32768.
    assert 18 <= int(np.median(peaks.high[5:-5, 0])) <= 26 and 18 <= int(np.median(peaks.high[5:-5, 1])) <= 26


def test_every_recording_gets_peaks_once_and_a_damaged_one_a_reason(store: tuple[Path, str, str],
                                                                      tmp_path: Path) -> None:
    central, device, rid = store
    with Stored(central) as stored:
        second = [r for r in stored.index.without_peaks(10) if r["recording_id"] != rid]
        broken = segment_key(device, second[0]["recording_id"], 0)
        path = central / "objects" / broken
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        try:
            assert fill_all(stored) == 2
        finally:
            path.write_bytes(original)
        assert fill_all(stored) == 0  # once: nothing is made again
        assert Peaks.from_bytes(stored.index.peaks(device, rid)["data"]).bucket_ms == 50
        damaged = stored.index.peaks(device, second[0]["recording_id"])
        assert damaged["data"] is None and "IntegrityError" in damaged["problem"]


def test_serves_peaks_step_makes_peaks_for_calls_stored_while_it_runs(tmp_path: Path) -> None:
    from linetap.sync.central.config import load_config
    from linetap.sync.central.peaksjob import start_peaks

    central = tmp_path / "central"
    keys_init(central)
    box = enrolled(tmp_path, central, "desk-2")
    with start_peaks(central, load_config(None, central), interval_s=0.05) as thread:
        rid = box.call(1.5)
        with Ingest(central) as ingest:
            for part in box.parts(rid):
                ingest.receive(part)
        assert thread.wait_made(1, timeout=30)
    with Stored(central) as stored:
        assert Peaks.from_bytes(stored.index.peaks("desk-2", rid)["data"]).sizes


def test_the_plaintext_cache_keeps_at_most_its_bytes() -> None:
    from linetap.sync.central.media import PlaintextCache

    cache = PlaintextCache(max_bytes=100)
    for n in range(5):
        cache.put(("d", "r", "m", n), bytes(30))
    assert cache.bytes == 90 and cache.get(("d", "r", "m", 0)) is None and cache.get(("d", "r", "m", 4)) == bytes(30)
    cache.get(("d", "r", "m", 2))
    cache.put(("d", "r", "m", 9), bytes(40))  # 3 was the least recently used
    assert cache.get(("d", "r", "m", 3)) is None and cache.get(("d", "r", "m", 2)) is not None
    cache.put(("d", "r", "m", 10), bytes(101))  # larger than the whole cache: not kept
    assert cache.get(("d", "r", "m", 10)) is None and cache.bytes <= 100
