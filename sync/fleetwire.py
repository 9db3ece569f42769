"""The fleet protocol's topics and payloads, shared by the box and the centre.

Topics, under ``linetap/v1/<device>/``:

=================  =========  ==========  ==========================================
topic              direction  QoS/retain  payload
=================  =========  ==========  ==========================================
status             box →      1, retain   ``FleetAgent`` status; also the Will
birth              box →      1, retain   ``FleetAgent.birth``, on every connect
telemetry          box →      0           ``FleetAgent.telemetry``
alarm/<name>       box →      1, retain   ``FleetAgent.alarm``: raised or cleared
config/desired     → box      1, retain   envelope kind "config", body {"toml": text}
config/reported    box →      1, retain   envelope kind "resp", body {"report": "config", ...}
cmd/<name>         → box      1           envelope kind "cmd", body {"name", "args"}
resp[/...]         box →      1           envelope kind "resp", to the command's response topic
=================  =========  ==========  ==========================================

Status, birth, telemetry and alarm payloads are compact JSON of at most
:data:`MAX_FIGURES` bytes (:func:`bounded`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from linetap.firmware.errors import SyncError
from linetap.sync import pushpolicy
from linetap.sync.wire import ROOT, check_device_id

MAX_COMMAND_BYTES = 16 * 1024
MAX_CONFIG_BYTES = 64 * 1024
MAX_REASON = 1000
MAX_LOG_LINES = 500
MAX_LOG_LINE = 400  # characters kept of each log line
MAX_FIGURES = 4096  # status, birth, telemetry and alarm payloads
ALARMS = ("not-recording", "spool-full", "clock-unsynced", "device-missing", "modem-lost", "upload-rejected",
          pushpolicy.CONSENT_ALARM)


# ---------------------------------------------------------------- topics --

def device_topic(device_id: str, *levels: str) -> str:
    """``linetap/v1/<device>/<levels...>``."""
    return "/".join((ROOT, check_device_id(device_id), *levels))


def fleet_filter(*levels: str) -> str:
    """A subscription over every box, e.g. ``fleet_filter("status")``, ``fleet_filter("resp", "#")``."""
    return "/".join((ROOT, "+", *levels))


def status_topic(device_id: str) -> str:
    return device_topic(device_id, "status")


def birth_topic(device_id: str) -> str:
    return device_topic(device_id, "birth")


def telemetry_topic(device_id: str) -> str:
    return device_topic(device_id, "telemetry")


def config_desired_topic(device_id: str) -> str:
    return device_topic(device_id, "config", "desired")


def config_reported_topic(device_id: str) -> str:
    return device_topic(device_id, "config", "reported")


def cmd_topic(device_id: str, name: str) -> str:
    return device_topic(device_id, "cmd", name)


def cmd_filter(device_id: str) -> str:
    return device_topic(device_id, "cmd", "+")


def resp_topic(device_id: str) -> str:
    return device_topic(device_id, "resp")


def alarm_topic(device_id: str, name: str) -> str:
    return device_topic(device_id, "alarm", name)


def command_body(name: str, **args: int) -> dict[str, Any]:
    """The body of a ``cmd`` envelope (for the sender)."""
    return {"args": dict(args), "name": name}


def config_body(toml_text: str) -> dict[str, Any]:
    """The body of a ``config`` envelope (for the sender): the config file's text."""
    return {"toml": toml_text}


# -------------------------------------------------------------- payloads --

@dataclass(frozen=True)
class Outbound:
    """A message the box publishes of its own accord: status, birth, telemetry, alarm."""

    topic: str
    payload: bytes = field(repr=False)
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Session:
    """One connection's status pair: set ``will`` before connecting, publish ``online`` after."""

    boot: int
    session: int
    online: Outbound
    will: Outbound


@dataclass(frozen=True)
class SpoolFigures:
    unsynced_recordings: int
    unsynced_bytes: int
    oldest_unsynced_age_s: int | None  # None when nothing is waiting
    free_bytes: int
    # Synced recordings the box keeps because it holds no valid receipt for them (None: not counted).
    synced_without_receipt: int | None = None


@dataclass(frozen=True)
class BirthInfo:
    software_version: str
    board: str
    capabilities: tuple[str, ...]  # e.g. ("hook-gpio", "rec-led", "opt-out")
    spool: SpoolFigures


@dataclass(frozen=True)
class Telemetry:
    uptime_s: int
    spool: SpoolFigures
    last_sync_ms: int | None  # wall clock of the last acknowledged upload
    recording: bool
    near_dbfs: float | None
    far_dbfs: float | None
    overruns: int  # audio blocks lost since start
    cpu_temp_c: float | None  # None where the board has no readable sensor


def spool_body(figures: SpoolFigures) -> dict[str, Any]:
    body = {"free_bytes": figures.free_bytes, "oldest_unsynced_age_s": figures.oldest_unsynced_age_s,
            "unsynced_bytes": figures.unsynced_bytes, "unsynced_recordings": figures.unsynced_recordings}
    if figures.synced_without_receipt is not None:
        body["synced_without_receipt"] = figures.synced_without_receipt
    return body


def tenths(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def bounded(body: Mapping[str, Any]) -> bytes:
    """``body`` as compact JSON; a SyncError beyond :data:`MAX_FIGURES` bytes."""
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_FIGURES:
        raise SyncError(f"fleet payload is {len(data)} bytes, more than {MAX_FIGURES}; "
                        "a field grew without a bound")
    return data
