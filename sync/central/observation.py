"""Fleet messages as the centre reads them, and what it knows of each box.

The boxes' side and the topics are in :mod:`linetap.sync.fleet`. Here:
:func:`parse_observation` validates one ``status``, ``birth``, ``telemetry``,
``alarm/<name>`` or ``config/reported`` message into an :class:`Observation`
(the index's :class:`~linetap.sync.central.index.FleetUpdate`), and
:class:`DeviceView` is one box as ``fleet list`` and ``show`` print it.

Status ordering. A status is kept only if its (boot, session) pair is not
below the newest seen for that device; with equal pairs, offline wins (the
Will carries the pair of the online status it ends, and a box never goes
online again in a session it has left). So a Will the broker delivers late
cannot mark a reconnected box offline, and a broker restart cannot leave a
box stuck in either state once it reconnects.

Bad input. A fleet message that is too large, not JSON of the expected shape,
on a topic that names no device, or (for ``config/reported``) not signed by
the device's enrolled key raises :class:`FleetMessageError`; its readers log
the reason and ignore the message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from linetap.firmware import untrusted
from linetap.firmware.errors import SyncError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync import fleetwire, wire
from linetap.sync.central.index import FleetUpdate, IndexTables
from linetap.sync.signed import EnvelopeRefused, key_table, open_envelope

MAX_REPORT_BYTES = 8 * 1024  # a config report: a signed envelope with a reason of at most 1000 characters
SUBJECTS = ("status", "birth", "telemetry", "config/reported")
TRACKED_FILTERS = tuple(fleetwire.fleet_filter(*s.split("/")) for s in SUBJECTS) + (fleetwire.fleet_filter("alarm", "#"),)
# What `fleet list --live` reads: the retained subjects (telemetry is not retained).
LIVE_FILTERS = tuple(f for f in TRACKED_FILTERS if not f.endswith("/telemetry"))

Presence = Literal["online", "offline", "unknown"]
UNACKED_ALARM = "uploads-unacknowledged"  # raised by the centre from telemetry, not by the box
# Raised by the centre while a box reports synced recordings it keeps for want of a valid receipt: it trusts
# another store key, or it got its key after those recordings synced (it asks for their receipts again).
UNRECEIPTED_ALARM = "receipts-missing"


class FleetMessageError(SyncError, ValueError):
    """A fleet message from a box that is not what the protocol says; it is ignored."""


# ------------------------------------------------------------- message shapes --
# Members the centre reads are checked; others are allowed, so a newer box can add some.

class _Shape(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Clock(_Shape):
    synced: bool
    wall_ms: int = Field(ge=0)


class _Spool(_Shape):
    unsynced_recordings: int = Field(ge=0)
    unsynced_bytes: int = Field(ge=0)
    oldest_unsynced_age_s: int | None = Field(default=None, ge=0)
    free_bytes: int = Field(ge=0)
    synced_without_receipt: int | None = Field(default=None, ge=0)  # boxes before receipts send none


class _Status(_Shape):
    boot: int = Field(ge=0)
    session: int = Field(ge=0)
    state: Literal["online", "offline"]
    clock: _Clock


class _Birth(_Shape):
    boot: int = Field(ge=0)
    session: int = Field(ge=0)
    software_version: str = Field(max_length=64)
    board: str = Field(max_length=64)
    capabilities: list[str] = Field(max_length=32)
    config_version: int = Field(ge=0)
    spool: _Spool
    clock: _Clock


class _Upload(_Shape):
    overdue_acks: int = Field(ge=0)
    oldest_overdue_s: int | None = Field(default=None, ge=0)


class _Telemetry(_Shape):
    uptime_s: int = Field(ge=0)
    config_version: int = Field(ge=0)
    recording: bool
    overruns: int = Field(ge=0)
    spool: _Spool
    clock: _Clock
    upload: _Upload | None = None  # boxes before overdue acks were reported send none


class _Alarm(_Shape):
    alarm: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    active: bool
    boot: int = Field(ge=0)
    detail: str = Field(max_length=500)
    clock: _Clock


class _Report(_Shape):
    report: Literal["config"]
    version: int | None = Field(ge=1)
    outcome: Literal["applied", "rejected"]
    applied_version: int = Field(ge=0)
    code: str | None = Field(max_length=64)
    reason: str | None = Field(max_length=fleetwire.MAX_REASON)
    changed: list[str] = Field(max_length=32)


_SHAPES: dict[str, type[_Shape]] = {"status": _Status, "birth": _Birth, "telemetry": _Telemetry}


@dataclass(frozen=True)
class Observation:
    """One validated fleet message."""

    device_id: str
    subject: str  # status, birth, telemetry, config/reported, alarm/<name>
    body: dict[str, Any] = field(repr=False)  # for config/reported: the verified envelope's body
    received_ms: int
    seen_ms: int | None  # when the box was alive by this message's word; None when that is unknown

    def update(self) -> FleetUpdate:
        order = None
        if self.subject == "status":
            order = (self.body["boot"], self.body["session"], int(self.body["state"] == "offline"))
        return FleetUpdate(self.device_id, self.subject, json.dumps(self.body, sort_keys=True),
                           self.received_ms, self.seen_ms, order)


def parse_observation(topic: str, payload: bytes, *, retained: bool, received_ms: int,
                      device_key: Callable[[str], Ed25519PublicKey | None]) -> Observation:
    """Validate one fleet message; raises :class:`FleetMessageError` saying what is wrong.

    ``retained``: delivered because the centre subscribed, so it may be old;
    its last-seen time is then the box's own clock in the payload, and only
    when that clock was synchronised. ``device_key`` gives a device's enrolled
    public key (None when not enrolled), to verify a config report.
    """
    levels = topic.split("/")
    root = wire.ROOT.split("/")
    if levels[:2] != root or len(levels) not in (4, 5) or not wire.DEVICE_ID.fullmatch(levels[2]):
        raise FleetMessageError(f"topic {short_topic(topic)} is not {wire.ROOT}/<device>/<subject>")
    device_id, subject = levels[2], "/".join(levels[3:])
    if not (subject in SUBJECTS or levels[3] == "alarm" and len(levels) == 5):
        raise FleetMessageError(f"topic {short_topic(topic)}: {subject[:40]!r} is not a fleet subject the centre "
                                f"tracks ({', '.join(SUBJECTS)}, alarm/<name>)")
    limit = MAX_REPORT_BYTES if subject == "config/reported" else fleetwire.MAX_FIGURES
    if len(payload) > limit:
        raise FleetMessageError(f"{subject} from {device_id} is {len(payload)} bytes, more than {limit}")
    if subject == "config/reported":
        body = _verified_report(device_id, payload, device_key)
    else:
        body = _json_object(device_id, subject, payload)
        shape = _Alarm if subject.startswith("alarm/") else _SHAPES[subject]
        _check_shape(shape, body, device_id, subject)
        if shape is _Alarm and body["alarm"] != levels[4]:
            raise FleetMessageError(f"alarm from {device_id} on {short_topic(topic)} names alarm {body['alarm']!r}")
    return Observation(device_id, subject, body, received_ms,
                       _seen_ms(body, received_ms) if retained else received_ms)


def _seen_ms(body: Mapping[str, Any], received_ms: int) -> int | None:
    """When an old (retained) message was sent, by the box's clock if that was synchronised."""
    clock = body.get("clock")
    if not isinstance(clock, dict) or clock.get("synced") is not True:
        return None
    wall_ms = clock.get("wall_ms")
    return wall_ms if isinstance(wall_ms, int) and 0 <= wall_ms <= received_ms else None


def _json_object(device_id: str, subject: str, payload: bytes) -> dict[str, Any]:
    try:
        body = untrusted.loads(payload, what=f"{subject} from {device_id}", max_bytes=fleetwire.MAX_FIGURES,
                               max_depth=8)
    except untrusted.Untrusted as e:
        raise FleetMessageError(str(e)) from None
    if not isinstance(body, dict):
        raise FleetMessageError(f"{subject} from {device_id} is a JSON {type(body).__name__}, not an object")
    return body


def _check_shape(shape: type[_Shape], body: dict[str, Any], device_id: str, subject: str) -> None:
    try:
        shape.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise FleetMessageError(f"{subject} from {device_id}: {where}: {first['msg'][:120]} "
                                f"({e.error_count()} problems)") from None


def _verified_report(device_id: str, payload: bytes,
                     device_key: Callable[[str], Ed25519PublicKey | None]) -> dict[str, Any]:
    key = device_key(device_id)
    if key is None:
        raise FleetMessageError(f"config report from {device_id}, which is not enrolled; enrol it with "
                                "`linetap-central enroll`")
    try:
        envelope = open_envelope(payload, trusted_keys=key_table([key]), device_id=device_id, kind="resp",
                                 now_ms=None, max_bytes=MAX_REPORT_BYTES)
    except EnvelopeRefused as e:
        raise FleetMessageError(f"config report from {device_id} refused ({e.code}): {str(e)[:200]}") from None
    _check_shape(_Report, envelope.body, device_id, "config/reported")
    return envelope.body


def short_topic(topic: str, limit: int = 120) -> str:
    return repr(topic if len(topic) <= limit else topic[:limit] + "...")


# ---------------------------------------------------------------- the view --

@dataclass(frozen=True)
class DeviceView:
    """What the centre knows of one box, for ``fleet list`` and ``fleet show``."""

    device_id: str
    enrolled: bool
    state: Presence
    boot: int | None
    session: int | None
    last_seen_ms: int | None
    software_version: str | None
    board: str | None
    config_version: int | None
    backlog_recordings: int | None
    backlog_bytes: int | None
    oldest_unsynced_age_s: int | None
    clock_synced: bool | None
    alarms: tuple[str, ...]  # active ones, and UNACKED_ALARM while the last telemetry reports overdue acks
    subjects: dict[str, Any] = field(repr=False)  # subject → {"body": ..., "received_ms": ...}
    overdue_acks: int | None = None  # upload messages unanswered past the box's ack timeout, by its last telemetry
    oldest_overdue_s: int | None = None
    synced_without_receipt: int | None = None  # synced recordings the box keeps without a receipt
    update_state: str | None = None  # the box's newest update/state (idle, fetching, trial, installed, ...)
    update_outcome: str | None = None  # of its last update attempt, with the code when not installed
    update: dict[str, Any] | None = None  # that whole state (versions, release, rollout, progress, reason, at)

    def with_update(self, row: Mapping[str, Any] | None) -> DeviceView:
        """This view with the box's update state row (``update_states``), when it has one."""
        if row is None:
            return self
        outcome = row["outcome"] and (row["outcome"] + (f" ({row['code']})" if row["code"] else ""))
        return replace(self, update_state=row["state"], update_outcome=outcome, update=dict(row),
                       software_version=self.software_version or row["current_version"])

    def update_summary(self) -> str:
        """``fetching 40%``, ``trial 0.2.0``, ``idle``: where the box's update is; ``-`` when it never said."""
        update = self.update
        if update is None:
            return "-"
        if update["state"] == "fetching" and update["total"]:
            return f"fetching {100 * update['have'] // update['total']}%"
        if update["version"] and update["state"] not in ("idle", "installed"):
            return f"{update['state']} {update['version']}"
        return update["state"]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DeviceView:
        subjects = row["subjects"]

        def body(name: str) -> dict[str, Any]:
            return subjects.get(name, {}).get("body") or {}

        status, birth = body("status"), body("birth")
        # The backlog from whichever of birth and telemetry came last.
        figures = max((subjects[s] for s in ("birth", "telemetry") if s in subjects),
                      key=lambda item: item["received_ms"], default={"body": {}})["body"]
        spool = figures.get("spool") or {}
        newest = max((subjects[s] for s in ("status", "birth", "telemetry") if s in subjects),
                     key=lambda item: item["received_ms"], default={"body": {}})["body"]
        versions = [v for v in (figures.get("config_version"),
                                body("config/reported").get("applied_version")) if isinstance(v, int)]
        alarms = tuple(sorted(name.split("/", 1)[1] for name, item in subjects.items()
                              if name.startswith("alarm/") and item["body"].get("active")))
        upload = body("telemetry").get("upload") or {}
        overdue = upload.get("overdue_acks")
        if isinstance(overdue, int) and overdue > 0:
            alarms = tuple(sorted({*alarms, UNACKED_ALARM}))
        unreceipted = spool.get("synced_without_receipt")
        if isinstance(unreceipted, int) and unreceipted > 0:
            alarms = tuple(sorted({*alarms, UNRECEIPTED_ALARM}))
        return cls(device_id=row["device_id"], enrolled=row["enrolled"],
                   state=status.get("state", "unknown"), boot=row.get("boot"), session=row.get("session"),
                   last_seen_ms=row.get("last_seen_ms"), software_version=birth.get("software_version"),
                   board=birth.get("board"), config_version=max(versions) if versions else None,
                   backlog_recordings=spool.get("unsynced_recordings"),
                   backlog_bytes=spool.get("unsynced_bytes"),
                   oldest_unsynced_age_s=spool.get("oldest_unsynced_age_s"),
                   clock_synced=(newest.get("clock") or {}).get("synced"), alarms=alarms, subjects=subjects,
                   overdue_acks=overdue, oldest_overdue_s=upload.get("oldest_overdue_s"),
                   synced_without_receipt=unreceipted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"alarms": list(self.alarms)}


def key_lookup(index: IndexTables) -> Callable[[str], Ed25519PublicKey | None]:
    def device_key(device_id: str) -> Ed25519PublicKey | None:
        text = index.device_key(device_id)
        return None if text is None else public_key_from_b64(text)
    return device_key
