"""``linetap demo``: the main job, end to end on one machine.

A :class:`~linetap.sync.broker.LocalBroker` (Mosquitto on a free loopback
port), a central store with fresh keys and two ingest workers, and the box on
the simulated board running three scripted calls
(:mod:`linetap.firmware.scripted`) and uploading through
:class:`~linetap.sync.boxsync.BoxSync`; then the central ``verify`` and an
export. The audio runs as fast as the machine allows, or in real time with
``--realtime``.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from linetap.firmware.callloop import Happening, open_spool
from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.dsp import dtmf_tone
from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.replay import print_report, recording_report, stored_report
from linetap.firmware.scripted import SimulatedCalls, Step, bundled_speech
from linetap.firmware.spool import list_recordings
from linetap.sync.boxsync import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.worker import BrokerSettings, run_workers

SYNC_TIMEOUT_S = 60.0
DEMO_MARK = ".linetap-demo"
DEMO_FOLDERS = {"box", "central", "broker", "exports", DEMO_MARK}
GAP_S = 4.0  # silence before, between and after the calls


def run_demo(config: Config, data_dir: Path, *, realtime: bool) -> int:
    """The main job, end to end on one machine: broker, central store, box, three calls, sync, export.

    ``data_dir`` is a work folder made fresh on every run (refused if it holds
    anything but a previous demo): ``box/`` is the box's data dir, ``central/``
    the central store's, ``broker/`` the broker's, ``exports/`` the exported call.
    """
    config, near, far, script = _three_calls(config)
    _fresh_workdir(data_dir)
    box_dir, central_dir = data_dir / "box", data_dir / "central"
    recipient = _demo_keys(config, box_dir, central_dir)
    print(f"linetap demo, in {data_dir}:")
    print(f"  central store  {central_dir}  (age identity, operator and store keys made; box enrolled, "
          "trusting the operator and the store's receipts)")
    print(f"  box            {box_dir}  (device {config.device.id!r}, encrypting to {recipient[:16]}...)")
    with LocalBroker(data_dir / "broker", persistence=False) as broker, \
            run_workers(2, functools.partial(Ingest, central_dir),
                        BrokerSettings(host=broker.host, port=broker.port, tls=False),
                        client_id_prefix="demo-central"):
        print(f"  broker         Mosquitto on {broker.host}:{broker.port}, 2 central ingest workers sharing it")
        config = config.model_copy(update={"sync": config.sync.model_copy(
            update={"broker": broker.host, "port": broker.port, "tls": False})})
        recordings, synced, upload = _run_calls(config, box_dir, near, far, script, realtime=realtime)
    print()
    reports = [recording_report(r) for r in recordings]
    stored = stored_report(box_dir, [r["call_id"] for r in reports])
    for report in reports:
        report["stored"], report["data_dir"] = stored.get(report["call_id"]), str(box_dir)
        print_report(report)
    ok = _verify_and_export(data_dir, central_dir, reports, synced, upload)
    _console_login(central_dir)
    return 0 if ok else 1


def _three_calls(config: Config) -> tuple[Config, np.ndarray, np.ndarray, list[Step]]:
    """The demo's config (an opt-out key set), its near and far audio and its script.

    Call 1 keys in card digits (masked); call 2 is paused for a while; in call 3 the caller opts out.
    """
    rate = config.audio.rate
    near, far = bundled_speech(rate)
    seconds = len(near) / rate
    gap = np.zeros(int(GAP_S * rate), np.int16)
    if not config.consent.opt_out_key:
        config = config.model_copy(update={"consent": config.consent.model_copy(update={"opt_out_key": "9"})})
    far1 = _with_digits(far, rate, 17.0, "4111")
    far3 = _with_digits(far, rate, 8.0, config.consent.opt_out_key)
    call_starts = [GAP_S + n * (seconds + GAP_S) for n in range(3)]
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
    return config, near_all, far_all, script


def _run_calls(config: Config, box_dir: Path, near: np.ndarray, far: np.ndarray, script: list[Step], *,
               realtime: bool) -> tuple[list[Recording], bool, Any]:
    """The box's calls, narrated, uploaded through the broker: the recordings, whether all synced, the upload."""
    recordings: list[Recording] = []
    clock = SystemClock() if realtime else ManualClock()
    sink = open_spool(config, box_dir, clock)
    sync = BoxSync(config, sink.spool, box_dir, clock=SystemClock()).start()

    def narrate(h: Happening) -> None:
        print(f"  {h.t:7.2f} s  {h.device:<7} {h.what}")

    def recorded(recording: Recording) -> None:
        recordings.append(recording)
        sync.notify()

    print(f"\nThree calls on the simulated board ({config.device.board}), {config.audio.rate} Hz, "
          f"{'real time' if realtime else 'as fast as possible'}. Consent: announcement "
          f"{config.consent.language!r}, warning tone every {config.consent.warning_interval_s:g} s, "
          f"caller opt-out key {config.consent.opt_out_key!r} (set for the demo).")
    print("What each device did (stream time):")
    try:
        calls = SimulatedCalls(config, near, far, sink=sink, clock=clock,
                               on_happening=narrate, on_recording=recorded)
        calls.run(script)
        synced = _wait_synced(box_dir, [r.call.call_id for r in recordings], SYNC_TIMEOUT_S)
        upload = sync.status()
    finally:
        sync.close()
        sink.spool.close()
    return recordings, synced, upload


def _verify_and_export(data_dir: Path, central_dir: Path, reports: list[dict[str, Any]], synced: bool,
                       upload: Any) -> bool:
    """The central store's summary and ``verify``, and one kept call exported; True when all is well."""
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
    return ok


def _console_login(central_dir: Path) -> None:
    """The calls' waveforms (as ``serve`` makes them), a console user ``admin`` with a new random password
    printed once, and how to open the calls in the console."""
    from linetap.sync.central.peaksjob import fill_peaks
    from linetap.sync.central.web.accounts import add_user
    from linetap.sync.central.web.settings import WebSection

    with StoreTools(central_dir) as tools:
        fill_peaks(tools)
        password = add_user(tools.index, "admin", "admin", None, None, tools.now_ms())  # generated
    web = WebSection()  # the console's defaults: loopback
    print(f"\nOpen these calls in the QA console:\n"
          f"  linetap-central --data-dir {central_dir} web\n"
          f"  then http://{web.host}:{web.port}/ and log in as admin with the one-time password {password}\n"
          "  (made by this run and shown only here; the store keeps only its argon2 hash; the next demo makes "
          "a new one)")


def _with_digits(far: np.ndarray, rate: int, at_s: float, digits: str) -> np.ndarray:
    """The caller keys in ``digits`` at ``at_s``: 80 ms tones, 80 ms apart."""
    far = far.copy()
    pos = int(at_s * rate)
    for digit in digits:
        tone = dtmf_tone(digit, 0.08, rate, level_dbfs=-10)
        far[pos:pos + len(tone)] = tone[: len(far) - pos]
        pos += len(tone) + int(0.08 * rate)
    return far


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
    """Central keys, the box's keys made with the central recipient, operator and store keys, the box enrolled."""
    central = central_keys_init(central_dir)
    info = keys_init(box_dir, central.recipient, operator_key=central.operator_public_key_b64,
                     store_key=central.store_public_key_b64)
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
