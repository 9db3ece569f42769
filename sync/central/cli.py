"""``linetap-central``: the central store's command line.

The store itself (ingest over MQTT, object store, index, export, verify,
erase) is not built yet; until it is, this command only reports its version
and says so, rather than pretending to do anything.
"""

from __future__ import annotations

import argparse
import sys

from linetap.firmware import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="linetap-central",
        description="Central store for linetap recordings. "
                    "No commands are available in this version yet: ingest, list, export "
                    "and verify arrive with the sync feature.",
    )
    parser.add_argument("--version", action="version", version=f"linetap-central {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
