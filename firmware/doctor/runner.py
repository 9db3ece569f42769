"""The table of checks, the runner and ``linetap doctor`` itself."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from linetap.firmware.clock import Clock
from linetap.firmware.doctor.audio import check_audio, check_channels, check_signal
from linetap.firmware.doctor.box import check_broker, check_clock, check_disk, check_keys, check_spool
from linetap.firmware.doctor.context import SERVICE_CONFIG, BoardParts, Context, config_ref
from linetap.firmware.doctor.inputs import check_gpio, check_hook, check_modem
from linetap.firmware.doctor.report import CheckResult, checklist, exit_code, failed, passed, warned
from linetap.firmware.doctor.usb import USB_CHECKS, usb_inline
from linetap.firmware.errors import ConfigError, LinetapError

logger = logging.getLogger(__name__)


def check_config(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return failed("config", str(ctx.config_error).splitlines()[0],
                      f"fix the file (every problem, one per line: `linetap config check "
                      f"{config_ref(ctx)}`); the keys are described in linetap.example.toml",
                      error=str(ctx.config_error))
    profile = config.board_profile()
    details = {"config": None if ctx.config_path is None else str(ctx.config_path),
               "board": profile.name, "device_id": config.device.id, "data_dir": str(ctx.data_dir)}
    if ctx.config_path is None:
        return warned("config", f"no config file given: checked the defaults (board {profile.name})",
                      f"check the box as the service runs it: `linetap doctor --config {SERVICE_CONFIG}`",
                      **details)
    return passed("config", f"{ctx.config_path} loads: board {profile.name}, device id {config.device.id}",
                  **details)


CHECKS: tuple[tuple[str, Callable[[Context], CheckResult]], ...] = (
    ("config", check_config),
    ("audio", check_audio),
    ("signal", check_signal),
    ("channels", check_channels),
    ("gpio", check_gpio),
    ("hook", check_hook),
    ("modem", check_modem),
    ("keys", check_keys),
    ("broker", check_broker),
    ("clock", check_clock),
    ("disk", check_disk),
    ("spool", check_spool),
)
"""Every check, in the order an installer fixes things."""


def checks_for(ctx: Context) -> tuple[tuple[str, Callable[[Context], CheckResult]], ...]:
    """:data:`CHECKS`, with the USB inline board's after the modem check on such a board."""
    config = ctx.config()
    if config is None or not usb_inline(config):
        return CHECKS
    at = [name for name, _ in CHECKS].index("modem") + 1
    return CHECKS[:at] + USB_CHECKS + CHECKS[at:]


def run_checks(ctx: Context, names: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the checks named (all by default) in table order; one result each."""
    wanted = set(names) if names is not None else None
    results = []
    for name, check in checks_for(ctx):
        if wanted is not None and name not in wanted:
            continue
        try:
            result = check(ctx)
        except LinetapError as exc:
            # A check turns the failures it expects into findings; this is the rest, still reported.
            result = failed(name, f"{type(exc).__name__}: {exc}", "see the finding")
        logger.info("doctor check=%s status=%s", name, result.status)
        results.append(result)
    return results


def main(config_path: Path | str | None, data_dir: Path, clock: Clock, *, as_json: bool,
         listen_s: float = 3.0, hook_test_s: float | None = None) -> int:
    """``linetap doctor``: run every check, print the checklist or JSON, return the exit code."""
    if not 0 < listen_s <= 60:
        raise ConfigError(f"--listen {listen_s:g} s: give 0 to 60 seconds, e.g. 3")
    if hook_test_s is not None and not 0 < hook_test_s <= 600:
        raise ConfigError(f"--hook-test {hook_test_s:g} s: give 0 to 600 seconds, e.g. 30")
    parts = BoardParts()
    ctx = Context(None if config_path is None else Path(config_path), Path(data_dir), clock, parts,
                  listen_s=listen_s, hook_test_s=hook_test_s)
    try:
        results = run_checks(ctx)
    finally:
        parts.close()
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(checklist(results))
    return exit_code(results)
