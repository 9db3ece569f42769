"""One analysis job end to end, and the worker loop of ``linetap-central analyze``.

A job: claim a recording's lease from the index; skip it, decoding nothing,
when the call was private, opted out, discarded or not recorded; otherwise
read its manifest and segments back checked (:class:`~linetap.sync.central.stored.Stored`),
decrypt them in memory, decode the Opus stream straight to 16 kHz, silence
every masked and paused span the manifest lists (the box silenced them
already; this holds even for a manifest whose audio did not), transcribe the
agent (near, left) and the caller (far, right) apart, drop any word heard in a
silenced span, find and redact spoken card data, score the scripts, and write
it all with :meth:`~.tables.AnalyticsTables.finish_job` in one transaction.

Faults are the job's: any exception while working on one call (a segment that
does not decrypt or decode, the engine crashing, ``MemoryError``) marks that
job failed with the reason; it is claimed again until ``max_attempts``, and
the worker goes on with the next. Only an index that cannot work at all
(``StoreUnavailable``) stops the worker. A renewer thread extends the lease
while the engine runs, so a long call is not taken by a second worker, and a
killed worker's lease simply runs out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from linetap.firmware.clock import Clock, SystemClock
from linetap.sync.central.analytics import text
from linetap.sync.central.analytics.adherence import Script, evaluate
from linetap.sync.central.analytics.engine import RATE, Engine, Word
from linetap.sync.central.analytics.tables import LeaseLost, Results
from linetap.sync.central.store import StoreUnavailable
from linetap.sync.central.stored import Stored

logger = logging.getLogger(__name__)

CHANNELS = ("near", "far")  # the stereo stream's left and right: agent, caller
SKIP_EVENTS = {"private": "private call", "opt-out": "caller opted out"}


@dataclass(frozen=True)
class Settings:
    lease_s: float = 300.0
    max_attempts: int = 3
    poll_s: float = 10.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def skip_reason(row: dict[str, Any]) -> str | None:
    """Why a call gets no transcript (known from its index row, before anything is decoded)."""
    if row["erased_ms"] is not None:
        return "erased"
    for event in row.get("consent") or ():
        if isinstance(event, dict) and event.get("kind") in SKIP_EVENTS:
            return SKIP_EVENTS[event["kind"]]
    if row["discarded"] or not row["recorded"] or not row["segments"]:
        return "no audio kept (discarded or not recorded)"
    return None


def silenced_spans(manifest: dict[str, Any]) -> list[tuple[float, float]]:
    """Masked, paused and unended spans in seconds from the audio's start (the manifest's event axis
    shifted by ``audio.start_ms``)."""
    audio = manifest.get("audio") if isinstance(manifest.get("audio"), dict) else {}
    origin = audio.get("start_ms") if type(audio.get("start_ms")) is int else 0
    spans = []
    for key in ("masks", "pauses"):
        for span in manifest.get(key) or ():
            if not (isinstance(span, list) and len(span) == 2 and type(span[0]) is int):
                continue
            end = span[1] if type(span[1]) is int else 2 ** 53  # a pause never ended: silent to the end
            spans.append(((span[0] - origin) / 1000, (end - origin) / 1000))
    return spans


def channel_audio(stored: Stored, row: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[tuple[float, float]]]:
    """The call's two channels as float32 at 16 kHz with silenced spans zeroed, and those spans."""
    from linetap.firmware.encoder import segments_to_pcm
    from linetap.sync.central.export import decrypted

    manifest = stored.checked_manifest(row)
    pcm = segments_to_pcm(decrypted(stored, row, manifest), RATE)
    spans = silenced_spans(manifest)
    audio = {}
    for i, name in enumerate(CHANNELS):
        samples = pcm[:, i].astype(np.float32) / 32768.0
        for a, b in spans:
            samples[max(0, int(a * RATE)):max(0, min(len(samples), int(b * RATE)))] = 0.0
        audio[name] = samples
    return audio, spans


def analyse(words: dict[str, list[Word]], scripts: Sequence[Script], key: tuple[str, str], engine: str,
            now_ms: int) -> Results:
    """Rows for the index from each channel's (already filtered) words: redacted lines, adherence, events."""
    lines, events = [], []
    for name, said in words.items():
        spans = text.card_spans(said)
        said = words[name] = text.redacted(said, spans)
        events += [(*key, "spoken-card-data", name, _ms(s.start), _ms(s.end), s.kind, now_ms) for s in spans]
        for n, line in enumerate(text.lines(said)):
            packed = [[_ms(w.start), _ms(w.end), round(w.probability * 100), w.text] for w in line]
            lines.append((*key, name, n, _ms(line[0].start), _ms(line[-1].end), " ".join(w.text for w in line),
                          json.dumps(packed)))
    adherence = [(*key, r.script, r.item, r.kind, int(r.passed), r.score, r.at_ms, r.heard)
                 for script in scripts for r in evaluate(script, words)]
    return Results(lines, adherence, events, engine)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class Worker:
    """Claims and runs jobs until told to stop (``run``) or until none is due (``run(once=True)``)."""

    def __init__(self, stored: Stored, engine: Engine, scripts: Sequence[Script] = (), *,
                 settings: Settings = Settings(), clock: Clock | None = None, name: str | None = None) -> None:
        self.stored, self.engine, self.scripts = stored, engine, list(scripts)
        self.settings = settings
        self.clock = clock or SystemClock()
        self.name = name or worker_name()
        self.stopping = threading.Event()
        self.done: list[tuple[str, str, str]] = []  # (device, recording, final state) of each job run

    def now_ms(self) -> int:
        return round(self.clock.wall() * 1000)

    def run(self, *, once: bool = False) -> int:
        """Work until ``stopping`` is set (or, with ``once``, until nothing is due); returns jobs run."""
        count = 0
        while not self.stopping.is_set():
            self.stored.index.enqueue_jobs(self.now_ms())
            while not self.stopping.is_set() and self.run_one():
                count += 1
            if once:
                break
            self.stopping.wait(self.settings.poll_s)
        return count

    def run_one(self) -> bool:
        """Claim one job and run it; False when none is due."""
        s = self.settings
        job = self.stored.index.claim_job(self.name, self.now_ms(), round(s.lease_s * 1000), s.max_attempts)
        if job is None:
            return False
        device, rid = job["device_id"], job["recording_id"]
        renewer = _Renewer(self, device, rid)
        renewer.start()
        try:
            state = self._job(device, rid)
        finally:
            renewer.stop()
        self.done.append((device, rid, state))
        return True

    def _job(self, device: str, rid: str) -> str:
        index = self.stored.index
        try:
            row = self.stored.recording(rid, device)
            reason = skip_reason(row)
            if reason is not None:
                index.end_job(device, rid, self.name, "skipped", reason, self.now_ms())
                logger.info("analysis skipped device=%s recording=%s reason=%s", device, rid, reason)
                return "skipped"
            results = self._results(row)
            index.finish_job(device, rid, self.name, results, self.now_ms())
        except LeaseLost as e:  # taken by another worker after ours ran out: theirs to finish
            logger.warning("analysis lease lost device=%s recording=%s: %s", device, rid, e)
            return "lost"
        except StoreUnavailable:
            raise
        except (Exception, MemoryError) as e:  # this call's fault: the job fails, the worker goes on
            reason = f"{type(e).__name__}: {e}"
            logger.warning("analysis failed device=%s recording=%s reason=%s", device, rid, reason)
            index.end_job(device, rid, self.name, "failed", reason, self.now_ms())
            return "failed"
        logger.info("analysis done device=%s recording=%s lines=%d card_spans=%d", device, rid,
                    len(results.lines), len(results.events))
        return "done"

    def _results(self, row: dict[str, Any]) -> Results:
        audio, spans = channel_audio(self.stored, row)
        words = {name: text.outside(self.engine.transcribe(samples), spans) if samples.any() else []
                 for name, samples in audio.items()}
        return analyse(words, self.scripts, (row["device_id"], row["recording_id"]), self.engine.name,
                       self.now_ms())


class _Renewer:
    """Extends a job's lease every third of it while the job runs (thread ``analyze-lease``)."""

    def __init__(self, worker: Worker, device: str, rid: str) -> None:
        self.worker, self.device, self.rid = worker, device, rid
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="analyze-lease", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        lease_s = self.worker.settings.lease_s
        while not self.stopping.wait(lease_s / 3):
            until = self.worker.now_ms() + round(lease_s * 1000)
            try:
                if not self.worker.stored.index.renew_lease(self.device, self.rid, self.worker.name, until):
                    return
            except StoreUnavailable as e:
                logger.warning("lease not renewed device=%s recording=%s: %s", self.device, self.rid, e)
