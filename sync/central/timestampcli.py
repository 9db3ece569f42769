"""``linetap-central timestamp``: ask the configured TSA for a trusted timestamp now, and store it.

The command line of :mod:`linetap.sync.central.tsa`; :mod:`linetap.sync.central.cli`
registers it with :func:`add_timestamp_command`. ``serve`` stamps on its own
schedule; this is for an operator who wants a stamp at once (before handing
out evidence, say). It stamps even when nothing arrived since the last stamp.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linetap.firmware.options import add_json
from linetap.sync.central.cli import data_dir, iso


def add_timestamp_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central timestamp``: stamp the chain heads now."""
    parser = subparsers.add_parser("timestamp", parents=[common],
                                   help="get a trusted timestamp (RFC 3161) over every device's chain head "
                                        "and the receipt log now, and store it")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [timestamps] (default: DATA_DIR/central.toml)")
    add_json(parser)
    parser.set_defaults(run=_timestamp)


def _timestamp(args: argparse.Namespace) -> int:
    from linetap.sync.central import timestamps as ts
    from linetap.sync.central.config import load_config
    from linetap.sync.central.stored import Stored
    from linetap.sync.central.tsa import Stamper

    folder = data_dir(args)
    config = load_config(args.config, folder)
    section = config.timestamps
    with Stored(folder, config=config) as stored:
        row = Stamper(folder, section, stored.index, clock=stored.clock).stamp()
    commitment = ts.decode_commitment(row["commitment"])
    shown = {"pos": row["pos"], "tsa": row["tsa"], "gen_time_ms": row["gen_time_ms"], "made_ms": row["made_ms"],
             "digest_sha256": row["digest_sha256"],
             "devices": [h.__dict__ for h in commitment.devices],
             "receipts": None if commitment.receipts is None else commitment.receipts.__dict__}
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    print(f"stamp {row['pos']} from {row['tsa']} at TSA time {iso(row['gen_time_ms'])}: sha256 "
          f"{row['digest_sha256']}")
    for head in commitment.devices:
        print(f"  {head.device_id}: seq {head.seq} manifest {head.manifest_sha256}")
    log = commitment.receipts
    print(f"  receipt log: {'empty' if log is None else f'position {log.pos} sha256 {log.sha256}'}")
    return 0
