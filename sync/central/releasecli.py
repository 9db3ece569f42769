"""``linetap-central release ...``: the release key, and the releases boxes update to.

The command line of :mod:`linetap.sync.central.releases`;
:mod:`linetap.sync.central.cli` registers it with :func:`add_release_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from linetap.firmware.options import add_json
from linetap.sync.central.cli import data_dir, iso


def add_release_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central release keygen|build|list``."""
    parser = subparsers.add_parser("release", parents=[common], help="the release key and the releases kept")
    sub = parser.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    keygen = sub.add_parser("keygen", parents=[common],
                            help="make a release key (once) and print the public half boxes trust")
    keygen.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="where to write the private key (0600); keep it apart from the data dir, offline")
    keygen.set_defaults(run=_keygen)

    build = sub.add_parser("build", parents=[common],
                           help="sign a folder of wheels as a release and keep it in DATA_DIR/releases")
    build.add_argument("--release-key", type=Path, required=True, metavar="PATH", help="the release key")
    build.add_argument("--wheels", type=Path, required=True, metavar="DIR",
                       help="the wheels: exactly one linetap-VERSION-*.whl and everything it needs")
    build.add_argument("--version", help="check that the linetap wheel is this version")
    build.add_argument("--min-previous", default="0", metavar="V",
                       help="oldest version that may update to it (default 0: any)")
    build.add_argument("--boards", default="*", metavar="a,b|*", help="board profiles it runs on (default *)")
    build.add_argument("--machine", default="aarch64", help="the boxes' machine (default aarch64)")
    build.add_argument("--python", default="cp311", help="the boxes' CPython tag (default cp311)")
    add_json(build)
    build.set_defaults(run=_build)

    listing = sub.add_parser("list", parents=[common], help="the releases kept: version, id, size, files, created")
    add_json(listing)
    listing.set_defaults(run=_list)


def _keygen(args: argparse.Namespace) -> int:
    from linetap.firmware.keys import public_key_b64
    from linetap.sync.central.keys import make_release_key

    public = make_release_key(args.out)
    # The public half alone on stdout, for a script: KEY=$(linetap-central release keygen --out ...).
    print(f"release key written to {args.out}; give every box its public half "
          "(linetap keys init --release-key ...):", file=sys.stderr)
    print(public_key_b64(public))
    return 0


def _build(args: argparse.Namespace) -> int:
    from linetap.sync.central.keys import load_release_key
    from linetap.sync.central.releases import ReleaseStore

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_release_key(args.release_key, folder)
    boards = [b.strip() for b in args.boards.split(",") if b.strip()]
    kept, new = ReleaseStore(folder).build(key, args.wheels, now_ms=round(time.time() * 1000),
                                           version=args.version, min_previous=args.min_previous, boards=boards,
                                           machine=args.machine, python=args.python)
    if args.json:
        print(json.dumps(kept.summary() | {"new": new}, indent=2))
    else:
        print(f"{'built' if new else 'already kept'} release {kept.release.version} {kept.release_id}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from linetap.sync.central.releases import ReleaseStore

    kept = ReleaseStore(data_dir(args)).kept()
    if args.json:
        print(json.dumps({"releases": [k.summary() for k in kept]}, indent=2))
        return 0
    if not kept:
        print("no releases kept; build one with `linetap-central release build`")
        return 0
    print(f"{'VERSION':<12} {'RELEASE ID':<64} {'SIZE':>12} {'FILES':>5}  CREATED")
    for k in kept:
        r = k.release
        print(f"{r.version:<12} {r.release_id:<64} {r.size:>12} {len(r.files):>5}  {iso(r.created_ms)}")
    return 0
