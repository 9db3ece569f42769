"""``linetap-central``: the central store's command line.

Everything lives under one data dir (``--data-dir DIR`` or
``LINETAP_CENTRAL_DATA_DIR``)::

    keys/          the age identity (decrypts recordings), the operator key and the store key (receipts)
    index.db       the SQLite index
    objects/       the object store: <device>/<YYYY>/<MM>/<DD>/<recording>/...
    staging/       parts of objects still arriving
    central.toml   the config, when ``--config`` is not given (optional)

Every command's handler is set on its parser as ``run`` (``args.run(args)``
returns the exit code). The store's own commands are here; ``serve``
(:mod:`~linetap.sync.central.worker`), ``fleet``
(:mod:`~linetap.sync.central.fleetcli`) and ``broker-init``
(:mod:`linetap.sync.dynsec`) are added by their modules, named in
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from linetap.firmware.errors import LinetapError
from linetap.firmware.options import CommonOptions, add_json
from linetap.sync.central.config import IngestSection
from linetap.sync.central.evidencecli import audited

logger = logging.getLogger(__name__)

OPTIONS = CommonOptions(prog="linetap-central", description="Central store for linetap recordings.",
                        data_dir_help="the central store's folder", data_dir_env="LINETAP_CENTRAL_DATA_DIR")
DEVICE_HELP = "the device, when several have a recording of that id"


def build_parser() -> argparse.ArgumentParser:
    from linetap.sync.central.analytics.cli import add_analytics_commands
    from linetap.sync.central.consolecli import add_console_commands
    from linetap.sync.central.configcheck import add_config_command
    from linetap.sync.central.evidencecli import add_evidence_commands
    from linetap.sync.central.fleetcli import add_fleet_commands
    from linetap.sync.central.formscli import add_forms_commands
    from linetap.sync.central.migrate import add_migrate_command
    from linetap.sync.central.peaksjob import add_peaks_command
    from linetap.sync.central.releasecli import add_release_commands
    from linetap.sync.central.migratestore import add_migrate_store_command
    from linetap.sync.central.worker import add_serve_command
    from linetap.sync.central.timestampcli import add_timestamp_command
    from linetap.sync.dynsec import add_broker_commands

    parser, common = OPTIONS.parsers()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_keys(sub, common)
    _add_enroll(sub, common)
    _add_list(sub, common)
    _add_export(sub, common)
    _add_verify(sub, common)
    imports = sub.add_parser("import", parents=[common],
                             help="ingest a box's data dir (e.g. its SD card) with the same checks as MQTT")
    imports.add_argument("box_dir", type=Path, metavar="DIR")
    add_json(imports)
    imports.set_defaults(run=_import)
    _add_erase_and_hold(sub, common)
    _add_retention(sub, common)
    add_serve_command(sub, common)
    add_fleet_commands(sub, common)
    add_broker_commands(sub, common)
    add_timestamp_command(sub, common)
    add_evidence_commands(sub, common)
    add_migrate_command(sub, common)
    add_peaks_command(sub, common)
    add_forms_commands(sub, common)
    add_migrate_store_command(sub, common)
    add_analytics_commands(sub, common)
    add_console_commands(sub, common)
    add_config_command(sub, common)
    add_release_commands(sub, common)
    return parser


def _add_config(parser: argparse.ArgumentParser, help: str) -> None:
    """``--config FILE``: the central config; each command says which sections it reads."""
    parser.add_argument("--config", type=Path, metavar="FILE", help=help)


def _add_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common],
                          help="the central age identity, the operator key and the store key")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = keys_sub.add_parser("init", parents=[common],
                               help="create the keys (once) and print the recipient boxes need")
    init.add_argument("--import-identity", type=Path, metavar="FILE",
                      help="use this age identity file (age-keygen -o FILE) instead of making one")
    init.set_defaults(run=_keys_init)
    show = keys_sub.add_parser("show", parents=[common], help="print the public keys boxes need (makes nothing)")
    show.set_defaults(run=_keys_show)


def _add_enroll(sub: Any, common: argparse.ArgumentParser) -> None:
    enroll = sub.add_parser("enroll", parents=[common],
                            help="enrol a box's signing key and give it its role on the TLS broker")
    enroll.add_argument("device", help="the box's device id (its TLS certificate CN)")
    enroll.add_argument("--signing-key", required=True, metavar="B64",
                        help="the public key `linetap keys show` prints on the box")
    enroll.add_argument("--replace", action="store_true", help="replace a different key enrolled before")
    _add_config(enroll, "central config with [broker]: with tls = true the box's role is created on the "
                        "running broker (default: DATA_DIR/central.toml, else a loopback broker: no role)")
    enroll.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the broker")
    enroll.set_defaults(run=_enroll)


def _add_list(sub: Any, common: argparse.ArgumentParser) -> None:
    listing = sub.add_parser("list", parents=[common], help="list stored recordings, oldest first")
    listing.add_argument("--device", help="only this device")
    listing.add_argument("--since", type=_when, metavar="ISO", help="started at or after (e.g. 2026-01-31T09:00)")
    listing.add_argument("--until", type=_when, metavar="ISO", help="started before")
    listing.add_argument("--caller", metavar="TEXT", help="caller number or name contains TEXT")
    listing.add_argument("--flagged", action="store_true", help="only calls flagged on the box")
    listing.add_argument("--min-duration", type=float, metavar="SECONDS", help="at least this long")
    add_json(listing)
    listing.set_defaults(run=_list)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser("export", parents=[common], help="verify, decrypt and write one recording")
    export.add_argument("recording_id", metavar="ID")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.wav|FILE.ogg")
    export.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    export.add_argument("--force", action="store_true",
                        help="replace an existing FILE (atomically; a symbolic link is replaced, not followed)")
    export.set_defaults(run=_export)


def _add_verify(sub: Any, common: argparse.ArgumentParser) -> None:
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
    _add_config(verify, "central config with [ingest], [timestamps] and [evidence] (default: DATA_DIR/central.toml, "
                        "else the defaults)")
    add_json(verify)
    verify.set_defaults(run=_verify)


def _add_erase_and_hold(sub: Any, common: argparse.ArgumentParser) -> None:
    erase = sub.add_parser("erase", parents=[common],
                           help="securely erase a recording, leaving a signed tombstone")
    erase.add_argument("recording_id", metavar="ID")
    erase.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    erase.add_argument("--reason", required=True, metavar="TEXT", help="kept in the tombstone")
    erase.set_defaults(run=_erase)

    hold = sub.add_parser("hold", parents=[common], help="legal hold: a held recording is never erased")
    hold_sub = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    for action in ("set", "clear"):
        parser = hold_sub.add_parser(action, parents=[common])
        parser.add_argument("recording_id", metavar="ID")
        parser.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
        if action == "set":
            parser.add_argument("--reason", metavar="TEXT")
        parser.set_defaults(run=_hold)


def _add_retention(sub: Any, common: argparse.ArgumentParser) -> None:
    retention = sub.add_parser("retention", parents=[common],
                               help="erase what the retention rules make due; remove stale staging")
    retention_sub = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    run = retention_sub.add_parser("run", parents=[common])
    _add_config(run, "central config with [retention] and [ingest] (default: DATA_DIR/central.toml, else keep "
                     f"all recordings and remove staging older than {IngestSection().stale_staging_days} days)")
    run.add_argument("--dry-run", action="store_true", help="only say what is due")
    add_json(run)
    run.set_defaults(run=_retention)


def main(argv: list[str] | None = None) -> int:
    return OPTIONS.main(build_parser(), argv, lambda args: args.run(args))


def data_dir(args: argparse.Namespace) -> Path:
    """The store's folder: ``--data-dir``, else ``$LINETAP_CENTRAL_DATA_DIR`` (there is no default)."""
    return OPTIONS.data_dir(args.data_dir)


def index_section(args: argparse.Namespace) -> Any:
    """The config's ``[index]`` for a command (its ``--config`` when it has one, else DATA_DIR/central.toml)."""
    from linetap.sync.central.config import load_config

    return load_config(getattr(args, "config", None), data_dir(args)).index


def central_config(args: argparse.Namespace) -> Any:
    """The command's central config: its ``--config`` when it has one, else DATA_DIR/central.toml, else defaults."""
    from linetap.sync.central.config import load_config

    return load_config(getattr(args, "config", None), data_dir(args))


def _tools(args: argparse.Namespace):
    from linetap.sync.central.tools import StoreTools

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return StoreTools(folder, config=central_config(args))


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


def iso(ms: int | None) -> str:
    """Epoch milliseconds as an ISO date-time in UTC, ``?`` when unknown."""
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- handlers --

def _keys_init(args: argparse.Namespace) -> int:
    from linetap.sync.central.keys import keys_init

    keys = keys_init(data_dir(args), args.import_identity)
    for made, what in ((keys.identity_created, "age identity"), (keys.operator_created, "operator key"),
                       (keys.store_created, "store key")):
        print(f"{'created' if made else 'kept existing'} {what} in {data_dir(args) / 'keys'}")
    _print_public_keys(keys)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from linetap.sync.central.keys import show_keys

    _print_public_keys(show_keys(data_dir(args)))
    return 0


def _print_public_keys(keys: Any) -> None:
    print(f"give every box this recipient (linetap keys init --central-recipient ...):\n  {keys.recipient}")
    print(f"and this operator key, so it obeys the fleet commands and config you sign "
          f"(linetap keys init --operator-key ...; image: operator.pub on the boot partition):\n"
          f"  {keys.operator_public_key_b64}")
    print(f"and this store key, so it trusts the delivery receipts this store signs "
          f"(linetap keys init --store-key BASE64):\n  {keys.store_public_key_b64}")


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
        receipted = {(r["device_id"], r["recording_id"]): r["stored_ms"] for r in tools.index.receipts()}
        analysed = tools.index.analysis_summary()
    for row in rows:  # when the store signed the recording's delivery receipt; None: it has none
        row["receipt_stored_ms"] = receipted.get((row["device_id"], row["recording_id"]))
        # speech analytics: transcript state, adherence passed/failed, spoken card data; None: not queued yet
        row["analysis"] = analysed.get((row["device_id"], row["recording_id"]))
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
        print(f"{iso(row['started_ms'])}  {row['device_id']:<16} {row['seq']:>6}  {row['recording_id']}  "
              f"{duration:>8}  {flags}  {row['ended_by'] or '?':<10} {caller}")
    return 0


def _export(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        result = tools.export(args.recording_id, args.output, force=args.force, device_id=args.device)
        audited(tools, "export", args.recording_id, args.device, f"file {result.path.name}")
    print(f"wrote {result.path} ({result.segments} segments, {result.rate} Hz stereo)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from linetap.sync.central.config import load_config

    from linetap.sync.central.verify import verify_timestamps

    config = load_config(args.config, data_dir(args))
    with _tools(args) as tools:
        reports = tools.verify(None if args.all else args.recording_id, device_id=args.device, limits=config.ingest,
                               clock=config.evidence)
        one = None if args.all else tools.recording(args.recording_id, args.device)
        stamps = verify_timestamps(tools, config.timestamps, one)
    ok = all(r.ok for r in reports) and stamps.ok
    orphans = sum(len(r.orphans) for r in reports)
    passed = ok and not (args.strict and orphans)
    if args.json:
        print(json.dumps({"ok": ok, "orphans": orphans, "strict": args.strict,
                          "devices": [r.as_dict() for r in reports], "timestamps": stamps.as_dict()}, indent=2))
        return 0 if passed else 1
    for report in reports:
        state = "OK" if report.ok else f"{len(report.problems)} problems"
        print(f"{report.device_id}: {report.recordings} recordings, erased seq {report.erased or '-'}, "
              f"missing seq {report.missing or '-'}: {state}")
        for problem in report.problems:
            print(f"  {problem['kind']}: seq {problem['seq']} {problem['recording_id'] or ''}: {problem['detail']}")
        if report.clock is not None:
            print(f"  clock: {report.clock['text']}")
        for warning in report.warnings:
            print(f"  warning {warning['kind']}: seq {warning['seq']} {warning['recording_id']}: {warning['detail']}")
        for orphan in report.orphans:
            print(f"  orphan {orphan['kind']}: {orphan['recording_id']} {orphan['object']} {orphan['bytes']} bytes, "
                  f"{orphan['age_days']} days: {orphan['detail']}")
    print("\n".join(stamps.lines()))
    if not reports:
        print("no devices enrolled")
    elif orphans:
        print(f"{orphans} orphans{' (--strict: failing)' if args.strict else ''}: `linetap-central retention "
              "run` removes stale staging; stored orphans stay for the operator to judge")
    return 0 if passed else 1


def _import(args: argparse.Namespace) -> int:
    from linetap.sync.central.progress import on_stderr

    with _tools(args) as tools:
        results = tools.import_dir(args.box_dir, progress=on_stderr("import", as_json=args.json))
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
        audited(tools, "erase", args.recording_id, args.device, args.reason)
    print(f"erased {args.recording_id}; tombstone {key}")
    return 0


def _hold(args: argparse.Namespace) -> int:
    hold = args.hold_command == "set"
    with _tools(args) as tools:
        tools.set_hold(args.recording_id, hold, getattr(args, "reason", None), device_id=args.device)
        audited(tools, "hold" if hold else "unhold", args.recording_id, args.device, getattr(args, "reason", None))
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
              f"{item.recording_id} object {item.object} {item.bytes} bytes, last part {iso(item.last_ms)}")
    print(f"{len(due)} {'due' if args.dry_run else 'erased'}, {len(held)} kept by legal hold, "
          f"{len(stale)} staged objects {'stale' if args.dry_run else 'aged out'} "
          f"(older than {config.ingest.stale_staging_days} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
