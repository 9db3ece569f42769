"""The centre's side of the fleet: who is online and what it runs; signed config and commands out.

The boxes' side and the topics are in :mod:`linetap.sync.fleet`. Here:

- :class:`FleetTracker` keeps the central index's fleet tables current: it
  subscribes to every box's ``status``, ``birth``, ``telemetry``, ``alarm/#``
  and ``config/reported`` and stores the latest of each per device, with the
  time the device was last seen. ``linetap-central serve`` runs one
  (:func:`start_tracker`); ``linetap-central fleet list`` reads what it keeps.
- :func:`collect_live` reads the same picture straight from the broker's
  retained messages, for a centre where no tracker runs.
- :func:`push_config` and :func:`send_command` seal with the operator key,
  publish, and wait for the boxes' signed answers, verified against each
  box's enrolled key.

Status ordering. A status is kept only if its (boot, session) pair is not
below the newest seen for that device; with equal pairs, offline wins (the
Will carries the pair of the online status it ends, and a box never goes
online again in a session it has left). So a Will the broker delivers late
cannot mark a reconnected box offline, and a broker restart cannot leave a
box stuck in either state once it reconnects.

Knowing that the broker has delivered everything: MQTT keeps the order of
messages on one connection, so a client subscribes, then publishes a marker
to a topic of its own (``linetap/v1/_central/barrier/<token>``, which no
device id can spell) and waits for it to come back: every retained message,
and everything the broker had routed to this client before the marker, came
first (:meth:`FleetClient.barrier`). Nothing here sleeps to wait for the broker.

Unacknowledged uploads. Each box's telemetry says how many of its upload
messages have gone unanswered for its ack timeout, and for how long
(``upload``, see :meth:`linetap.sync.upload.Upload.overdue`). The tracker
logs a WARNING naming every box that reports some, each time it does, and
``fleet list``/``show`` show the alarm :data:`UNACKED_ALARM`: uploads that
reach no ingest worker (a client in the ingest group that drops them, a
broker restart, stalled workers) are otherwise silent at the centre.

Bad input. A fleet message that is too large, not JSON of the expected shape,
on a topic that names no device, or (for ``config/reported``) not signed by
the device's enrolled key is logged with its reason and ignored.

Threads. Each :class:`FleetClient` runs paho's network thread
(``paho-mqtt-client-<client id>``); its ``on_message`` runs there and must
only hand work over. The tracker adds one thread, ``fleet-tracker``, which
parses and writes to the index in batches (one transaction each).
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.config import Config, DeviceSection
from linetap.firmware import untrusted
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync import fleet, wire
from linetap.sync.central.index import INDEX_FILE, FleetUpdate, SqliteIndex
from linetap.sync.central.keys import load_operator_key
from linetap.sync.central.worker import HANDOFF_WAIT_S, BrokerSettings, hand_over
from linetap.sync.signed import EnvelopeRefused, key_table, open_envelope, seal

logger = logging.getLogger(__name__)

# A retained config must outlive a box's longest absence: a box that comes back after its
# expiry refuses it as expired. Replays are refused by the version, not by the expiry.
CONFIG_TTL_MS = 90 * 24 * 3600 * 1000
# A command is for now: one still queued at the broker for an absent box must not run days later.
COMMAND_TTL_MS = 5 * 60 * 1000
MAX_REPORT_BYTES = 8 * 1024  # a config report: a signed envelope with a reason of at most 1000 characters
MAX_RESPONSE_BYTES = wire.MAX_MESSAGE  # a command response (logs) fits one message
BARRIER_ROOT = f"{wire.ROOT}/_central/barrier"
SUBJECTS = ("status", "birth", "telemetry", "config/reported")
TRACKED_FILTERS = tuple(fleet.fleet_filter(*s.split("/")) for s in SUBJECTS) + (fleet.fleet_filter("alarm", "#"),)
# What `fleet list --live` reads: the retained subjects (telemetry is not retained).
LIVE_FILTERS = tuple(f for f in TRACKED_FILTERS if not f.endswith("/telemetry"))
TRACKER_QUEUE = 4096
TRACKER_BATCH = 500
STOP_POLL_S = 0.2
_JOIN_S = 10.0

Presence = Literal["online", "offline", "unknown"]
UNACKED_ALARM = "uploads-unacknowledged"  # raised by the centre from telemetry, not by the box


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
    reason: str | None = Field(max_length=fleet.MAX_REASON)
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
        raise FleetMessageError(f"topic {_short(topic)} is not {wire.ROOT}/<device>/<subject>")
    device_id, subject = levels[2], "/".join(levels[3:])
    if not (subject in SUBJECTS or levels[3] == "alarm" and len(levels) == 5):
        raise FleetMessageError(f"topic {_short(topic)}: {subject[:40]!r} is not a fleet subject the centre "
                                f"tracks ({', '.join(SUBJECTS)}, alarm/<name>)")
    limit = MAX_REPORT_BYTES if subject == "config/reported" else fleet.MAX_FIGURES
    if len(payload) > limit:
        raise FleetMessageError(f"{subject} from {device_id} is {len(payload)} bytes, more than {limit}")
    if subject == "config/reported":
        body = _verified_report(device_id, payload, device_key)
    else:
        body = _json_object(device_id, subject, payload)
        shape = _Alarm if subject.startswith("alarm/") else _SHAPES[subject]
        _check_shape(shape, body, device_id, subject)
        if shape is _Alarm and body["alarm"] != levels[4]:
            raise FleetMessageError(f"alarm from {device_id} on {_short(topic)} names alarm {body['alarm']!r}")
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
        body = untrusted.loads(payload, what=f"{subject} from {device_id}", max_bytes=fleet.MAX_FIGURES,
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


def _short(topic: str, limit: int = 120) -> str:
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
        return cls(device_id=row["device_id"], enrolled=row["enrolled"],
                   state=status.get("state", "unknown"), boot=row.get("boot"), session=row.get("session"),
                   last_seen_ms=row.get("last_seen_ms"), software_version=birth.get("software_version"),
                   board=birth.get("board"), config_version=max(versions) if versions else None,
                   backlog_recordings=spool.get("unsynced_recordings"),
                   backlog_bytes=spool.get("unsynced_bytes"),
                   oldest_unsynced_age_s=spool.get("oldest_unsynced_age_s"),
                   clock_synced=(newest.get("clock") or {}).get("synced"), alarms=alarms, subjects=subjects,
                   overdue_acks=overdue, oldest_overdue_s=upload.get("oldest_overdue_s"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"alarms": list(self.alarms)}


def fleet_views(index: SqliteIndex) -> list[DeviceView]:
    """Every device the index's fleet tables know, and every enrolled one, by device id."""
    return [DeviceView.from_row(row) for row in index.fleet_devices()]


def _key_lookup(index: SqliteIndex) -> Callable[[str], Ed25519PublicKey | None]:
    def device_key(device_id: str) -> Ed25519PublicKey | None:
        text = index.device_key(device_id)
        return None if text is None else public_key_from_b64(text)
    return device_key


# ----------------------------------------------------------- the MQTT client --

@dataclass(frozen=True)
class Inbound:
    """A message as paho's thread hands it over."""

    topic: str
    payload: bytes = field(repr=False)
    retained: bool
    correlation_data: bytes | None = None


class FleetClient:
    """One paho client (MQTT v5, clean start) of the centre's fleet tools.

    Subscribes ``filters`` at every (re)connect. ``on_message`` runs on paho's
    network thread for every message but the client's own barrier markers;
    it must not block or raise. Context manager; :meth:`close` is safe twice.
    """

    def __init__(self, settings: BrokerSettings, *, client_id: str, filters: Sequence[str],
                 on_message: Callable[[Inbound], None]) -> None:
        self.settings = settings
        self.client_id = client_id
        self._on_inbound = on_message
        self._barrier_topic = f"{BARRIER_ROOT}/{secrets.token_hex(8)}"
        self._filters = [*filters, self._barrier_topic]
        self._changed = threading.Condition()
        self._sessions = 0  # connected and subscribed this many times
        self._failure: SyncError | None = None
        self._connect_mids: set[int] = set()  # the subscriptions made at each connect
        self._published: dict[int, mqtt.ReasonCode] = {}
        self._barriers_seen = 0
        self._barriers_sent = 0
        self._started = False
        self._closed = False
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if settings.tls:
            self._client.tls_set(ca_certs=str(settings.ca_file), certfile=str(settings.cert_file),
                                 keyfile=str(settings.key_file), cert_reqs=ssl.CERT_REQUIRED,
                                 tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- owner --

    @property
    def failure(self) -> SyncError | None:
        """Why the broker will not serve this client (a refused connection or subscription), or None."""
        return self._failure

    def start(self) -> FleetClient:
        if not self._started:
            self._started = True
            self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive,
                                       clean_start=True)
            self._client.loop_start()
        return self

    def wait_ready(self, timeout: float, sessions: int = 1) -> None:
        """Return once connected and subscribed ``sessions`` times; SyncError if not within ``timeout``."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._sessions >= sessions or self._failure is not None,
                                          timeout)
        if self._failure is not None:
            raise self._failure
        if not done:
            raise SyncError(f"no subscribed connection to broker {self.settings.host}:{self.settings.port} "
                            f"within {timeout:.0f} s; check that it runs and the [broker] settings "
                            f"(tls={self.settings.tls})")

    @property
    def sessions(self) -> int:
        with self._changed:
            return self._sessions

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> int:
        """Queue a QoS 1 message (paho sends it once connected); its message id for :meth:`wait_published`."""
        props = None
        if response_topic is not None or correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=props).mid

    def wait_published(self, mids: Iterable[int], timeout: float) -> None:
        """Return once the broker acknowledged every message in ``mids``; SyncError otherwise."""
        wanted = set(mids)
        with self._changed:
            done = self._changed.wait_for(lambda: wanted <= self._published.keys(), timeout)
            reasons = [self._published.pop(mid) for mid in wanted if mid in self._published]
        if not done:
            raise SyncError(f"broker {self.settings.host}:{self.settings.port} did not acknowledge "
                            f"{len(wanted) - len(reasons)} of {len(wanted)} messages within {timeout:.0f} s")
        refused = [r for r in reasons if r.is_failure]
        if refused:
            raise SyncError(f"broker refused {len(refused)} of {len(wanted)} messages ({refused[0]}); "
                            f"the broker must give this identity the role linetap-centre (writes {wire.ROOT}/#; "
                            "image/mosquitto/README.md)")

    def barrier(self, timeout: float) -> None:
        """Return once every message the broker routed to this client before now has been handed over."""
        with self._changed:
            self._barriers_sent += 1
            number = self._barriers_sent
        mid = self.publish(self._barrier_topic, str(number).encode("ascii"))
        with self._changed:
            returned = self._changed.wait_for(
                lambda: self._barriers_seen >= number and mid in self._published, timeout)
            self._published.pop(mid, None)
            if not returned:
                raise SyncError(f"broker {self.settings.host}:{self.settings.port} did not return this "
                                f"client's marker within {timeout:.0f} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> FleetClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread --

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            logger.error("broker refused fleet client client_id=%s reason=%s", self.client_id, reason)
            if reason.value in (0x86, 0x87, 0x8C):  # bad credentials, not authorised, bad auth method
                self._fail(SyncError(f"broker refused {self.client_id} ({reason}); check the central "
                                     "certificate (its CN is its client id) and its role in the broker's "
                                     "dynamic-security file (image/mosquitto/README.md)"))
            return
        logger.info("fleet client connected client_id=%s", self.client_id)
        _rc, mid = client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters])
        with self._changed:
            self._connect_mids.add(mid)  # its SUBACK comes later on this same thread

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      _props: Properties | None) -> None:
        with self._changed:
            if mid not in self._connect_mids:
                return
            self._connect_mids.discard(mid)
            refused = [str(r) for r in reasons if r.is_failure]
            if refused:
                self._failure = self._failure or SyncError(
                    f"broker refused fleet subscriptions for {self.client_id}: {', '.join(refused)}; the broker "
                    f"must give this identity the role linetap-centre (reads {wire.ROOT}/#)")
            else:
                self._sessions += 1
            self._changed.notify_all()

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, reason: mqtt.ReasonCode,
                    _props: Properties | None) -> None:
        with self._changed:
            self._published[mid] = reason
            self._changed.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._barrier_topic:
            with self._changed:
                self._barriers_seen = max(self._barriers_seen, int(msg.payload))
                self._changed.notify_all()
            return
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        self._on_inbound(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain), correlation))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        if not self._closed:
            logger.warning("fleet client disconnected client_id=%s reason=%s", self.client_id, reason)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        logger.warning("fleet client cannot reach broker client_id=%s broker=%s:%d", self.client_id,
                       self.settings.host, self.settings.port)

    def _fail(self, error: SyncError) -> None:
        with self._changed:
            self._failure = self._failure or error
            self._changed.notify_all()


# ------------------------------------------------------------------ tracker --

class FleetTracker:
    """Keeps ``index``'s fleet tables current from the broker; see the module docstring.

    Start it, or use it as a context manager; :meth:`close` is safe twice and
    closes the index when ``owns_index``.
    """

    def __init__(self, index: SqliteIndex, settings: BrokerSettings, *, client_id: str | None = None,
                 clock: Clock | None = None, owns_index: bool = False) -> None:
        self.index = index
        self._clock = clock or SystemClock()
        self._owns_index = owns_index
        self._queue: queue.Queue[Inbound | threading.Event] = queue.Queue(maxsize=TRACKER_QUEUE)
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._device_key = _key_lookup(index)
        self.client = FleetClient(settings, client_id=client_id or f"linetap-central-fleet-{socket.gethostname()}",
                                  filters=TRACKED_FILTERS, on_message=self._enqueue)
        self._thread = threading.Thread(target=self._run, name="fleet-tracker", daemon=True)
        self._unacked: dict[str, tuple[int, int | None]] = {}  # device → (overdue acks, oldest s)
        self._started = False
        self._closed = False

    @property
    def unacknowledged(self) -> dict[str, tuple[int, int | None]]:
        """Boxes whose last telemetry reported overdue acks: device → (count, oldest age in s)."""
        return dict(self._unacked)

    @property
    def failure(self) -> BaseException | None:
        """Why the tracker stopped on its own (the index failed, the broker refused it), or None."""
        return self._failure or self.client.failure

    def start(self) -> FleetTracker:
        if not self._started:
            self._started = True
            self._thread.start()
            self.client.start()
            logger.info("fleet tracker started client_id=%s broker=%s:%d", self.client.client_id,
                        self.client.settings.host, self.client.settings.port)
        return self

    def wait_ready(self, timeout: float, sessions: int = 1) -> None:
        """Connected and subscribed ``sessions`` times, reconnects included (SyncError if not within ``timeout``)."""
        self.client.wait_ready(timeout, sessions)

    def flush(self, timeout: float) -> None:
        """Return once everything the broker routed to the tracker before now is in the index."""
        deadline = time.monotonic() + timeout
        self.client.barrier(timeout)
        written = threading.Event()
        self._queue.put(written, timeout=max(0.0, deadline - time.monotonic()))
        if not written.wait(max(0.0, deadline - time.monotonic())):
            raise SyncError(f"fleet tracker did not write what it received within {timeout:.0f} s"
                            + (f": {self._failure}" if self._failure else ""))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(_JOIN_S)
            if self._thread.is_alive():
                logger.warning("fleet tracker thread did not stop timeout_s=%.0f", _JOIN_S)
        if self._owns_index:
            self.index.close()
        logger.info("fleet tracker stopped client_id=%s", self.client.client_id)

    def __enter__(self) -> FleetTracker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread --

    def _enqueue(self, inbound: Inbound) -> None:
        if not hand_over(self._queue, inbound):
            logger.warning("fleet tracker queue full waited_s=%.0f dropped_topic=%s", HANDOFF_WAIT_S,
                           _short(inbound.topic))

    # -- the tracker's thread --

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    first = self._queue.get(timeout=STOP_POLL_S)
                except queue.Empty:
                    continue
                batch = [first]
                while len(batch) < TRACKER_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._write(batch)
        except Exception as e:  # the index failed: kept for the owner, never swallowed
            logger.exception("fleet tracker failed")
            self._failure = e

    def _write(self, batch: list[Inbound | threading.Event]) -> None:
        updates: list[FleetUpdate] = []
        done: list[threading.Event] = []
        now_ms = round(self._clock.wall() * 1000)
        reported: dict[str, tuple[int, int | None]] = {}
        for item in batch:
            if isinstance(item, threading.Event):
                done.append(item)
                continue
            try:
                observation = parse_observation(item.topic, item.payload, retained=item.retained,
                                                received_ms=now_ms, device_key=self._device_key)
            except FleetMessageError as e:
                logger.warning("fleet message ignored topic=%s bytes=%d reason=%s", _short(item.topic),
                               len(item.payload), e)
                continue
            updates.append(observation.update())
            if observation.subject == "telemetry":
                upload = observation.body.get("upload") or {}
                reported[observation.device_id] = (upload.get("overdue_acks", 0), upload.get("oldest_overdue_s"))
        self._check_acks(reported)
        if updates:
            kept = self.index.record_fleet(updates)
            for update, accepted in zip(updates, kept):
                if not accepted:
                    logger.info("older status ignored device_id=%s boot=%d session=%d", update.device_id,
                                update.order[0], update.order[1])
        for event in done:
            event.set()


    def _check_acks(self, reported: Mapping[str, tuple[int, int | None]]) -> None:
        """The alarm: a WARNING naming every box whose telemetry in this batch reports overdue acks."""
        for device_id, (count, oldest) in reported.items():
            if count > 0:
                self._unacked[device_id] = (count, oldest)
            elif self._unacked.pop(device_id, None) is not None:
                logger.info("uploads acknowledged again device_id=%s", device_id)
        overdue = sorted(d for d in reported if reported[d][0] > 0)
        if overdue:
            logger.warning("uploads unacknowledged device_ids=%s overdue_acks=%s oldest_overdue_s=%s; these "
                           "boxes' uploads reach no ingest worker: check the workers are running and the "
                           "broker's roles (only central identities may join the ingest group)",
                           ",".join(overdue), ",".join(str(reported[d][0]) for d in overdue),
                           ",".join(str(reported[d][1]) for d in overdue))


def start_tracker(settings: BrokerSettings, data_dir: Path, *, client_id: str | None = None) -> FleetTracker:
    """A started tracker writing to ``data_dir``'s index; close it to stop (for ``serve``)."""
    index = SqliteIndex(Path(data_dir) / INDEX_FILE)
    try:
        return FleetTracker(index, settings, client_id=client_id, owns_index=True).start()
    except BaseException:
        index.close()
        raise


def collect_live(settings: BrokerSettings, index: SqliteIndex, *, timeout: float = 10.0,
                 clock: Clock | None = None) -> list[DeviceView]:
    """The fleet as the broker's retained messages tell it now (``fleet list --live``).

    ``index`` gives the enrolled devices (listed even when never seen) and
    their keys (for the config reports); nothing is written to it.
    """
    clock = clock or SystemClock()
    received: list[Inbound] = []
    lock = threading.Lock()

    def keep(inbound: Inbound) -> None:
        with lock:
            received.append(inbound)

    with FleetClient(settings, client_id=_cli_client_id("live"), filters=LIVE_FILTERS, on_message=keep) as client:
        deadline = time.monotonic() + timeout
        client.wait_ready(timeout)
        client.barrier(max(0.0, deadline - time.monotonic()))
    now_ms = round(clock.wall() * 1000)
    device_key = _key_lookup(index)
    updates = []
    for item in received:
        try:
            updates.append(parse_observation(item.topic, item.payload, retained=item.retained, received_ms=now_ms,
                                             device_key=device_key).update())
        except FleetMessageError as e:
            logger.warning("fleet message ignored topic=%s bytes=%d reason=%s", _short(item.topic),
                           len(item.payload), e)
    # The same ordering rules as the tracker's, on a scratch index that vanishes with it.
    with SqliteIndex(Path(":memory:")) as scratch:
        scratch.record_fleet(updates)
        rows = {row["device_id"]: row for row in scratch.fleet_devices()}
    for device in index.devices():
        rows.setdefault(device["device_id"], {"device_id": device["device_id"], "subjects": {}})
    for row in rows.values():
        row["enrolled"] = index.device_key(row["device_id"]) is not None
    return [DeviceView.from_row(rows[name]) for name in sorted(rows)]


def _cli_client_id(purpose: str) -> str:
    # Unique per run: a second client with the tracker's id would disconnect the tracker.
    return f"linetap-central-fleet-{purpose}-{secrets.token_hex(4)}"


# ------------------------------------------------------------------- config --

@dataclass(frozen=True)
class ConfigOutcome:
    """What one box made of a pushed config."""

    device_id: str
    version: int | None  # None when nothing was sent (not enrolled)
    outcome: Literal["applied", "rejected", "timeout", "not-sent"]
    code: str | None = None
    reason: str | None = None
    changed: tuple[str, ...] = ()
    applied_version: int | None = None
    seconds: float | None = None  # from the push to this box's report

    @property
    def ok(self) -> bool:
        return self.outcome == "applied"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"changed": list(self.changed)}


@dataclass(frozen=True)
class PushResult:
    outcomes: list[ConfigOutcome]
    seconds: float  # from the first publish to the last report (or the timeout)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


def check_config_text(text: str, *, source: str) -> Config:
    """Validate a config for pushing as each box will, laid over the defaults (a box lays it over its file)."""
    return fleet.pushed_config(text, Config(device=DeviceSection(id="placeholder")), source=source)


def push_config(settings: BrokerSettings, data_dir: Path, devices: Sequence[str] | None, text: str, *,
                source: str, timeout: float, clock: Clock | None = None) -> PushResult:
    """Seal ``text`` for each device (every enrolled one when ``devices`` is None), publish it retained
    to ``config/desired``, and wait for each verified report of that version.

    A device's version is one above the highest the centre has used or seen
    it report (a box refuses a version not above the newest it judged).
    """
    clock = clock or SystemClock()
    check_config_text(text, source=source)
    body = fleet.config_body(text)
    with SqliteIndex(Path(data_dir) / INDEX_FILE) as index:
        operator = load_operator_key(data_dir)
        targets = [d["device_id"] for d in index.devices()] if devices is None else list(dict.fromkeys(devices))
        if not targets:
            raise ConfigError("no devices to push to: enrol boxes first (`linetap-central enroll`)")
        keys = {d: index.device_key(d) for d in targets}
        outcomes: dict[str, ConfigOutcome] = {
            d: ConfigOutcome(d, None, "not-sent", "not-enrolled", f"{d} has no enrolled key; enrol it with "
                             "`linetap-central enroll` first") for d in targets if keys[d] is None}
        sendable = [d for d in targets if keys[d] is not None]
        verify = {d: public_key_from_b64(keys[d]) for d in sendable}
        versions = {d: index.next_fleet_seq(d, "config", at_least=_known_config_version(index, d) + 1)
                    for d in sendable}
    now_ms = round(clock.wall() * 1000)
    sealed = {d: seal("config", d, body, operator, seq=versions[d], now_ms=now_ms, ttl_ms=CONFIG_TTL_MS)
              for d in sendable}
    reports: queue.Queue[Inbound] = queue.Queue()
    started = time.monotonic()
    if sendable:
        report_filter = fleet.config_reported_topic(sendable[0]) if len(sendable) == 1 \
            else fleet.fleet_filter("config", "reported")
        with FleetClient(settings, client_id=_cli_client_id("config"), filters=[report_filter],
                         on_message=reports.put) as client:
            client.wait_ready(timeout)
            started = time.monotonic()
            mids = [client.publish(fleet.config_desired_topic(d), sealed[d], retain=True) for d in sendable]
            logger.info("config pushed devices=%d versions=%s", len(sendable),
                        ",".join(sorted({str(v) for v in versions.values()})))
            outcomes.update(_await_reports(reports, versions, verify, started, started + timeout))
            client.wait_published(mids, max(1.0, started + timeout - time.monotonic()))
    elapsed = max((o.seconds for o in outcomes.values() if o.seconds is not None),
                  default=time.monotonic() - started)
    return PushResult([outcomes[d] for d in targets], elapsed)


def _known_config_version(index: SqliteIndex, device_id: str) -> int:
    """The highest config version the device has told the tracker of (0 when none)."""
    row = index.fleet_device(device_id)
    if row is None:
        return 0
    seen = [0]
    for subject, member in (("birth", "config_version"), ("telemetry", "config_version"),
                            ("config/reported", "applied_version"), ("config/reported", "version")):
        value = row["subjects"].get(subject, {}).get("body", {}).get(member)
        if isinstance(value, int):
            seen.append(value)
    return max(seen)


def _await_reports(reports: queue.Queue[Inbound], versions: Mapping[str, int],
                   keys: Mapping[str, Ed25519PublicKey], started: float, deadline: float) -> dict[str, ConfigOutcome]:
    outcomes: dict[str, ConfigOutcome] = {}
    lookup = keys.get
    while len(outcomes) < len(versions):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            inbound = reports.get(timeout=remaining)
        except queue.Empty:
            break
        device_id = inbound.topic.split("/")[2] if inbound.topic.count("/") == 4 else ""
        if device_id not in versions or device_id in outcomes:
            continue
        try:
            report = parse_observation(inbound.topic, inbound.payload, retained=inbound.retained,
                                       received_ms=0, device_key=lookup).body
        except FleetMessageError as e:
            logger.warning("config report ignored device_id=%s reason=%s", device_id, e)
            continue
        if report["version"] != versions[device_id]:
            continue  # the report of an earlier push, still retained
        outcomes[device_id] = ConfigOutcome(device_id, versions[device_id], report["outcome"], report["code"],
                                            report["reason"], tuple(report["changed"]), report["applied_version"],
                                            time.monotonic() - started)
    for device_id, version in versions.items():
        if device_id not in outcomes:
            outcomes[device_id] = ConfigOutcome(
                device_id, version, "timeout", "no-report",
                f"no report of version {version} within {deadline - started:.0f} s; the box may be offline: "
                "the config stays retained and applies when it reconnects (see `fleet show`)")
    return outcomes


# ----------------------------------------------------------------- commands --

@dataclass(frozen=True)
class CommandResult:
    """A box's verified answer to one command."""

    device_id: str
    command: str
    seq: int
    status: Literal["ok", "refused", "failed"]
    code: str | None
    reason: str | None
    result: dict[str, Any] | None
    time_checked: bool  # False: the box's clock was not synchronised, so it could not judge the expiry
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def send_command(settings: BrokerSettings, data_dir: Path, device_id: str, name: str, args: Mapping[str, Any], *,
                 timeout: float, ttl_ms: int = COMMAND_TTL_MS, clock: Clock | None = None) -> CommandResult:
    """Seal and send one command; wait for the box's response and verify it with its enrolled key.

    Raises :class:`SyncError` when no verified answer comes within ``timeout``.
    """
    clock = clock or SystemClock()
    wire.check_device_id(device_id)
    with SqliteIndex(Path(data_dir) / INDEX_FILE) as index:
        key_text = index.device_key(device_id)
        if key_text is None:
            raise ConfigError(f"device {device_id} is not enrolled; enrol it with `linetap-central enroll` "
                              "(its answers are verified with that key)")
        operator: Ed25519PrivateKey = load_operator_key(data_dir)
        seq = index.next_fleet_seq(device_id, "cmd", at_least=1)
    trusted = key_table([public_key_from_b64(key_text)])
    nonce = secrets.token_urlsafe(16)
    reply_to = f"{fleet.resp_topic(device_id)}/{nonce}"
    correlation = nonce.encode("ascii")
    payload = seal("cmd", device_id, fleet.command_body(name, **args), operator, seq=seq,
                   now_ms=round(clock.wall() * 1000), ttl_ms=ttl_ms, nonce=nonce)
    answers: queue.Queue[Inbound] = queue.Queue()
    with FleetClient(settings, client_id=_cli_client_id("cmd"), filters=[reply_to], on_message=answers.put) as client:
        client.wait_ready(timeout)
        started = time.monotonic()
        deadline = started + timeout
        client.wait_published([client.publish(fleet.cmd_topic(device_id, name), payload, response_topic=reply_to,
                                               correlation_data=correlation)], timeout)
        logger.info("command sent device_id=%s command=%s seq=%d", device_id, name, seq)
        while True:
            remaining = deadline - time.monotonic()
            try:
                answer = answers.get(timeout=max(0.0, remaining)) if remaining > 0 else None
            except queue.Empty:
                answer = None
            if answer is None:
                raise SyncError(f"no verified answer from {device_id} to {name} (seq {seq}) within "
                                f"{timeout:.0f} s; check `linetap-central fleet show {device_id}` (offline?). "
                                f"The command expires in {ttl_ms // 1000} s and runs at most once")
            try:
                envelope = open_envelope(answer.payload, trusted_keys=trusted, device_id=device_id, kind="resp",
                                         now_ms=None, max_bytes=MAX_RESPONSE_BYTES)
            except EnvelopeRefused as e:
                logger.warning("command response ignored device_id=%s code=%s reason=%s", device_id, e.code,
                               str(e)[:200])
                continue
            body = envelope.body
            if (envelope.nonce != nonce or body.get("correlation") != base64.b64encode(correlation).decode("ascii")
                    or answer.correlation_data not in (None, correlation)):
                logger.warning("command response for another request ignored device_id=%s", device_id)
                continue
            return CommandResult(device_id, name, seq, body.get("status", "failed"), body.get("code"),
                                 body.get("reason"), body.get("result"), bool(body.get("time_checked")),
                                 time.monotonic() - started)


def parse_command_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["seconds=30"]`` → ``{"seconds": 30}``; whole numbers become ints, the box judges the rest."""
    args: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ConfigError(f"command argument {pair!r} is not key=value (e.g. seconds=30)")
        number = untrusted.ascii_int(value, lo=untrusted.MIN_SAFE_INT, signed=True)
        args[name] = value if number is None else number
    return args
