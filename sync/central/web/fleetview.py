"""The fleet page's values, sans-IO: one row per box, and the admin's command and config forms read.

:func:`fleet_rows` turns the tracker's :class:`~linetap.sync.central.observation.DeviceView`
list into what the page shows. :func:`command_request` and :func:`config_request`
read a browser's form (hostile: every field bounded and checked) into what
:mod:`linetap.sync.central.fleet` sends; each error names the field and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from linetap.firmware import untrusted
from linetap.firmware.errors import ConfigError, LinetapError
from linetap.sync import wire
from linetap.sync.central.fleet import check_config_text
from linetap.sync.central.observation import UNACKED_ALARM, UNRECEIPTED_ALARM, DeviceView
from linetap.sync.fleetcommands import COMMANDS

MAX_CONFIG_CHARS = 64 * 1024  # a pushed config is a few hundred bytes of TOML
MAX_TARGETS = 1000
MAX_FIELD = 200


class FormError(ConfigError, ValueError):
    """A form field a browser sent is not what the page asks for; the message names it and the fix."""


@dataclass(frozen=True)
class FleetRow:
    device_id: str
    state: str  # online, offline, unknown
    enrolled: bool
    last_seen_ms: int | None
    last_seen_ago: str
    software_version: str
    board: str
    config_version: str
    backlog: str
    oldest_unsynced: str
    synced_without_receipt: int
    clock_synced: bool | None
    alarms: tuple[tuple[str, str], ...]  # (name, what it means or the box's detail)
    update: str = "-"  # where its update is (fetching 40%, trial 0.2.0, installed...)
    update_outcome: str = "-"  # how its last update ended, with the code when not installed
    update_reason: str = ""


def fleet_rows(views: Sequence[DeviceView], now_ms: int) -> list[FleetRow]:
    """One row per box, offline and alarmed boxes first, then by device id."""
    rows = [FleetRow(v.device_id, v.state, v.enrolled, v.last_seen_ms,
                     "-" if v.last_seen_ms is None else ago(now_ms - v.last_seen_ms),
                     v.software_version or "-", v.board or "-",
                     "-" if v.config_version is None else str(v.config_version),
                     "-" if v.backlog_recordings is None else f"{v.backlog_recordings} ({size(v.backlog_bytes)})",
                     "-" if v.oldest_unsynced_age_s is None else span(v.oldest_unsynced_age_s * 1000),
                     v.synced_without_receipt or 0, v.clock_synced, alarm_details(v), v.update_summary(),
                     v.update_outcome or "-", (v.update or {}).get("reason") or "") for v in views]
    return sorted(rows, key=lambda r: (r.state == "online" and not r.alarms, r.device_id))


CENTRE_ALARMS = {
    UNACKED_ALARM: "upload messages unanswered past the box's ack timeout: check the ingest workers",
    UNRECEIPTED_ALARM: "synced recordings the box keeps for want of a valid receipt",
}


def alarm_details(view: DeviceView) -> tuple[tuple[str, str], ...]:
    """Each active alarm with the box's own detail (or what a centre-raised one means)."""
    def detail(name: str) -> str:
        body = view.subjects.get(f"alarm/{name}", {}).get("body") or {}
        text = body.get("detail") if isinstance(body, dict) else None
        return str(text)[:500] if text else CENTRE_ALARMS.get(name, "")
    return tuple((name, detail(name)) for name in view.alarms)


def span(ms: int) -> str:
    """A duration as people read it on a status page: 45 s, 12 min, 3 h, 2 d."""
    seconds = max(0, ms // 1000)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length} {unit}"
    return f"{seconds} s"


def ago(ms: int) -> str:
    return f"{span(ms)} ago"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def field(form: Mapping[str, str], name: str, *, required: bool = True, limit: int = MAX_FIELD) -> str:
    """One text field of a form, stripped and bounded; a missing required one is an error naming it."""
    value = form.get(name)
    if value is None or not str(value).strip():
        if required:
            raise FormError(f"the form has no {name}; fill it in and send it again")
        return ""
    value = str(value).strip()
    if len(value) > limit:
        raise FormError(f"{name} is {len(value)} characters, more than {limit}; shorten it")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise FormError(f"{name} holds control characters; type it as plain text")
    return value


def device_field(form: Mapping[str, str], name: str = "device") -> str:
    value = field(form, name, limit=64)
    try:
        return wire.check_device_id(value)
    except (wire.WireError, LinetapError):
        raise FormError(f"{name} {value[:64]!r} is not a device id (letters, digits, '-', '_', as "
                        "the fleet list shows them)") from None


@dataclass(frozen=True)
class CommandRequest:
    device_id: str
    name: str
    args: dict[str, int]

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.name}{' ' + args if args else ''} to {self.device_id}"


def command_request(form: Mapping[str, str]) -> CommandRequest:
    """The command an admin asked for: a known name, its integer arguments within the box's own bounds."""
    device = device_field(form)
    name = field(form, "command", limit=32)
    spec = COMMANDS.get(name)
    if spec is None:
        raise FormError(f"command {name[:32]!r} is not one of {', '.join(COMMANDS)}")
    args = {}
    for arg in spec.args:
        text = field(form, arg.name, required=False, limit=12)
        if not text:
            continue
        number = untrusted.ascii_int(text, lo=arg.low, hi=arg.high)
        if number is None:
            raise FormError(f"{arg.name} for {name} must be a whole number from {arg.low} to {arg.high}, "
                            f"not {text!r}")
        args[arg.name] = number
    return CommandRequest(device, name, args)


def command_choices() -> list[dict[str, object]]:
    """Each command the boxes run, with its arguments' bounds and defaults, for the form."""
    return [{"name": name, "args": [{"name": a.name, "low": a.low, "high": a.high, "default": a.default}
                                    for a in spec.args]} for name, spec in COMMANDS.items()]


@dataclass(frozen=True)
class ConfigRequest:
    devices: tuple[str, ...] | None  # None: every enrolled box
    text: str

    def describe(self) -> str:
        return f"config to {'every enrolled box' if self.devices is None else ', '.join(self.devices)}"


def config_request(form: Mapping[str, str], targets: Sequence[str]) -> ConfigRequest:
    """The config an admin pushes: the boxes ticked (or all) and TOML the boxes would accept.

    ``targets`` are the ticked ``device`` fields (a multi-valued form field).
    """
    if len(targets) > MAX_TARGETS:
        raise FormError(f"{len(targets)} boxes ticked, more than {MAX_TARGETS}; push to all instead")
    every = form.get("all") == "1"
    devices = tuple(dict.fromkeys(device_field({"device": t}) for t in targets))
    if every == bool(devices):
        raise FormError("tick the boxes to push to, or 'every enrolled box' (not both)")
    text = field(form, "config", limit=MAX_CONFIG_CHARS)
    check_config_text(text, source="the config field")  # raises ConfigError naming the key
    return ConfigRequest(None if every else devices, text)
