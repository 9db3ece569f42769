"""``linetap-central analyze``, ``search``, ``transcript`` and ``redact``: speech analytics from the command line.

``analyze`` is its own long-running process (run as many as the machine has
cores for; they share the work through the index's job leases); ``--once``
works through what is due and exits. The model folder and the scripts are
checked before any job is claimed, so a wrong ``[analytics] model_dir`` is
explained at start-up with its fix, not job by job.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path
from typing import Any

from linetap.firmware.options import add_json

logger = logging.getLogger(__name__)


def add_analytics_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    analyze = sub.add_parser("analyze", parents=[common],
                             help="transcribe stored calls, score scripts, find spoken card data (a worker)")
    analyze.add_argument("--config", type=Path, metavar="FILE",
                         help="central config with [analytics] and [index] (default: DATA_DIR/central.toml)")
    analyze.add_argument("--once", action="store_true", help="work through what is due, then exit")
    analyze.set_defaults(run=_analyze)
    search = sub.add_parser("search", parents=[common], help="find calls by words or a phrase said in them")
    search.add_argument("phrase", metavar="PHRASE")
    search.add_argument("--limit", type=int, default=50, metavar="N", help="at most N hits (default 50)")
    search.add_argument("--config", type=Path, metavar="FILE", help="central config with [index]")
    add_json(search)
    search.set_defaults(run=_search)
    transcript = sub.add_parser("transcript", parents=[common], help="a call's transcript, both channels")
    transcript.add_argument("recording_id", metavar="ID")
    transcript.add_argument("--device", metavar="DEVICE", help="the device, when several have that id")
    transcript.add_argument("--config", type=Path, metavar="FILE", help="central config with [index]")
    add_json(transcript)
    transcript.set_defaults(run=_transcript)
    redact = sub.add_parser("redact", parents=[common],
                            help="store a copy of a call with its spoken card data silenced, signed by the store")
    redact.add_argument("recording_id", metavar="ID")
    redact.add_argument("--device", metavar="DEVICE", help="the device, when several have that id")
    redact.add_argument("--config", type=Path, metavar="FILE", help="central config with [index] and [store]")
    add_json(redact)
    redact.set_defaults(run=_redact)


def make_worker(folder: Path, config: Any, stored: Any) -> Any:
    """The engine, scripts and worker of ``analyze`` (each checked, with a clear error, before any job)."""
    from linetap.sync.central.analytics.adherence import load_script
    from linetap.sync.central.analytics.engine import WhisperEngine
    from linetap.sync.central.analytics.worker import Settings, Worker

    section = config.analytics
    scripts = [load_script(p if p.is_absolute() else folder / p) for p in map(Path, section.scripts)]
    engine = WhisperEngine(section.model_dir, beam_size=section.beam_size, cpu_threads=section.cpu_threads)
    settings = Settings(lease_s=section.lease_s, max_attempts=section.max_attempts, poll_s=section.poll_s)
    return Worker(stored, engine, scripts, settings=settings)


def _analyze(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.stored import Stored

    folder = data_dir(args)
    config = load_config(args.config, folder)
    with Stored(folder, config=config) as stored:
        worker = make_worker(folder, config, stored)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stopping.set())
        count = worker.run(once=args.once)
    states = [state for _, _, state in worker.done]
    print(f"{count} jobs: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) if count else
          "no jobs due")
    return 0


def _stored(args: argparse.Namespace) -> Any:
    from linetap.sync.central.cli import central_config, data_dir
    from linetap.sync.central.stored import Stored

    return Stored(data_dir(args), config=central_config(args))


def _search(args: argparse.Namespace) -> int:
    with _stored(args) as stored:
        hits = [hit_of(row, args.phrase) for row in stored.index.search_transcripts(args.phrase, args.limit)]
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    if not hits:
        print("no transcript holds that")
    for hit in hits:
        print(f"{hit['device_id']:<16} {hit['recording_id']}  {hit['channel']:<4} at {hit['at_ms'] / 1000:7.1f}s  "
              f"{hit['text']}")
    return 0


def hit_of(row: dict[str, Any], phrase: str) -> dict[str, Any]:
    """A search hit: the line, and the moment in the call where the phrase's first word is said."""
    from linetap.sync.central.analytics.text import tokens

    first = (tokens(phrase) or [""])[0]
    at = next((w[0] for w in row["words"] if first and any(t.startswith(first[:4]) for t in tokens(w[3]))),
              row["start_ms"])
    return {"device_id": row["device_id"], "recording_id": row["recording_id"], "channel": row["channel"],
            "speaker": "agent" if row["channel"] == "near" else "caller", "at_ms": at,
            "start_ms": row["start_ms"], "end_ms": row["end_ms"], "text": row["text"]}


def _transcript(args: argparse.Namespace) -> int:
    with _stored(args) as stored:
        row = stored.recording(args.recording_id, args.device)
        key = (row["device_id"], row["recording_id"])
        lines = stored.index.transcript(*key)
        adherence = stored.index.adherence_results(*key)
        events = stored.index.analysis_events(*key)
        summary = stored.index.analysis_summary().get(key)
    if args.json:
        print(json.dumps({"analysis": summary, "lines": lines, "adherence": adherence, "events": events}, indent=2))
        return 0
    print(f"transcript: {summary['transcript'] if summary else 'not queued yet'}"
          + (f" ({summary['reason']})" if summary and summary["reason"] else ""))
    for line in lines:
        who = "agent " if line["channel"] == "near" else "caller"
        print(f"{line['start_ms'] / 1000:7.1f}s {who}  {line['text']}")
    for item in adherence:
        print(f"{item['script']}/{item['item']} ({item['kind']}): {'pass' if item['passed'] else 'FAIL'} "
              f"score {item['score']}%")
    for event in events:
        print(f"{event['kind']}: {event['detail']} on {event['channel']} at {event['start_ms'] / 1000:.1f}s")
    return 0


def _redact(args: argparse.Namespace) -> int:
    from linetap.sync.central.analytics.redact import redact
    from linetap.sync.central.evidencecli import audited

    with _stored(args) as stored:
        made = redact(stored, args.recording_id, args.device)
        audited(stored, "redact", args.recording_id, args.device, f"silenced {len(made.spans_ms)} spans")
    if args.json:
        print(json.dumps(made.__dict__, indent=2))
        return 0
    print(f"redacted copy {made.audio_key} ({len(made.spans_ms)} spans silenced), signed record {made.record_key}; "
          f"the original may now be erased: linetap-central erase {args.recording_id} --reason ...")
    return 0
