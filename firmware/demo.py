"""Scripted calls on the simulated board: ``linetap replay`` and ``linetap demo``.

A script is a list of steps at stream times: drive the hook pin, press a
button, make the simulated modem ring or send caller ID. Each step waits
until the driver's event has reached the call loop, so the result does not
depend on thread timing, while the audio runs as fast as the machine allows
(a :class:`ManualClock`), or in real time with ``--realtime``.
"""

from __future__ import annotations

import functools
import json
import math
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from linetap.drivers.audio import AudioFileSource, SampleSource
from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, Ring
from linetap.firmware.app import (
    Board,
    CallLoop,
    Happening,
    build_board,
    load_prompts,
    open_spool,
    read_speech,
)
from linetap.firmware.callflow import CallRecord
from linetap.firmware.consent import Prompt
from linetap.firmware.clock import Clock, ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.dsp import dtmf_tone
from linetap.firmware.errors import ConfigError, DeviceTimeout, SpoolError
from linetap.firmware.recorder import Recording, Sink
from linetap.firmware.keys import keys_init
from linetap.firmware.spool import SpoolSink, list_recordings
from linetap.sync.agent import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.worker import BrokerSettings, run_workers

EVENT_TIMEOUT = 5.0  # a simulated driver answers in milliseconds; this only bounds a failure


class _Inbox:
    """Driver events on their way to the loop, with a way to wait for one to arrive."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._seen: list[object] = []
        self._cond = threading.Condition()

    def post(self, item: object) -> None:
        self.queue.put(item)
        with self._cond:
            self._seen.append(item)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._seen)

    def wait_for(self, since: int, match: Callable[[object], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: any(match(e) for e in self._seen[since:]),
                                       timeout=EVENT_TIMEOUT):
                raise DeviceTimeout(f"the simulated board did not report {what} within "
                                    f"{EVENT_TIMEOUT} s")


@dataclass(frozen=True)
class Step:
    t: float
    kind: str  # hook-off, hook-on, modem-hook-off, modem-hook-on, pause, pause-long, flag, ring, caller-id
    args: dict[str, Any] = field(default_factory=dict)


class SimulatedCalls:
    """Runs a script against the simulated board through the real call loop."""

    def __init__(self, config: Config, near: np.ndarray | SampleSource, far: np.ndarray | SampleSource, *,
                 sink: Sink, clock: Clock, prompts: dict[str, Prompt] | None = None,
                 on_happening: Callable[[Happening], None] | None = None,
                 on_recording: Callable[[Recording], None] | None = None,
                 keep_played: bool = True) -> None:
        profile = config.board_profile()
        if profile.audio.driver != "sim" or profile.gpio.pin_factory != "mock":
            raise ConfigError(f"scripted calls need the simulated board; device.board is "
                              f"{config.device.board!r}. Use the default config or board = \"sim\"")
        self._inbox = _Inbox()
        self.board: Board = build_board(config, clock, self._inbox.post, near=near, far=far,
                                        keep_played=keep_played)
        try:
            self.loop = CallLoop(config, self.board, sink, clock, inbox=self._inbox.queue,
                                 prompts=prompts, on_happening=on_happening,
                                 on_recording=on_recording)
        except BaseException:
            self.board.close()
            raise
        self._gpio = profile.gpio
        self._long_press = config.controls.long_press_s

    def run(self, script: list[Step], *, after_block: Callable[[], None] | None = None) -> None:
        """Play the audio through the loop, doing each step when its time comes.

        ``after_block`` is called after each block is processed (tests check
        invariants there).
        """
        steps = sorted(script, key=lambda s: s.t)
        codec = self.board.codec
        codec.start()
        try:
            while True:
                block = codec.read(timeout=10.0)
                if block is None:
                    break
                while steps and steps[0].t <= block.t:
                    self._do(steps.pop(0))
                self.loop.drain()
                self.loop.process(block)
                if after_block is not None:
                    after_block()
            for step in steps:  # steps after the audio ended (a hang-up at the very end)
                self._do(step)
            self.loop.drain()
            self.loop.finish()
        finally:
            self.board.close()

    def _pin(self, number: int):  # noqa: ANN202 - gpiozero's MockPin
        return self.board.pin_factory.pin(number)

    def _do(self, step: Step) -> None:
        mark = self._inbox.mark()
        if step.kind in ("hook-off", "hook-on"):
            off = step.kind == "hook-off"
            pin = self._pin(self._gpio.hook)
            (pin.drive_high if off == (self._gpio.hook_active == "high") else pin.drive_low)()
            self._inbox.wait_for(mark, lambda e: isinstance(e, HookChanged) and e.off_hook == off,
                                 f"the hook going {'off' if off else 'on'}")
        elif step.kind in ("pause", "pause-long", "flag"):
            button = "flag" if step.kind == "flag" else "pause"
            long = step.kind == "pause-long"
            pin = self._pin(self._gpio.pause_button if button == "pause" else self._gpio.flag_button)
            pin.drive_low()
            if long:
                self._inbox.wait_for(mark, lambda e: e == ButtonPressed(button, True), "a long press")
            pin.drive_high()
            if not long:
                self._inbox.wait_for(mark, lambda e: e == ButtonPressed(button, False), "a press")
        elif step.kind in ("modem-hook-off", "modem-hook-on"):
            assert self.board.modem is not None
            off = step.kind == "modem-hook-off"
            self.board.modem.handset(off)
            self._inbox.wait_for(mark, lambda e: isinstance(e, HookChanged) and e.off_hook == off,
                                 f"the modem's handset {'off' if off else 'on'} hook")
        elif step.kind == "ring":
            assert self.board.modem is not None
            self.board.modem.ring()
            self._inbox.wait_for(mark, lambda e: isinstance(e, Ring), "RING")
        elif step.kind == "caller-id":
            assert self.board.modem is not None
            self.board.modem.caller_id(**step.args)
            self._inbox.wait_for(mark, lambda e: isinstance(e, CallerId), "caller ID")
        else:
            raise ValueError(f"unknown script step {step.kind!r}")


# ------------------------------------------------------------------ replay --

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
            _print_report(report)
    losses = [r["lost"] for r in reports if r["lost"]]
    for loss in losses:
        print(f"linetap: {loss}", file=sys.stderr)
    return 1 if losses else 0


def _print_report(report: dict[str, Any], out=sys.stdout) -> None:
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


# -------------------------------------------------------------------- demo --

def bundled_speech(rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The shipped two-sided conversation (agent near, caller far) at ``rate``."""
    data = resources.files("linetap.firmware") / "data"
    with resources.as_file(data / "speech-near.ogg") as near, resources.as_file(data / "speech-far.ogg") as far:
        return read_speech(near, rate), read_speech(far, rate)


def _with_digits(far: np.ndarray, rate: int, at_s: float, digits: str) -> np.ndarray:
    """The caller keys in ``digits`` at ``at_s``: 80 ms tones, 80 ms apart."""
    far = far.copy()
    pos = int(at_s * rate)
    for digit in digits:
        tone = dtmf_tone(digit, 0.08, rate, level_dbfs=-10)
        far[pos:pos + len(tone)] = tone[: len(far) - pos]
        pos += len(tone) + int(0.08 * rate)
    return far


def run_demo(config: Config, data_dir: Path, *, realtime: bool) -> int:
    """The main job, end to end on one machine: broker, central store, box, three calls, sync, export.

    ``data_dir`` is a work folder made fresh on every run (refused if it holds
    anything but a previous demo): ``box/`` is the box's data dir, ``central/``
    the central store's, ``broker/`` the broker's, ``exports/`` the exported call.
    """
    rate = config.audio.rate
    near, far = bundled_speech(rate)
    seconds = len(near) / rate
    gap_s = 4.0
    gap = np.zeros(int(gap_s * rate), np.int16)
    if not config.consent.opt_out_key:
        config = config.model_copy(update={"consent": config.consent.model_copy(update={"opt_out_key": "9"})})
    # Call 1 keys in card digits (masked); call 2 is paused for a while; in call 3 the caller opts out.
    far1 = _with_digits(far, rate, 17.0, "4111")
    far3 = _with_digits(far, rate, 8.0, config.consent.opt_out_key)
    call_starts = [gap_s + n * (seconds + gap_s) for n in range(3)]
    near_all = np.concatenate([gap, near, gap, near, gap, near, gap])
    far_all = np.concatenate([gap, far1, gap, far, gap, far3, gap])
    script = []
    for n, start in enumerate(call_starts, 1):
        script += [Step(start - 1.5, "ring"),
                   Step(start - 1.4, "caller-id", {"number": f"555010{n}", "name": "DEMO CALLER",
                                                   "date": "1129", "time": "0930"}),
                   Step(start, "hook-off"), Step(start + seconds, "hook-on")]
    script += [Step(call_starts[1] + 20.0, "pause"), Step(call_starts[1] + 30.0, "pause"),
               Step(call_starts[0] + 40.0, "flag")]

    _fresh_workdir(data_dir)
    box_dir, central_dir = data_dir / "box", data_dir / "central"
    recipient = _demo_keys(config, box_dir, central_dir)
    print(f"linetap demo, in {data_dir}:")
    print(f"  central store  {central_dir}  (age identity and operator key made; box enrolled and trusting the operator)")
    print(f"  box            {box_dir}  (device {config.device.id!r}, encrypting to {recipient[:16]}...)")
    recordings: list[Recording] = []
    with LocalBroker(data_dir / "broker", persistence=False) as broker, \
            run_workers(2, functools.partial(Ingest, central_dir),
                        BrokerSettings(host=broker.host, port=broker.port, tls=False),
                        client_id_prefix="demo-central"):
        print(f"  broker         Mosquitto on {broker.host}:{broker.port}, 2 central ingest workers sharing it")
        config = config.model_copy(update={"sync": config.sync.model_copy(
            update={"broker": broker.host, "port": broker.port, "tls": False})})
        clock = SystemClock() if realtime else ManualClock()
        sink = open_spool(config, box_dir, clock)
        sync = BoxSync(config, sink.spool, box_dir, clock=SystemClock()).start()

        def narrate(h: Happening) -> None:
            print(f"  {h.t:7.2f} s  {h.device:<7} {h.what}")

        def recorded(recording: Recording) -> None:
            recordings.append(recording)
            sync.notify()

        print(f"\nThree calls on the simulated board ({config.device.board}), {rate} Hz, "
              f"{'real time' if realtime else 'as fast as possible'}. Consent: announcement "
              f"{config.consent.language!r}, warning tone every {config.consent.warning_interval_s:g} s, "
              f"caller opt-out key {config.consent.opt_out_key!r} (set for the demo).")
        print("What each device did (stream time):")
        try:
            calls = SimulatedCalls(config, near_all, far_all, sink=sink, clock=clock,
                                   on_happening=narrate, on_recording=recorded)
            calls.run(script)
            synced = _wait_synced(box_dir, [r.call.call_id for r in recordings], SYNC_TIMEOUT_S)
            upload = sync.status()
        finally:
            sync.close()
            sink.spool.close()
    print()
    reports = [recording_report(r) for r in recordings]
    stored = stored_report(box_dir, [r["call_id"] for r in reports])
    for report in reports:
        report["stored"], report["data_dir"] = stored.get(report["call_id"]), str(box_dir)
        _print_report(report)
    with StoreTools(central_dir) as tools:
        verified = tools.verify()
        _print_summary(reports, tools)
        ok = synced and bool(verified) and all(device.ok for device in verified)
        for device in verified:
            print(f"\nlinetap-central verify --all: device {device.device_id}: {device.recordings} recordings, "
                  f"{'chain intact, every hash and signature checked' if device.ok else 'PROBLEMS'}"
                  + "".join(f"\n  {p['kind']} seq={p['seq']}: {p['detail']}" for p in device.problems))
        if not synced:
            print(f"NOT all synced within {SYNC_TIMEOUT_S:.0f} s: {upload}")
        kept = next((r for r in reports if r["recorded"]), None)
        if kept is not None and synced:
            (data_dir / "exports").mkdir()
            out = tools.export(kept["call_id"], data_dir / "exports" / f"{kept['call_id']}.wav")
            print(f"\nThe box holds no key that decrypts its recordings; the central store does. Call "
                  f"{kept['call_id']} exported to {out.path} ({(out.frames or 0) / out.rate:.1f} s, "
                  f"stereo: left = agent, right = caller). By hand:\n"
                  f"  linetap-central --data-dir {central_dir} export {kept['call_id']} -o call.wav")
    return 0 if ok else 1


SYNC_TIMEOUT_S = 60.0
DEMO_MARK = ".linetap-demo"
DEMO_FOLDERS = {"box", "central", "broker", "exports", DEMO_MARK}


def _fresh_workdir(data_dir: Path) -> None:
    """Start each demo from nothing, without ever deleting a folder the demo did not make."""
    if data_dir.exists() and any(data_dir.iterdir()):
        made_by_demo = (data_dir / DEMO_MARK).exists() or \
            {p.name for p in data_dir.iterdir()} <= DEMO_FOLDERS  # an older demo, before the mark
        if not made_by_demo:
            raise ConfigError(f"{data_dir} is not empty and was not made by the demo; the demo starts "
                              "fresh on every run, so give it a new folder with --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_MARK).write_text("made by linetap demo; removed and made again on every run\n")


def _demo_keys(config: Config, box_dir: Path, central_dir: Path) -> str:
    """Central keys, the box's keys made with the central recipient and operator key, the box enrolled."""
    central = central_keys_init(central_dir)
    info = keys_init(box_dir, central.recipient, operator_key=central.operator_public_key_b64)
    with StoreTools(central_dir) as tools:
        tools.enroll(config.device.id, info.public_key_b64)
    return central.recipient


def _wait_synced(box_dir: Path, ids: list[str], timeout: float) -> bool:
    """Until the central store has acknowledged every recording's manifest (or the timeout)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a bounded wait between looks at the catalogue
    while True:
        states = {row["id"]: row["state"] for row in list_recordings(box_dir)}
        if all(states.get(i) == "synced" for i in ids):
            return True
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)


def _print_summary(reports: list[dict[str, Any]], tools: StoreTools) -> None:
    rows = [("seq", "call", "length", "kept", "consent and privacy", "QA talk near/far, silence",
             "at the central store")]
    names = {"announcement-start": "announced", "opt-out": "caller opted out", "pause-start": "paused",
             "private": "private", "flag": "flagged"}
    for report in reports:
        consent = [names[e["kind"]] for e in report["events"] if e["kind"] in names]
        if report["masked_spans_s"]:
            consent.append(f"{len(report['masked_spans_s'])} DTMF masked")
        qa = report["qa"]
        talk = (f"{qa['talk_s']['near']:.0f}/{qa['talk_s']['far']:.0f} s, {qa['silence_share']:.0%}"
                if qa.get("duration_s") else "-")
        row = tools.index.recording(report["call_id"])
        where = str(tools.store.path(row["manifest_key"]).parent) if row else "NOT at the central store"
        seq = str(report["stored"]["seq"]) if report.get("stored") else "-"
        rows.append((seq, report["call_id"][:13] + "...", f"{report['duration_s']:.1f} s",
                     f"{report['kept_s']:.1f} s", ", ".join(dict.fromkeys(consent)), talk, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
