"""``python -m bench [name ...]``: run the benchmarks, print JSON, keep it in bench/results/."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

# A new benchmark is a module of this package with run() -> dict, added here.
BENCHMARKS = ("capture", "dsp", "latency", "storage", "drain", "ingest", "memory", "hid", "evidence", "s3store",
              "bridge", "indexlist", "console", "analytics", "ingestpg", "serves", "migratestore", "chunks",
              "fetch", "update", "consolesearch")
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    RESULTS.mkdir(exist_ok=True)
    for name in args.names or BENCHMARKS:
        figures = importlib.import_module(f".{name}", __package__).run()
        report = {
            "benchmark": name,
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            **figures,
        }
        text = json.dumps(report, indent=2)
        print(text)
        (RESULTS / f"{name}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
