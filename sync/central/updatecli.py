"""``linetap-central fleet update ...`` and ``fleet group ...``: rollouts of releases, and named groups of boxes.

The command line of :mod:`linetap.sync.central.rollout`;
:mod:`linetap.sync.central.fleetcli` registers it with :func:`add_update_commands`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.firmware.options import add_json
from linetap.sync import wire
from linetap.sync.central.cli import data_dir, index_section, iso


def add_update_commands(fleet_sub: Any, common: argparse.ArgumentParser, broker: argparse.ArgumentParser) -> None:
    update = fleet_sub.add_parser("update", parents=[common], help="offer a release to boxes, follow, halt")
    sub = update.add_subparsers(dest="fleet_update_command", metavar="ACTION", required=True)
    push = sub.add_parser("push", parents=[common, broker],
                          usage="%(prog)s [options] VERSION (DEVICE... | --all | --percent N | --group NAME)",
                          help="offer the kept release of VERSION (signed, retained) to the boxes named")
    push.add_argument("version", metavar="VERSION")
    push.add_argument("devices", nargs="*", metavar="DEVICE")
    push.add_argument("--all", action="store_true", help="every enrolled box")
    push.add_argument("--percent", type=float, metavar="N", help="a stable N%% of the enrolled boxes")
    push.add_argument("--group", metavar="NAME", help="the boxes of a group (fleet group add)")
    push.add_argument("--halt-at", type=float, default=0.2, metavar="SHARE",
                      help="halt by itself when more than this share rolled back or failed (default 0.2)")
    push.add_argument("--allow-downgrade", action="store_true", help="sign an offer of an older version")
    push.add_argument("--ttl-days", type=float, default=14.0, metavar="D",
                      help="the offer expires after D days (default 14)")
    push.add_argument("--timeout", type=float, default=30.0, metavar="S", help="for the broker (default 30)")
    add_json(push)
    push.set_defaults(run=_push)

    status = sub.add_parser("status", parents=[common], help="the rollouts, or one rollout box by box")
    status.add_argument("rollout", nargs="?")
    add_json(status)
    status.set_defaults(run=_status)

    halt = sub.add_parser("halt", parents=[common, broker],
                          help="halt a rollout: withdraw the offers of boxes that have not started installing")
    halt.add_argument("rollout")
    halt.add_argument("--timeout", type=float, default=30.0, metavar="S", help="for the broker (default 30)")
    halt.set_defaults(run=_halt)

    group = fleet_sub.add_parser("group", parents=[common], help="named groups of boxes, for staged rollouts")
    group_sub = group.add_subparsers(dest="fleet_group_command", metavar="ACTION", required=True)
    add = group_sub.add_parser("add", parents=[common], help="put boxes in a group (made when first used)")
    add.add_argument("name")
    add.add_argument("devices", nargs="+", metavar="DEVICE")
    add.set_defaults(run=_group_add)
    remove = group_sub.add_parser("remove", parents=[common], help="take boxes out of a group")
    remove.add_argument("name")
    remove.add_argument("devices", nargs="+", metavar="DEVICE")
    remove.set_defaults(run=_group_remove)
    listing = group_sub.add_parser("list", parents=[common], help="the groups and their boxes")
    add_json(listing)
    listing.set_defaults(run=_group_list)


def _index(args: argparse.Namespace):
    from linetap.sync.central.indexes import open_index

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open_index(index_section(args), folder)


def _push(args: argparse.Namespace) -> int:
    from linetap.sync.central.fleetcli import _fleet_broker
    from linetap.sync.central.rollout import Targets, push_update

    targets = Targets(devices=tuple(args.devices), everyone=args.all, percent=args.percent, group=args.group)
    pushed = push_update(_fleet_broker(args), data_dir(args), args.version, targets, halt_at=args.halt_at,
                         allow_downgrade=args.allow_downgrade, ttl_days=args.ttl_days, timeout=args.timeout,
                         index_config=index_section(args))
    if args.json:
        print(json.dumps({"rollout": pushed.rollout_id, "version": pushed.version, "release_id": pushed.release_id,
                          "devices": list(pushed.devices)}, indent=2))
    else:
        print(f"rollout {pushed.rollout_id}: release {pushed.version} ({pushed.release_id[:16]}...) offered to "
              f"{len(pushed.devices)} boxes: {', '.join(pushed.devices)}")
        print(f"follow it with `linetap-central fleet update status {pushed.rollout_id}`")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _index(args) as index:
        if args.rollout is None:
            rollouts = index.rollouts()
            counts = {r["rollout_id"]: _counts(index.rollout_targets(r["rollout_id"])) for r in rollouts}
            if args.json:
                print(json.dumps({"rollouts": [r | {"counts": counts[r["rollout_id"]]} for r in rollouts]},
                                 indent=2))
                return 0
            if not rollouts:
                print("no rollouts; start one with `linetap-central fleet update push VERSION ...`")
            for r in rollouts:
                c = counts[r["rollout_id"]]
                print(f"{r['rollout_id']:<28} {r['version']:<10} {r['state']:<7} {iso(r['created_ms'])}  "
                      + ", ".join(f"{n} {k}" for k, n in c.items() if n))
            return 0
        rollout = index.rollout(args.rollout)
        if rollout is None:
            raise ConfigError(f"no rollout {args.rollout!r}; `linetap-central fleet update status` lists them")
        targets = index.rollout_targets(args.rollout)
    if args.json:
        print(json.dumps(rollout | {"counts": _counts(targets), "targets": targets}, indent=2))
        return 0
    print(f"rollout {rollout['rollout_id']}: version {rollout['version']} release {rollout['release_id']}")
    print(f"state {rollout['state']}{' (' + rollout['reason'] + ')' if rollout['reason'] else ''}; "
          f"halts past {rollout['halt_permille'] / 10:g}% rolled back; created {iso(rollout['created_ms'])}")
    print(f"{'DEVICE':<24} {'STATE':<13} {'PROGRESS':>8}  OUTCOME")
    for t in targets:
        progress = f"{100 * t['have'] // t['total']}%" if t["total"] else "-"
        outcome = "-" if t["outcome"] is None else f"{t['outcome']}" + (f" {t['code']}: {t['reason']}"
                                                                         if t["code"] else "")
        state = "withdrawn" if t["withdrawn_ms"] and t["outcome"] is None else (t["state"] or "not seen")
        print(f"{t['device_id']:<24} {state:<13} {progress:>8}  {outcome}")
    return 0


def _counts(targets: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"targets": len(targets), "installed": 0, "rolled-back": 0, "failed": 0, "refused": 0,
              "withdrawn": 0, "pending": 0}
    for t in targets:
        key = t["outcome"] or ("withdrawn" if t["withdrawn_ms"] else "pending")
        counts[key] = counts.get(key, 0) + 1
    return counts


def _halt(args: argparse.Namespace) -> int:
    from linetap.sync.central.fleetcli import _fleet_broker
    from linetap.sync.central.rollout import halt_rollout

    withdrawn = halt_rollout(_fleet_broker(args), data_dir(args), args.rollout, timeout=args.timeout,
                             index_config=index_section(args))
    print(f"rollout {args.rollout} halted; offers withdrawn from {len(withdrawn)} boxes"
          + (f": {', '.join(withdrawn)}" if withdrawn else ""))
    return 0


def _group_add(args: argparse.Namespace) -> int:
    devices = [wire.check_device_id(d) for d in args.devices]
    with _index(args) as index:
        enrolled = {d["device_id"] for d in index.devices()}
        unknown = sorted(set(devices) - enrolled)
        if unknown:
            raise ConfigError(f"not enrolled: {', '.join(unknown)}; enrol boxes with `linetap-central enroll` first")
        index.add_to_group(_group_name(args.name), devices, round(time.time() * 1000))
    print(f"group {args.name}: added {', '.join(devices)}")
    return 0


def _group_remove(args: argparse.Namespace) -> int:
    with _index(args) as index:
        index.remove_from_group(_group_name(args.name), args.devices)
    print(f"group {args.name}: removed {', '.join(args.devices)}")
    return 0


def _group_name(name: str) -> str:
    if not wire.DEVICE_ID.fullmatch(name):
        raise ConfigError(f"group name {name[:40]!r} must be letters, digits and '-' like a device id")
    return name


def _group_list(args: argparse.Namespace) -> int:
    with _index(args) as index:
        groups = index.groups()
    if args.json:
        print(json.dumps({"groups": groups}, indent=2))
        return 0
    if not groups:
        print("no groups; make one with `linetap-central fleet group add NAME DEVICE...`")
        return 0
    print(f"{'GROUP':<24} {'BOXES':>5}  DEVICES")
    for name, devices in groups.items():
        print(f"{name:<24} {len(devices):>5}  {', '.join(devices)}")
    return 0
