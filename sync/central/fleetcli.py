"""``linetap-central fleet ...``: the boxes' status, and signed config and commands to them.

The command line of :mod:`linetap.sync.central.fleet`; :mod:`linetap.sync.central.cli`
registers it with :func:`add_fleet_commands`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.firmware.options import add_json
from linetap.sync.central.cli import data_dir, index_section, iso
from linetap.sync.central.updatecli import add_update_commands


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
    add_json(listing)
    listing.set_defaults(run=_fleet_list)

    show = fleet_sub.add_parser("show", parents=[common, broker], help="everything known of one box")
    show.add_argument("device")
    show.add_argument("--live", action="store_true", help="as for list")
    show.add_argument("--timeout", type=float, default=10.0, metavar="S", help="for --live (default 10)")
    add_json(show)
    show.set_defaults(run=_fleet_show)
    _add_config_push(fleet_sub, common, broker)
    _add_cmd(fleet_sub, common, broker)
    add_update_commands(fleet_sub, common, broker)


def _add_config_push(fleet_sub: Any, common: argparse.ArgumentParser, broker: argparse.ArgumentParser) -> None:
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
    add_json(push)
    push.set_defaults(run=_fleet_push)


def _add_cmd(fleet_sub: Any, common: argparse.ArgumentParser, broker: argparse.ArgumentParser) -> None:
    cmd = fleet_sub.add_parser("cmd", parents=[common, broker],
                               help="send a signed command and print the box's verified answer")
    cmd.add_argument("device")
    cmd.add_argument("name", help="ping, identify, test-announcement, sync-now, logs, purge-synced, restart")
    cmd.add_argument("args", nargs="*", metavar="KEY=VALUE", help="e.g. seconds=30 for identify, lines=200 "
                                                                  "for logs")
    cmd.add_argument("--timeout", type=float, default=15.0, metavar="S", help="wait for the answer (default 15)")
    add_json(cmd)
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
    from linetap.sync.central.indexes import open_index

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open_index(index_section(args), folder) as index:
        views = fleet_views(index)
        tracked = any(view.state != "unknown" or view.update is not None for view in views)
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
    print(f"{'DEVICE':<24} {'STATE':<8} {'LAST SEEN':<20} {'VERSION':<12} {'CONFIG':>6} {'BACKLOG':>16}  "
          f"{'UPDATE':<18} {'LAST OUTCOME':<24} ALARMS")
    for v in views:
        backlog = "-" if v.backlog_recordings is None else f"{v.backlog_recordings} / {_size(v.backlog_bytes)}"
        print(f"{v.device_id:<24} {v.state:<8} {iso(v.last_seen_ms) if v.last_seen_ms else '-':<20} "
              f"{v.software_version or '-':<12} {'-' if v.config_version is None else v.config_version:>6} "
              f"{backlog:>16}  {v.update_summary():<18} {v.update_outcome or '-':<24} "
              f"{','.join(v.alarms) or '-'}{'' if v.enrolled else '  (not enrolled)'}")
    online = sum(v.state == "online" for v in views)
    print(f"{online} of {len(views)} online ({'live from the broker' if live else 'as tracked by serve'})")
    return 0


def _fleet_summary(view: Any) -> dict[str, Any]:
    return {k: v for k, v in view.as_dict().items() if k not in ("subjects", "update")}


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
            value = f"{iso(value)}" if value else "-"
        print(f"{key + ':':<24} {value if value not in (None, ()) else '-'}")
    if view.update is not None:
        print("update/state:")
        print("  " + json.dumps(view.update, sort_keys=True))
    for subject in sorted(view.subjects):
        item = view.subjects[subject]
        print(f"{subject} (received {iso(item['received_ms'])}):")
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
                         source=str(path), timeout=args.timeout, index_config=index_section(args))
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
                          parse_command_args(args.args), timeout=args.timeout,
                          index_config=index_section(args))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        why = f" {result.code}: {result.reason}" if result.code else ""
        print(f"{result.device_id} {result.command} (seq {result.seq}): {result.status}{why} "
              f"in {result.seconds:.2f} s{'' if result.time_checked else ' (box clock not synchronised)'}")
        if result.result:
            print(json.dumps(result.result, indent=2, sort_keys=True))
    return 0 if result.ok else 1
