"""``linetap replay``: one call from two audio files through the simulated board into the spool.

Also the per-call report the demo prints (:func:`recording_report`,
:func:`print_report`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linetap.drivers.audio import AudioFileSource
from linetap.firmware.callflow import CallRecord
from linetap.firmware.callloop import load_prompts, open_spool
from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.errors import SpoolError
from linetap.firmware.recorder import Recording
from linetap.firmware.scripted import SimulatedCalls, Step
from linetap.firmware.spool import SpoolSink, list_recordings


def recording_report(recording: Recording) -> dict[str, Any]:
    call = recording.call
    return {
        "call_id": call.call_id,
        "recorded": call.recorded,
        "flagged": call.flagged,
        "ended_by": call.ended_by,
        "duration_s": round((call.ended_mono or call.started_mono) - call.started_mono, 3),
        "caller_id_known": call.caller is not None,
        "kept_s": recording.metrics.get("duration_s", 0.0),  # the metrics run on what was kept
        "audio_start_s": recording.audio_start_s,
        "events": [{"t": e.t, "kind": e.kind, **e.detail} for e in call.events],
        "masked_spans_s": [list(span) for span in recording.masks],
        "qa": recording.metrics,
    }


def stored_report(data_dir: Path, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the spool holds for each call: seq, state, segments, bytes."""
    rows = {row["id"]: row for row in list_recordings(data_dir)}
    return {cid: {k: rows[cid][k] for k in ("seq", "state", "segments", "bytes")}
            for cid in call_ids if cid in rows}


class _StorageWatch:
    """The spool's sink as the recorder sees it, noting per call what could not be stored and why.

    Errors pass through unchanged (the recorder turns them into the call
    flow's fault); replay reports them afterwards and exits 1.
    """

    def __init__(self, sink: SpoolSink) -> None:
        self._sink = sink
        self._call: str | None = None
        self.failures: dict[str, list[tuple[str, str]]] = {}  # call id -> (step, why)

    def open(self, call: CallRecord) -> None:
        self._call = call.call_id
        self._watch("open", self._sink.open, call)

    def write(self, frames: np.ndarray) -> None:
        self._watch("write", self._sink.write, frames)

    def discard(self) -> None:
        self._watch("discard", self._sink.discard)

    def close(self, recording: Recording) -> None:
        rec = self._sink.recording
        self._watch("close", self._sink.close, recording)
        if rec is not None and rec.full and not self.failures.get(recording.call.call_id):
            self._note("write", f"disk full while writing segment {len(rec.segments)} (the call's last)")

    def _watch(self, step: str, method: Callable[..., None], *args: object) -> None:
        try:
            method(*args)
        except SpoolError as exc:
            self._note(step, str(exc))
            raise

    def _note(self, step: str, why: str) -> None:
        self.failures.setdefault(self._call or "?", []).append((step, why))


def storage_loss(report: dict[str, Any], failures: list[tuple[str, str]], config: Config) -> str | None:
    """One line saying what of a replayed call the spool lost and why; None when nothing was lost."""
    if not failures:
        return None
    call = f"call {report['call_id']}"
    stored = report.get("stored") or {}
    segments = stored.get("segments", 0)
    lines = []
    for step, why in failures:
        if step == "open":
            lines.append(f"{call}: nothing stored: {why} (config: spool.max_bytes = {config.spool.max_bytes}, "
                         f"spool.min_free_mb = {config.spool.min_free_mb})")
        elif step == "write":
            meant = report["duration_s"] - (report["audio_start_s"] or 0.0)
            lines.append(f"{call}: audio lost after {segments * config.spool.segment_s:.1f} s of "
                         f"{meant:.1f} s: {why}; the {segments} segments stored before it are kept")
        elif step == "close":
            lines.append(f"{call}: not closed: {why}; its {segments} stored segments are kept and the next "
                         f"start closes the recording from them")
        else:
            lines.append(f"{call}: {step} failed: {why}")
    return "; ".join(dict.fromkeys(lines))


def run_replay(config: Config, data_dir: Path, near_path: Path, far_path: Path, *, as_json: bool,
               realtime: bool) -> int:
    """One call from two audio files, streamed through the simulated board into the spool.

    Exit 0 when everything the call flow meant to keep was stored; 1 (what
    was stored stays stored) when the spool could not take it, saying what
    was lost and why.
    """
    rate = config.audio.rate
    clock = SystemClock() if realtime else ManualClock()
    prompts = load_prompts(config)  # a bad prompt is a config error: reported before anything else
    near = AudioFileSource(near_path, rate)
    try:
        far = AudioFileSource(far_path, rate)
    except BaseException:
        near.close()
        raise
    sink = open_spool(config, data_dir, clock)
    watch = _StorageWatch(sink)
    recordings: list[Recording] = []
    try:
        calls = SimulatedCalls(config, near, far, sink=watch, clock=clock, prompts=prompts,
                               on_recording=recordings.append, keep_played=False)
        # The hook goes back on when the audio ends, whatever its length.
        calls.run([Step(0.0, "hook-off"), Step(math.inf, "hook-on")])
    finally:
        sink.spool.close()
        near.close()
        far.close()
    reports = [recording_report(r) for r in recordings]
    stored = stored_report(data_dir, [r["call_id"] for r in reports])
    for report in reports:
        report["stored"] = stored.get(report["call_id"])
        report["data_dir"] = str(data_dir)
        report["lost"] = storage_loss(report, watch.failures.get(report["call_id"], []), config)
    if as_json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        for report in reports:
            print_report(report)
    losses = [r["lost"] for r in reports if r["lost"]]
    for loss in losses:
        print(f"linetap: {loss}", file=sys.stderr)
    return 1 if losses else 0


def print_report(report: dict[str, Any], out=sys.stdout) -> None:
    print(f"call {report['call_id']}: {report['duration_s']:.1f} s, "
          f"{'recorded' if report['recorded'] else 'NOT recorded'} "
          f"({report['kept_s']:.1f} s kept), ended by {report['ended_by']}"
          f"{', flagged' if report['flagged'] else ''}", file=out)
    for event in report["events"]:
        detail = {k: v for k, v in event.items() if k not in ("t", "kind")}
        extra = " ".join(f"{k}={str(v)[:16]}" for k, v in detail.items())
        print(f"  {event['t']:7.2f} s  {event['kind']}  {extra}".rstrip(), file=out)
    for start, end in report["masked_spans_s"]:
        print(f"  {start:7.2f} s  DTMF masked until {end:.2f} s", file=out)
    if report.get("stored"):
        stored = report["stored"]
        print(f"  stored: seq {stored['seq']}, {stored['state']}, {stored['segments']} encrypted "
              f"segments, {stored['bytes']} bytes under {report.get('data_dir', '')}", file=out)
    qa = report["qa"]
    if qa.get("duration_s"):
        print(f"  QA: talk near {qa['talk_s']['near']:.1f} s / far {qa['talk_s']['far']:.1f} s, "
              f"silence {qa['silence_share']:.0%}, over-talk {qa['overtalk_share']:.0%}, "
              f"longest monologue near {qa['longest_monologue_s']['near']:.1f} s / far "
              f"{qa['longest_monologue_s']['far']:.1f} s, holds {qa['hold_spans']}", file=out)
