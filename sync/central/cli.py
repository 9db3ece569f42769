"""``linetap-central``: the central store's command line.

Everything lives under one data dir (``--data-dir DIR`` or
``LINETAP_CENTRAL_DATA_DIR``)::

    keys/          the age identity (decrypts recordings) and the operator key
    index.db       the SQLite index
    objects/       the object store: <device>/<YYYY>/<MM>/<DD>/<recording>/...
    staging/       parts of objects still arriving
    central.toml   the config, when ``--config`` is not given (optional)

Every command's handler is set on its parser as ``run`` (``args.run(args)``
returns the exit code), so commands defined elsewhere plug in the same way:
see :func:`add_serve_command`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from linetap.firmware import __version__
from linetap.firmware.errors import ConfigError, LinetapError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "LINETAP_CENTRAL_DATA_DIR"
WORKER_MODULE = "linetap.sync.central.worker"


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (SUPPRESS keeps the earlier value)."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", default=default(None),
                        help=f"the central store's folder (default: ${DATA_DIR_ENV})")
    common.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more log output (-v info, -vv debug)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(prog="linetap-central", parents=[_common(defaults=True)],
                                     description="Central store for linetap recordings.")
    parser.add_argument("--version", action="version", version=f"linetap-central {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keys = sub.add_parser("keys", parents=[common], help="the central age identity and the operator key")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = keys_sub.add_parser("init", parents=[common],
                               help="create the keys (once) and print the recipient boxes need")
    init.add_argument("--import-identity", type=Path, metavar="FILE",
                      help="use this age identity file (age-keygen -o FILE) instead of making one")
    init.set_defaults(run=_keys_init)

    enroll = sub.add_parser("enroll", parents=[common], help="enrol a box's signing key")
    enroll.add_argument("device", help="the box's device id (its TLS certificate CN)")
    enroll.add_argument("--signing-key", required=True, metavar="B64",
                        help="the public key `linetap keys show` prints on the box")
    enroll.add_argument("--replace", action="store_true", help="replace a different key enrolled before")
    enroll.set_defaults(run=_enroll)

    listing = sub.add_parser("list", parents=[common], help="list stored recordings, oldest first")
    listing.add_argument("--device", help="only this device")
    listing.add_argument("--since", type=_when, metavar="ISO", help="started at or after (e.g. 2026-01-31T09:00)")
    listing.add_argument("--until", type=_when, metavar="ISO", help="started before")
    listing.add_argument("--caller", metavar="TEXT", help="caller number or name contains TEXT")
    listing.add_argument("--flagged", action="store_true", help="only calls flagged on the box")
    listing.add_argument("--min-duration", type=float, metavar="SECONDS", help="at least this long")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    export = sub.add_parser("export", parents=[common], help="verify, decrypt and write one recording")
    export.add_argument("recording_id", metavar="ID")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.wav|FILE.ogg")
    export.set_defaults(run=_export)

    verify = sub.add_parser("verify", parents=[common],
                            help="re-hash objects, check signatures and chains; non-zero exit on any problem")
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("recording_id", nargs="?", metavar="ID")
    which.add_argument("--all", action="store_true", help="every device")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_verify)

    imports = sub.add_parser("import", parents=[common],
                             help="ingest a box's data dir (e.g. its SD card) with the same checks as MQTT")
    imports.add_argument("box_dir", type=Path, metavar="DIR")
    imports.add_argument("--json", action="store_true")
    imports.set_defaults(run=_import)

    erase = sub.add_parser("erase", parents=[common],
                           help="securely erase a recording, leaving a signed tombstone")
    erase.add_argument("recording_id", metavar="ID")
    erase.add_argument("--reason", required=True, metavar="TEXT", help="kept in the tombstone")
    erase.set_defaults(run=_erase)

    hold = sub.add_parser("hold", parents=[common], help="legal hold: a held recording is never erased")
    hold_sub = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    hold_set = hold_sub.add_parser("set", parents=[common])
    hold_set.add_argument("recording_id", metavar="ID")
    hold_set.add_argument("--reason", metavar="TEXT")
    hold_set.set_defaults(run=_hold)
    hold_clear = hold_sub.add_parser("clear", parents=[common])
    hold_clear.add_argument("recording_id", metavar="ID")
    hold_clear.set_defaults(run=_hold)

    retention = sub.add_parser("retention", parents=[common], help="erase what the retention rules make due")
    retention_sub = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    run = retention_sub.add_parser("run", parents=[common])
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="central config with [retention] (default: DATA_DIR/central.toml, else keep all)")
    run.add_argument("--dry-run", action="store_true", help="only say what is due")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=_retention)

    add_serve_command(sub, common)
    return parser


def add_serve_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Plug-in point of ``serve``, the MQTT ingest service.

    ``sync/central/worker.py`` defines ``add_serve_command(subparsers, common)``,
    which adds the ``serve`` parser (with ``parents=[common]``) and sets its
    ``run`` to a function of the parsed args returning the exit code; its
    ``--config`` is read with :func:`linetap.sync.central.config.load_config`.
    Until that function exists the command line has no ``serve``.
    """
    if importlib.util.find_spec(WORKER_MODULE) is None:
        return
    register = getattr(importlib.import_module(WORKER_MODULE), "add_serve_command", None)
    if register is not None:
        register(subparsers, common)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.run(args)
    except LinetapError as exc:
        print(f"linetap-central: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def data_dir(args: argparse.Namespace) -> Path:
    value = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ConfigError(f"no data dir: pass --data-dir DIR or set {DATA_DIR_ENV}")
    return Path(value)


def _tools(args: argparse.Namespace):
    from linetap.sync.central.tools import StoreTools

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return StoreTools(folder)


def _when(text: str) -> int:
    """ISO date or date-time (naive = UTC) as epoch milliseconds."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time (2026-01-31 or "
                                         "2026-01-31T09:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return round(moment.timestamp() * 1000)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- handlers --

def _keys_init(args: argparse.Namespace) -> int:
    from linetap.sync.central.keys import keys_init

    keys = keys_init(data_dir(args), args.import_identity)
    print(f"{'created' if keys.identity_created else 'kept existing'} age identity in "
          f"{data_dir(args) / 'keys'}")
    print(f"operator public key: {keys.operator_public_key_b64}")
    print(f"give every box this recipient (linetap keys init --central-recipient ...):\n  {keys.recipient}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        tools.enroll(args.device, args.signing_key, replace=args.replace)
    print(f"enrolled {args.device}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        rows = tools.index.recordings(
            device_id=args.device, since_ms=args.since, until_ms=args.until, caller=args.caller,
            flagged=True if args.flagged else None,
            min_duration_ms=None if args.min_duration is None else round(args.min_duration * 1000))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no recordings match")
    for row in rows:
        duration = "?" if row["duration_ms"] is None else f"{row['duration_ms'] / 1000:.1f}s"
        caller = row["caller_number"] or row["caller_name"] or "-"
        flags = ("F" if row["flagged"] else "-") + ("H" if row["hold"] else "-")
        print(f"{_iso(row['started_ms'])}  {row['device_id']:<16} {row['seq']:>6}  {row['recording_id']}  "
              f"{duration:>8}  {flags}  {row['ended_by'] or '?':<10} {caller}")
    return 0


def _export(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        result = tools.export(args.recording_id, args.output)
    print(f"wrote {result.path} ({result.segments} segments, {result.rate} Hz stereo)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        reports = tools.verify(None if args.all else args.recording_id)
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "devices": [r.as_dict() for r in reports]}, indent=2))
        return 0 if ok else 1
    for report in reports:
        state = "OK" if report.ok else f"{len(report.problems)} problems"
        print(f"{report.device_id}: {report.recordings} recordings, erased seq {report.erased or '-'}, "
              f"missing seq {report.missing or '-'}: {state}")
        for problem in report.problems:
            print(f"  {problem['kind']}: seq {problem['seq']} {problem['recording_id'] or ''}: {problem['detail']}")
    if not reports:
        print("no devices enrolled")
    return 0 if ok else 1


def _import(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        results = tools.import_dir(args.box_dir)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            why = f" {r.code}: {r.reason}" if r.code or (r.reason and r.status != "stored") else ""
            print(f"{r.recording_id}  {r.status}{why}")
    return 0 if all(r.status in ("stored", "skipped") for r in results) else 1


def _erase(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        key = tools.erase(args.recording_id, args.reason)
    print(f"erased {args.recording_id}; tombstone {key}")
    return 0


def _hold(args: argparse.Namespace) -> int:
    hold = args.hold_command == "set"
    with _tools(args) as tools:
        tools.set_hold(args.recording_id, hold, getattr(args, "reason", None))
    print(f"legal hold {'set on' if hold else 'cleared from'} {args.recording_id}")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from linetap.sync.central.config import load_config

    folder = data_dir(args)
    config = load_config(args.config, folder)
    with _tools(args) as tools:
        due, held = tools.retention_run(config.retention, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "due" if args.dry_run else "erased": due, "held": held}))
        return 0
    for rid in due:
        print(f"{'due' if args.dry_run else 'erased'} {rid}")
    for rid in held:
        print(f"held {rid} (legal hold)")
    print(f"{len(due)} {'due' if args.dry_run else 'erased'}, {len(held)} kept by legal hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
