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

    enroll = sub.add_parser("enroll", parents=[common],
                            help="enrol a box's signing key and give it its role on the TLS broker")
    enroll.add_argument("device", help="the box's device id (its TLS certificate CN)")
    enroll.add_argument("--signing-key", required=True, metavar="B64",
                        help="the public key `linetap keys show` prints on the box")
    enroll.add_argument("--replace", action="store_true", help="replace a different key enrolled before")
    enroll.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [broker]: with tls = true the box's role is created on the "
                             "running broker (default: DATA_DIR/central.toml, else a loopback broker: no role)")
    enroll.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the broker")
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
    export.add_argument("--device", metavar="DEVICE", help="the device, when several have a recording of that id")
    export.add_argument("--force", action="store_true",
                        help="replace an existing FILE (atomically; a symbolic link is replaced, not followed)")
    export.set_defaults(run=_export)

    verify = sub.add_parser("verify", parents=[common],
                            help="re-hash objects, check signatures and chains; non-zero exit on any problem")
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("recording_id", nargs="?", metavar="ID")
    which.add_argument("--all", action="store_true", help="every device")
    verify.add_argument("--device", metavar="DEVICE",
                        help="the device of ID (needed when several have one of that id); with --all, only it")
    verify.add_argument("--strict", action="store_true",
                        help="also exit 1 on orphans: objects no stored manifest vouches for, manifests "
                             "waiting for segments, stale staging")
    verify.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [ingest] (default: DATA_DIR/central.toml, else the defaults)")
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
    erase.add_argument("--device", metavar="DEVICE", help="the device, when several have a recording of that id")
    erase.add_argument("--reason", required=True, metavar="TEXT", help="kept in the tombstone")
    erase.set_defaults(run=_erase)

    hold = sub.add_parser("hold", parents=[common], help="legal hold: a held recording is never erased")
    hold_sub = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    hold_set = hold_sub.add_parser("set", parents=[common])
    hold_set.add_argument("recording_id", metavar="ID")
    hold_set.add_argument("--device", metavar="DEVICE", help="the device, when several have a recording of that id")
    hold_set.add_argument("--reason", metavar="TEXT")
    hold_set.set_defaults(run=_hold)
    hold_clear = hold_sub.add_parser("clear", parents=[common])
    hold_clear.add_argument("recording_id", metavar="ID")
    hold_clear.add_argument("--device", metavar="DEVICE", help="the device, when several have a recording of that id")
    hold_clear.set_defaults(run=_hold)

    retention = sub.add_parser("retention", parents=[common],
                               help="erase what the retention rules make due; remove stale staging")
    retention_sub = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    run = retention_sub.add_parser("run", parents=[common])
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="central config with [retention] and [ingest] (default: DATA_DIR/central.toml, else "
                          "keep all recordings and remove staging older than 7 days)")
    run.add_argument("--dry-run", action="store_true", help="only say what is due")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=_retention)

    add_serve_command(sub, common)
    add_fleet_commands(sub, common)
    add_broker_commands(sub, common)
    return parser


# -- fleet --

def add_fleet_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central fleet ...``: the boxes' status, and signed config and commands to them."""
    broker = argparse.ArgumentParser(add_help=False)
    broker.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [broker], as for serve (default: DATA_DIR/central.toml, else "
                             "a broker on 127.0.0.1:1883 without TLS)")
    fleet = subparsers.add_parser("fleet", parents=[common], help="the boxes: status, config and commands")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    listing = fleet_sub.add_parser("list", parents=[common, broker],
                                   help="every box: online or not, last seen, version, backlog, alarms")
    listing.add_argument("--live", action="store_true",
                         help="read the broker's retained messages now instead of what `serve` tracked "
                              "(the default while it has tracked nothing)")
    listing.add_argument("--timeout", type=float, default=10.0, metavar="S", help="for --live (default 10)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_fleet_list)

    show = fleet_sub.add_parser("show", parents=[common, broker], help="everything known of one box")
    show.add_argument("device")
    show.add_argument("--live", action="store_true", help="as for list")
    show.add_argument("--timeout", type=float, default=10.0, metavar="S", help="for --live (default 10)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_fleet_show)

    config = fleet_sub.add_parser("config", parents=[common], help="signed config pushed to boxes")
    config_sub = config.add_subparsers(dest="fleet_config_command", metavar="ACTION", required=True)
    push = config_sub.add_parser("push", parents=[common, broker],
                                 usage="%(prog)s [options] (DEVICE... | --all) FILE",
                                 help="sign FILE as the next config version of each box, push it (retained) "
                                      "and report per box applied or rejected; exit 1 unless all applied")
    push.add_argument("targets", nargs="+", metavar="DEVICE|FILE",
                      help="the boxes, then the config file (TOML, as on the box, without [device])")
    push.add_argument("--all", action="store_true", help="every enrolled box (then give only FILE)")
    push.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="how long to wait for the reports (default 30)")
    push.add_argument("--json", action="store_true")
    push.set_defaults(run=_fleet_push)

    cmd = fleet_sub.add_parser("cmd", parents=[common, broker],
                               help="send a signed command and print the box's verified answer")
    cmd.add_argument("device")
    cmd.add_argument("name", help="ping, identify, test-announcement, sync-now, logs, purge-synced, restart")
    cmd.add_argument("args", nargs="*", metavar="KEY=VALUE", help="e.g. seconds=30 for identify, lines=200 "
                                                                  "for logs")
    cmd.add_argument("--timeout", type=float, default=15.0, metavar="S", help="wait for the answer (default 15)")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=_fleet_cmd)


def _fleet_broker(args: argparse.Namespace):
    from linetap.sync.central.config import load_config
    from linetap.sync.central.worker import broker_settings

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return broker_settings(load_config(args.config, folder).broker, folder)


def _fleet_views(args: argparse.Namespace):
    """The fleet from the tracked index, or live from the broker when asked or nothing is tracked."""
    from linetap.sync.central.fleet import collect_live, fleet_views
    from linetap.sync.central.index import INDEX_FILE, SqliteIndex

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with SqliteIndex(folder / INDEX_FILE) as index:
        views = fleet_views(index)
        tracked = any(view.state != "unknown" for view in views)
        if args.live or not tracked:
            return collect_live(_fleet_broker(args), index, timeout=args.timeout), True
    return views, False


def _fleet_list(args: argparse.Namespace) -> int:
    views, live = _fleet_views(args)
    if args.json:
        print(json.dumps({"live": live, "devices": [_fleet_summary(v) for v in views]}, indent=2))
        return 0
    if not views:
        print("no boxes seen or enrolled")
        return 0
    print(f"{'DEVICE':<24} {'STATE':<8} {'LAST SEEN':<20} {'VERSION':<12} {'CONFIG':>6} {'BACKLOG':>16}  ALARMS")
    for v in views:
        backlog = "-" if v.backlog_recordings is None else f"{v.backlog_recordings} / {_size(v.backlog_bytes)}"
        print(f"{v.device_id:<24} {v.state:<8} {_iso(v.last_seen_ms) if v.last_seen_ms else '-':<20} "
              f"{v.software_version or '-':<12} {'-' if v.config_version is None else v.config_version:>6} "
              f"{backlog:>16}  {','.join(v.alarms) or '-'}{'' if v.enrolled else '  (not enrolled)'}")
    online = sum(v.state == "online" for v in views)
    print(f"{online} of {len(views)} online ({'live from the broker' if live else 'as tracked by serve'})")
    return 0


def _fleet_summary(view: Any) -> dict[str, Any]:
    return {k: v for k, v in view.as_dict().items() if k != "subjects"}


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def _fleet_show(args: argparse.Namespace) -> int:
    views, live = _fleet_views(args)
    view = next((v for v in views if v.device_id == args.device), None)
    if view is None:
        raise ConfigError(f"no box {args.device!r} is known: not enrolled and never seen "
                          "(`linetap-central fleet list` shows the ids)")
    if args.json:
        print(json.dumps(view.as_dict() | {"live": live}, indent=2))
        return 0
    summary = _fleet_summary(view)
    for key, value in summary.items():
        if key in ("last_seen_ms",):
            value = f"{_iso(value)}" if value else "-"
        print(f"{key + ':':<24} {value if value not in (None, ()) else '-'}")
    for subject in sorted(view.subjects):
        item = view.subjects[subject]
        print(f"{subject} (received {_iso(item['received_ms'])}):")
        print("  " + json.dumps(item["body"], sort_keys=True))
    return 0


def _fleet_push(args: argparse.Namespace) -> int:
    from linetap.sync.central.fleet import push_config

    *devices, config_file = args.targets
    if args.all == bool(devices):
        raise ConfigError("give the boxes then FILE (fleet config push DEVICE... FILE), or --all FILE")
    path = Path(config_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read as UTF-8 text ({e})") from None
    result = push_config(_fleet_broker(args), data_dir(args), None if args.all else devices, text,
                         source=str(path), timeout=args.timeout)
    counts = {name: sum(o.outcome == name for o in result.outcomes)
              for name in ("applied", "rejected", "timeout", "not-sent")}
    if args.json:
        print(json.dumps({"ok": result.ok, "seconds": round(result.seconds, 3), "counts": counts,
                          "devices": [o.as_dict() for o in result.outcomes]}, indent=2))
    else:
        for o in result.outcomes:
            detail = f"changed {','.join(o.changed) or 'nothing'}" if o.ok else f"{o.code}: {o.reason}"
            print(f"{o.device_id:<24} {o.outcome:<9} version {o.version if o.version is not None else '-':<6} "
                  f"{detail}")
        print(", ".join(f"{n} {name}" for name, n in counts.items() if n)
              + f"; last report {result.seconds:.2f} s after the push")
    return 0 if result.ok else 1


def _fleet_cmd(args: argparse.Namespace) -> int:
    from linetap.sync.central.fleet import parse_command_args, send_command

    result = send_command(_fleet_broker(args), data_dir(args), args.device, args.name,
                          parse_command_args(args.args), timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        why = f" {result.code}: {result.reason}" if result.code else ""
        print(f"{result.device_id} {result.command} (seq {result.seq}): {result.status}{why} "
              f"in {result.seconds:.2f} s{'' if result.time_checked else ' (box clock not synchronised)'}")
        if result.result:
            print(json.dumps(result.result, indent=2, sort_keys=True))
    return 0 if result.ok else 1


def add_broker_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``broker-init``: the broker's first dynamic-security file (``sync/dynsec.py``)."""
    from linetap.sync.dynsec import add_broker_commands as register

    register(subparsers, common)


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
    print(f"give every box this recipient (linetap keys init --central-recipient ...):\n  {keys.recipient}")
    print(f"and this operator key, so it obeys the fleet commands and config you sign "
          f"(linetap keys init --operator-key ...; image: operator.pub on the boot partition):\n"
          f"  {keys.operator_public_key_b64}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from linetap.sync.central.config import load_config
    from linetap.sync.central.worker import broker_settings
    from linetap.firmware.errors import SyncError
    from linetap.sync.dynsec import check_box_name, grant_box

    section = load_config(args.config, data_dir(args)).broker
    check_box_name(args.device, section.client_id)
    with _tools(args) as tools:
        tools.enroll(args.device, args.signing_key, replace=args.replace)
    print(f"enrolled {args.device}")
    if not section.tls:
        print("the broker has no TLS (a loopback broker): no broker role to give")
        return 0
    try:
        grant_box(broker_settings(section, data_dir(args)), args.device, timeout=args.timeout)
    except LinetapError as e:
        raise SyncError(f"{args.device}'s key is enrolled, but it has no broker role yet, so the broker "
                           f"refuses everything it does: {e}; run this enroll again once that is fixed") from e
    print(f"{args.device} may now use its own topics on {section.host}:{section.port}")
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
        caller = row["caller_number"] or row["caller_name"] or (
            f"({row['caller_withheld']})" if row.get("caller_withheld") else "-")
        flags = ("F" if row["flagged"] else "-") + ("H" if row["hold"] else "-")
        print(f"{_iso(row['started_ms'])}  {row['device_id']:<16} {row['seq']:>6}  {row['recording_id']}  "
              f"{duration:>8}  {flags}  {row['ended_by'] or '?':<10} {caller}")
    return 0


def _export(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        result = tools.export(args.recording_id, args.output, force=args.force, device_id=args.device)
    print(f"wrote {result.path} ({result.segments} segments, {result.rate} Hz stereo)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from linetap.sync.central.config import load_config

    limits = load_config(args.config, data_dir(args)).ingest
    with _tools(args) as tools:
        reports = tools.verify(None if args.all else args.recording_id, device_id=args.device, limits=limits)
    ok = all(r.ok for r in reports)
    orphans = sum(len(r.orphans) for r in reports)
    passed = ok and not (args.strict and orphans)
    if args.json:
        print(json.dumps({"ok": ok, "orphans": orphans, "strict": args.strict,
                          "devices": [r.as_dict() for r in reports]}, indent=2))
        return 0 if passed else 1
    for report in reports:
        state = "OK" if report.ok else f"{len(report.problems)} problems"
        print(f"{report.device_id}: {report.recordings} recordings, erased seq {report.erased or '-'}, "
              f"missing seq {report.missing or '-'}: {state}")
        for problem in report.problems:
            print(f"  {problem['kind']}: seq {problem['seq']} {problem['recording_id'] or ''}: {problem['detail']}")
        for orphan in report.orphans:
            print(f"  orphan {orphan['kind']}: {orphan['recording_id']} {orphan['object']} {orphan['bytes']} bytes, "
                  f"{orphan['age_days']} days: {orphan['detail']}")
    if not reports:
        print("no devices enrolled")
    elif orphans:
        print(f"{orphans} orphans{' (--strict: failing)' if args.strict else ''}: `linetap-central retention "
              "run` removes stale staging; stored orphans stay for the operator to judge")
    return 0 if passed else 1


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
        key = tools.erase(args.recording_id, args.reason, device_id=args.device)
    print(f"erased {args.recording_id}; tombstone {key}")
    return 0


def _hold(args: argparse.Namespace) -> int:
    hold = args.hold_command == "set"
    with _tools(args) as tools:
        tools.set_hold(args.recording_id, hold, getattr(args, "reason", None), device_id=args.device)
    print(f"legal hold {'set on' if hold else 'cleared from'} {args.recording_id}")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from linetap.sync.central.config import load_config

    folder = data_dir(args)
    config = load_config(args.config, folder)
    with _tools(args) as tools:
        due, held = tools.retention_run(config.retention, dry_run=args.dry_run)
        stale = tools.age_out(config.ingest, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "due" if args.dry_run else "erased": [r for _, r in due],
                          "held": [r for _, r in held],
                          "stale_staging" if args.dry_run else "aged_out": [s.as_dict() for s in stale]}))
        return 0
    for device_id, rid in due:
        print(f"{'due' if args.dry_run else 'erased'} {device_id} {rid}")
    for device_id, rid in held:
        print(f"held {device_id} {rid} (legal hold)")
    for item in stale:
        print(f"{'stale' if args.dry_run else 'aged out'} staging: device {item.device_id} recording "
              f"{item.recording_id} object {item.object} {item.bytes} bytes, last part {_iso(item.last_ms)}")
    print(f"{len(due)} {'due' if args.dry_run else 'erased'}, {len(held)} kept by legal hold, "
          f"{len(stale)} staged objects {'stale' if args.dry_run else 'aged out'} "
          f"(older than {config.ingest.stale_staging_days} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
