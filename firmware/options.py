"""The options every command of a linetap program takes, written once for ``linetap`` and ``linetap-central``.

Each program describes its own defaults in one :class:`CommonOptions`: the
data dir's environment variable and default (the box has one, the central
store has none), and whether ``--config FILE`` is program-wide (the box) or
given per command (the central store's commands read different sections).
The options may come before or after the command's name: the program's parser
has them with their defaults, every command's parser (``parents=[common]``)
with SUPPRESS defaults, so an option given before the command is not reset by
the command's parser.

Nothing here imports beyond the standard library and the error tree, so the
sync side may use it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from linetap.firmware import __version__
from linetap.firmware.errors import ConfigError, LinetapError

@dataclass(frozen=True)
class CommonOptions:
    """One program's common options; ``parsers()`` builds them, ``data_dir()`` and ``main()`` read them."""

    prog: str
    description: str
    data_dir_help: str  # what the folder is; the default is added to the help
    data_dir_env: str
    data_dir_default: str | None = None  # None: the folder must be named
    config_help: str | None = None  # a program-wide ``--config FILE``; None: commands take their own

    def parsers(self) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
        """(the program's parser with ``--version`` and the options, the parent for every command)."""
        parser = argparse.ArgumentParser(prog=self.prog, parents=[self._common(defaults=True)],
                                         description=self.description)
        parser.add_argument("--version", action="version", version=f"{self.prog} {__version__}")
        return parser, self._common(defaults=False)

    def _common(self, defaults: bool) -> argparse.ArgumentParser:
        default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
        common = argparse.ArgumentParser(add_help=False)
        if self.config_help is not None:
            common.add_argument("--config", metavar="FILE", default=default(None), help=self.config_help)
        otherwise = f", else {self.data_dir_default}" if self.data_dir_default else ""
        common.add_argument("--data-dir", metavar="DIR", default=default(None),
                            help=f"{self.data_dir_help} (default: ${self.data_dir_env}{otherwise})")
        common.add_argument("-v", "--verbose", action="count", default=default(0),
                            help="more log output (-v info, -vv debug)")
        return common

    def data_dir(self, value: str | None, *, default: str | None = None) -> Path:
        """``--data-dir``, else the environment variable, else ``default`` or the program's default."""
        folder = value or os.environ.get(self.data_dir_env) or default or self.data_dir_default
        if not folder:
            raise ConfigError(f"no data dir: pass --data-dir DIR or set {self.data_dir_env}")
        return Path(folder)

    def main(self, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
             run: Callable[[argparse.Namespace], int]) -> int:
        """Parse, set up logging, run; a :class:`LinetapError` is one line on stderr and exit 1."""
        args = parser.parse_args(argv)
        setup_logging(args.verbose)
        try:
            return run(args)
        except LinetapError as exc:
            print(f"{self.prog}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def add_json(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--json``: the command prints its result as JSON instead of text."""
    parser.add_argument("--json", action="store_true", help=help)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
