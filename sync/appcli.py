"""``linetap update gate`` and ``linetap update step``: root's half of a box update, as commands.

Both take ``--app-root`` (``LINETAP_APP_ROOT``, ``/data/app`` on the image)
and the box's ``--data-dir``; ``step`` reads the box's ``--config`` for its
board and device id. Exit status 0 whatever the decision (a refusal is an
outcome, not an error of the command); 1 only when the command itself cannot
work (an unreadable config).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_RESTART = "systemctl --no-block restart linetap.service"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from linetap.sync import slotgate

    update = sub.add_parser("update", parents=[common],
                            help="root's side of a remote update: the start gate and the install step")
    actions = update.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument("--app-root", type=Path, default=Path(os.environ.get(slotgate.APP_ROOT_ENV,
                                                                          slotgate.DEFAULT_APP_ROOT)),
                     help=f"the versions, links and trial files (default ${slotgate.APP_ROOT_ENV} or "
                          f"{slotgate.DEFAULT_APP_ROOT})")
    app.add_argument("--trial-seconds", type=int, default=slotgate.TRIAL_MS // 1000, metavar="S",
                     help="how long a new version has to report healthy (default %(default)s)")
    gate = actions.add_parser("gate", parents=[common, app],
                              help="before every start of the recorder: switch, count starts, roll back")
    gate.add_argument("--max-starts", type=int, default=slotgate.MAX_STARTS, metavar="N",
                      help="starts of a version on trial before it is rolled back (default %(default)s)")
    step = actions.add_parser("step", parents=[common, app],
                              help="when the box's update files change: prepare a staged release, promote or "
                                   "roll back a trial")
    step.add_argument("--restart-command", default=DEFAULT_RESTART, metavar="CMD",
                      help="how to restart the recorder after a rollback (default: %(default)s)")


def run(args: argparse.Namespace, data_dir: Path) -> int:
    from linetap.firmware.clock import SystemClock
    from linetap.sync import appgate, slotgate

    trial_ms = args.trial_seconds * 1000
    if args.update_command == "gate":
        decision = appgate.gate(args.app_root, data_dir, SystemClock(), trial_ms=trial_ms,
                                max_starts=args.max_starts)
        print(f"gate: {slotgate.describe(decision)}")
        return 0
    return _step(args, data_dir, trial_ms)


def _step(args: argparse.Namespace, data_dir: Path, trial_ms: int) -> int:
    from linetap.firmware.clock import SystemClock
    from linetap.firmware.config import load_config
    from linetap.sync import appinstall, slotgate

    config = load_config(args.config)
    box = appinstall.Platform(board=config.device.board, device_id=config.device.id)
    command = shlex.split(args.restart_command)

    def restart() -> None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            logger.error("update step: %s failed (exit %d): %s", args.restart_command, done.returncode,
                         done.stderr.strip()[-300:])

    result = appinstall.step(args.app_root, data_dir, SystemClock(), box, restart=restart)
    print(f"step: {slotgate.describe(result.health)}")
    if result.prepared is not None:
        print(f"step: prepared {result.prepared.version} ({result.prepared.release_id})")
    if result.outcome is not None:
        print(f"step: {result.outcome.outcome} {result.outcome.version} ({result.outcome.code}): "
              f"{result.outcome.reason}")
    if result.skipped is not None:
        print(f"step: nothing to install ({result.skipped})")
    return 0
