"""The operator's fleet tools: the live picture, signed config and commands out.

- :func:`collect_live` reads the fleet straight from the broker's retained
  messages (``fleet list --live``), for a centre where no tracker
  (:mod:`linetap.sync.central.tracker`) runs;
- :func:`push_config` and :func:`send_command` seal with the operator key,
  publish, and wait for the boxes' signed answers, verified against each
  box's enrolled key.

Each opens a short-lived :class:`~linetap.sync.central.fleetclient.FleetClient`
with a client id of its own, so it never takes over the tracker's session.
"""

from __future__ import annotations

import base64
import logging
import queue
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware import untrusted
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.config import Config, DeviceSection
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync import fleetwire, pushpolicy, wire
from linetap.sync.central.fleetclient import FleetClient
from linetap.sync.central.config import IndexSection
from linetap.sync.central.index import IndexTables, SqliteIndex
from linetap.sync.central.indexes import open_index
from linetap.sync.central.keys import load_operator_key
from linetap.sync.central.observation import (LIVE_FILTERS, DeviceView, FleetMessageError, key_lookup,
                                              parse_observation, short_topic)
from linetap.sync.mqtt import BrokerSettings, Inbound
from linetap.sync.signed import EnvelopeRefused, key_table, open_envelope, seal

logger = logging.getLogger(__name__)

# A retained config must outlive a box's longest absence: a box that comes back after its
# expiry refuses it as expired. Replays are refused by the version, not by the expiry.
CONFIG_TTL_MS = 90 * 24 * 3600 * 1000
# A command is for now: one still queued at the broker for an absent box must not run days later.
COMMAND_TTL_MS = 5 * 60 * 1000
MAX_RESPONSE_BYTES = wire.MAX_MESSAGE  # a command response (logs) fits one message


def fleet_views(index: IndexTables) -> list[DeviceView]:
    """Every device the index's fleet tables know, and every enrolled one, by device id."""
    updates = index.update_states()
    return [DeviceView.from_row(row).with_update(updates.get(row["device_id"])) for row in index.fleet_devices()]


def collect_live(settings: BrokerSettings, index: IndexTables, *, timeout: float = 10.0,
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
    device_key = key_lookup(index)
    updates = []
    for item in received:
        try:
            updates.append(parse_observation(item.topic, item.payload, retained=item.retain, received_ms=now_ms,
                                             device_key=device_key).update())
        except FleetMessageError as e:
            logger.warning("fleet message ignored topic=%s bytes=%d reason=%s", short_topic(item.topic),
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
    return pushpolicy.pushed_config(text, Config(device=DeviceSection(id="placeholder")), source=source)


def push_config(settings: BrokerSettings, data_dir: Path, devices: Sequence[str] | None, text: str, *,
                source: str, timeout: float, clock: Clock | None = None,
                index_config: IndexSection | None = None) -> PushResult:
    """Seal ``text`` for each device (every enrolled one when ``devices`` is None), publish it retained
    to ``config/desired``, and wait for each verified report of that version.

    A device's version is one above the highest the centre has used or seen
    it report (a box refuses a version not above the newest it judged).
    """
    clock = clock or SystemClock()
    check_config_text(text, source=source)
    body = fleetwire.config_body(text)
    with open_index(index_config, Path(data_dir)) as index:
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
        report_filter = fleetwire.config_reported_topic(sendable[0]) if len(sendable) == 1 \
            else fleetwire.fleet_filter("config", "reported")
        with FleetClient(settings, client_id=_cli_client_id("config"), filters=[report_filter],
                         on_message=reports.put) as client:
            client.wait_ready(timeout)
            started = time.monotonic()
            mids = [client.publish(fleetwire.config_desired_topic(d), sealed[d], retain=True) for d in sendable]
            logger.info("config pushed devices=%d versions=%s", len(sendable),
                        ",".join(sorted({str(v) for v in versions.values()})))
            outcomes.update(_await_reports(reports, versions, verify, started, started + timeout))
            client.wait_published(mids, max(1.0, started + timeout - time.monotonic()))
    elapsed = max((o.seconds for o in outcomes.values() if o.seconds is not None),
                  default=time.monotonic() - started)
    return PushResult([outcomes[d] for d in targets], elapsed)


def _known_config_version(index: IndexTables, device_id: str) -> int:
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
            report = parse_observation(inbound.topic, inbound.payload, retained=inbound.retain,
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
                 timeout: float, ttl_ms: int = COMMAND_TTL_MS, clock: Clock | None = None,
                 index_config: IndexSection | None = None) -> CommandResult:
    """Seal and send one command; wait for the box's response and verify it with its enrolled key.

    Raises :class:`SyncError` when no verified answer comes within ``timeout``.
    """
    clock = clock or SystemClock()
    wire.check_device_id(device_id)
    with open_index(index_config, Path(data_dir)) as index:
        key_text = index.device_key(device_id)
        if key_text is None:
            raise ConfigError(f"device {device_id} is not enrolled; enrol it with `linetap-central enroll` "
                              "(its answers are verified with that key)")
        operator: Ed25519PrivateKey = load_operator_key(data_dir)
        seq = index.next_fleet_seq(device_id, "cmd", at_least=1)
    trusted = key_table([public_key_from_b64(key_text)])
    nonce = secrets.token_urlsafe(16)
    reply_to = f"{fleetwire.resp_topic(device_id)}/{nonce}"
    correlation = nonce.encode("ascii")
    payload = seal("cmd", device_id, fleetwire.command_body(name, **args), operator, seq=seq,
                   now_ms=round(clock.wall() * 1000), ttl_ms=ttl_ms, nonce=nonce)
    answers: queue.Queue[Inbound] = queue.Queue()
    with FleetClient(settings, client_id=_cli_client_id("cmd"), filters=[reply_to], on_message=answers.put) as client:
        client.wait_ready(timeout)
        started = time.monotonic()
        deadline = started + timeout
        client.wait_published([client.publish(fleetwire.cmd_topic(device_id, name), payload, response_topic=reply_to,
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
