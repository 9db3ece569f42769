"""``linetap-central migrate``: bring the configured index's schema to this program's version.

The embedded SQLite index migrates whenever it is opened; a PostgreSQL index
does too, unless the operator prefers to run this first, once, from one host
(for example before starting the new version's ``serve`` everywhere). Several
hosts running it at once migrate once: the work happens under an advisory lock
(:func:`~linetap.sync.central.pgschema.upgrade`). It prints where the index is
(the URL without its password) and the schema version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linetap.firmware.options import add_json
from linetap.sync.central.index import SCHEMA_VERSION


def add_migrate_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """Plugged into :func:`linetap.sync.central.cli.build_parser`."""
    migrate = sub.add_parser("migrate", parents=[common],
                             help="apply the index's schema migrations (SQLite or [index] url) and print its version")
    migrate.add_argument("--config", type=Path, metavar="FILE",
                         help="central config with [index] (default: DATA_DIR/central.toml, else the SQLite "
                              "index in DATA_DIR)")
    add_json(migrate)
    migrate.set_defaults(run=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.indexes import describe, open_index

    folder = data_dir(args)
    section = load_config(args.config, folder).index
    with open_index(section, folder, migrate=True):
        pass
    where = describe(section, folder)
    if args.json:
        print(json.dumps({"index": where, "schema_version": SCHEMA_VERSION}))
    else:
        print(f"index {where}: schema version {SCHEMA_VERSION}")
    return 0
