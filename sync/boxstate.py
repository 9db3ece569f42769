"""What the box keeps and reads about itself for the fleet, apart from the pushed config.

The boot counter (``<data>/fleet/boot``), the fleet agent's saved state
(``<data>/fleet/state.json``: replay guard and config version, handed to
:class:`~linetap.sync.fleet.FleetAgent` as a value and written back when it
asks with ``SaveState``), the recent log lines for the ``logs`` command, the
``linetap`` loggers' level and the CPU temperature. The state file is read
through :func:`linetap.firmware.untrusted.loads`.
"""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path
from typing import Any

from linetap.firmware.durable import write_durably
from linetap.firmware.errors import ConfigError
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync import fleetwire
from linetap.sync.pushedconfig import MAX_STATE_BYTES, PushedConfig

logger = logging.getLogger(__name__)

FLEET_DIR = "fleet"
BOOT_FILE = "boot"
STATE_FILE = "state.json"
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def next_boot(data_dir: Path) -> int:
    """One more than the last start's boot counter, written durably before it is used."""
    path = Path(data_dir) / FLEET_DIR / BOOT_FILE
    try:
        last = int(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        last = 0
    except ValueError as e:
        raise ConfigError(f"boot counter {path} is not a whole number ({e}); delete it to restart the "
                          "count (the fleet then orders this box's statuses by the new count)") from None
    boot = last + 1
    write_durably(path, f"{boot}\n".encode("ascii"))
    return boot


def load_agent_state(data_dir: Path, pushed: PushedConfig) -> dict[str, Any] | None:
    """The agent's saved state, with a pushed config the drivers failed with since turned into a rejection."""
    path = Path(data_dir) / FLEET_DIR / STATE_FILE
    try:
        state = loads(path.read_bytes(), what=f"fleet state {path}", max_bytes=MAX_STATE_BYTES, max_depth=6)
    except FileNotFoundError:
        state = None
    except Untrusted as e:
        raise ConfigError(f"{e}; restore it from a backup or delete it (commands seen before are then "
                          "accepted again until they expire)") from None
    rejection = pushed.take_rejection()
    if rejection is not None and state is not None:
        state = _rejected_after_restart(state, rejection, pushed.version)
        save_agent_state(data_dir, state)
    return state


def save_agent_state(data_dir: Path, state: dict[str, Any]) -> None:
    write_durably(Path(data_dir) / FLEET_DIR / STATE_FILE, json.dumps(state, sort_keys=True).encode("utf-8"),
                  mode=0o600)


class RecentLog(logging.Handler):
    """The last ``capacity`` log records as single lines, for the ``logs`` command.

    The project's loggers never log keys, audio or caller numbers at INFO,
    so nothing here needs filtering; lines are cut to the fleet's limit.
    """

    def __init__(self, capacity: int = fleetwire.MAX_LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record).replace("\n", " | ")
        self._lines.append(line[:fleetwire.MAX_LOG_LINE])

    def lines(self, count: int) -> list[str]:
        lines = list(self._lines)
        return lines[-count:] if count > 0 else []


def set_log_level(level: str) -> None:
    """``log.level`` of the config, on every linetap logger."""
    logging.getLogger("linetap").setLevel(level.upper())


def cpu_temperature(path: Path = THERMAL_ZONE) -> float | None:
    """Degrees Celsius from a thermal zone (millidegrees in the file); None where none is readable."""
    try:
        return int(path.read_text(encoding="ascii").strip()) / 1000
    except (OSError, ValueError):
        return None


def _rejected_after_restart(state: dict[str, Any], rejection: dict[str, Any], back_to: int) -> dict[str, Any]:
    """The agent's saved state, with a version it applied turned into a rejection after a failed start."""
    config = state.get("config")
    last = config.get("last") if isinstance(config, dict) else None
    if not isinstance(last, dict) or last.get("version") != rejection["version"]:
        logger.warning("rolled-back config version is not the agent's last version=%s",
                       rejection["version"])
        return state
    last = {**last, "code": "apply-failed", "outcome": "rejected",
            "reason": (f"the drivers did not start with config version {rejection['version']} "
                       f"({rejection['reason']}); rolled back to version {back_to}")[:fleetwire.MAX_REASON]}
    return {**state, "config": {"applied_version": back_to, "last": last}}
