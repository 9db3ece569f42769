"""Rollouts: a kept release offered to some boxes, followed, and halted when too many roll back.

``fleet update push VERSION (DEVICE... | --all | --percent N | --group NAME)``
(:func:`push_update`) seals an operator envelope of kind ``update`` for each
target (body :func:`linetap.sync.updatewire.offer_body`; a per-box sequence
number kept in the index like a config's, ``fleet_seq`` kind ``update``) and
publishes it retained on the box's ``update/offer``. The rollout and its
targets are in the index first (:mod:`~linetap.sync.central.rolloutindex`),
so the tracker can match every state a box reports to it.

``--percent N`` takes a stable N% of the enrolled boxes: ranked by the
SHA-256 of the rollout id and the device id, the first ceil(N% of them). A
rollout's pick never changes; another rollout picks differently.

A push to a box replaces the retained offer of an earlier rollout it has
not finished: that rollout counts the box withdrawn (and is done once all
its other targets are).

Halting (:func:`halt`): the rollout's state becomes ``halted`` and the offers
of the targets that have not started installing (no outcome yet, and not
past ``staged``) are withdrawn with an empty retained message on
``update/offer``. A box already preparing, switching or on trial finishes by
its own rules (its health gate rolls back what fails). The tracker calls
:func:`judge` after each outcome: more than the rollout's halt share of its
targets rolled back or failed halts it (``alarm=rollout-halted``, WARNING);
every target with an outcome or withdrawn makes it ``done``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import ConfigError
from linetap.sync import updatewire, wire
from linetap.sync.central.config import IndexSection
from linetap.sync.central.fleetclient import FleetClient
from linetap.sync.central.index import IndexTables
from linetap.sync.central.indexes import open_index
from linetap.sync.central.keys import load_operator_key
from linetap.sync.central.releases import ReleaseStore
from linetap.sync.central.rolloutindex import FAILED_OUTCOMES
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.signed import seal

logger = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
DEFAULT_HALT_AT = 0.2
DEFAULT_TTL_DAYS = 14
INSTALLING = ("preparing", "prepared", "waiting-idle", "switching", "trial")
HALTED_ALARM = "rollout-halted"


@dataclass(frozen=True)
class Targets:
    """Who a push is for: exactly one of the four."""

    devices: tuple[str, ...] = ()
    everyone: bool = False
    percent: float | None = None
    group: str | None = None


@dataclass(frozen=True)
class Pushed:
    rollout_id: str
    version: str
    release_id: str
    devices: tuple[str, ...]
    seqs: dict[str, int]


def new_rollout_id(version: str) -> str:
    return f"{version}-{secrets.token_hex(4)}"


def pick_percent(devices: Sequence[str], rollout_id: str, percent: float) -> list[str]:
    """A stable ``percent`` of ``devices`` for ``rollout_id`` (at least one when ``percent`` > 0)."""
    ranked = sorted(devices, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).digest())
    return sorted(ranked[:math.ceil(len(ranked) * percent / 100)])


def resolve_targets(index: IndexTables, targets: Targets, rollout_id: str) -> list[str]:
    enrolled = [d["device_id"] for d in index.devices()]
    chosen = sum((bool(targets.devices), targets.everyone, targets.percent is not None, targets.group is not None))
    if chosen != 1:
        raise ConfigError("name the boxes: DEVICE..., --all, --percent N or --group NAME (exactly one of them)")
    if targets.everyone:
        picked = enrolled
    elif targets.percent is not None:
        if not 0 < targets.percent <= 100:
            raise ConfigError(f"--percent {targets.percent:g} is not above 0 and at most 100")
        picked = pick_percent(enrolled, rollout_id, targets.percent)
    elif targets.group is not None:
        groups = index.groups()
        if targets.group not in groups:
            raise ConfigError(f"no group {targets.group!r} (groups: {', '.join(groups) or 'none'}); make one with "
                              "`linetap-central fleet group add NAME DEVICE...`")
        picked = groups[targets.group]
    else:
        picked = list(dict.fromkeys(targets.devices))
    unknown = sorted(set(picked) - set(enrolled))
    if unknown:
        raise ConfigError(f"not enrolled: {', '.join(unknown)}; enrol boxes with `linetap-central enroll` first")
    if not picked:
        raise ConfigError("no boxes to offer the release to: enrol boxes first (`linetap-central enroll`)")
    return picked


def push_update(settings: BrokerSettings, data_dir: Path, version: str, targets: Targets, *,
                halt_at: float = DEFAULT_HALT_AT, allow_downgrade: bool = False, ttl_days: float = DEFAULT_TTL_DAYS,
                timeout: float = 30.0, index_config: IndexSection | None = None,
                clock: Clock | None = None) -> Pushed:
    """Offer the kept release of ``version`` to ``targets``; returns once the broker holds every offer."""
    clock = clock or SystemClock()
    if not 0 <= halt_at <= 1:
        raise ConfigError(f"--halt-at {halt_at:g} is not a share from 0 to 1 (0.2: halt past 20% rolled back)")
    if not 0 < ttl_days <= 365:
        raise ConfigError(f"--ttl-days {ttl_days:g} is not above 0 and at most 365")
    kept = ReleaseStore(data_dir).by_version(version)
    rollout_id = new_rollout_id(kept.release.version)
    body = updatewire.offer_body(kept.release.data, kept.signature, rollout=rollout_id,
                                 allow_downgrade=allow_downgrade)
    now_ms = round(clock.wall() * 1000)
    with open_index(index_config, Path(data_dir)) as index:
        operator = load_operator_key(data_dir)
        devices = resolve_targets(index, targets, rollout_id)
        seqs = {d: index.next_fleet_seq(d, "update", at_least=1) for d in devices}
        replaced = index.add_rollout({"rollout_id": rollout_id, "version": kept.release.version,
                                      "release_id": kept.release_id, "halt_permille": round(halt_at * 1000),
                                      "allow_downgrade": allow_downgrade, "state": "active", "created_ms": now_ms},
                                     seqs)
        judge(index, sorted(replaced), now_ms)  # an older rollout whose last pending box this push took is done
    sealed = {d: seal("update", d, body, operator, seq=seqs[d], now_ms=now_ms, ttl_ms=round(ttl_days * DAY_MS))
              for d in devices}
    _publish_retained(settings, {updatewire.offer_topic(d): sealed[d] for d in devices}, timeout, "update")
    logger.info("update offered rollout=%s version=%s release_id=%s devices=%d", rollout_id, kept.release.version,
                kept.release_id, len(devices))
    return Pushed(rollout_id, kept.release.version, kept.release_id, tuple(devices), seqs)


def _publish_retained(settings: BrokerSettings, messages: dict[str, bytes], timeout: float, purpose: str) -> None:
    if not messages:
        return
    client_id = f"linetap-central-fleet-{purpose}-{secrets.token_hex(4)}"
    with FleetClient(settings, client_id=client_id, filters=[], on_message=lambda _m: None) as client:
        deadline = time.monotonic() + timeout
        client.wait_ready(timeout)
        mids = [client.publish(topic, payload, retain=True) for topic, payload in messages.items()]
        client.wait_published(mids, max(1.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ halting --

def not_started(targets: Sequence[dict[str, Any]]) -> list[str]:
    """The targets whose offer may still be withdrawn: no outcome, not installing, not withdrawn."""
    return [t["device_id"] for t in targets
            if t["outcome"] is None and t["state"] not in INSTALLING and t["withdrawn_ms"] is None]


def halt(index: IndexTables, rollout_id: str, now_ms: int, reason: str) -> list[str] | None:
    """Halt an active rollout; the devices whose offers to withdraw, None when it was not active."""
    if not index.end_rollout(rollout_id, "halted", now_ms, reason[:500]):
        return None
    devices = not_started(index.rollout_targets(rollout_id))
    index.mark_withdrawn(rollout_id, devices, now_ms)
    return devices


def halt_reason(rollout: dict[str, Any], targets: Sequence[dict[str, Any]]) -> str | None:
    """Why ``rollout`` must halt (its failed share is past its halt share), or None."""
    failed = sum(t["outcome"] in FAILED_OUTCOMES for t in targets)
    if not targets or failed * 1000 <= rollout["halt_permille"] * len(targets):
        return None
    return (f"{failed} of {len(targets)} boxes rolled back or failed ({failed / len(targets):.0%}), more than "
            f"the rollout's halt share of {rollout['halt_permille'] / 10:g}%")


def judge(index: IndexTables, rollout_ids: Sequence[str], now_ms: int) -> dict[str, list[str]]:
    """After outcomes: halt the rollouts past their share (rollout → offers to withdraw) and end finished ones."""
    halted: dict[str, list[str]] = {}
    for rollout_id in rollout_ids:
        rollout = index.rollout(rollout_id)
        if rollout is None or rollout["state"] != "active":
            continue
        targets = index.rollout_targets(rollout_id)
        reason = halt_reason(rollout, targets)
        if reason is not None:
            devices = halt(index, rollout_id, now_ms, reason)
            if devices is not None:
                halted[rollout_id] = devices
                logger.warning("rollout halted alarm=%s rollout=%s version=%s withdrawn=%d reason=%s",
                               HALTED_ALARM, rollout_id, rollout["version"], len(devices), reason)
        elif all(t["outcome"] is not None or t["withdrawn_ms"] is not None for t in targets):
            index.end_rollout(rollout_id, "done", now_ms)
            logger.info("rollout done rollout=%s version=%s", rollout_id, rollout["version"])
    return halted


def halt_rollout(settings: BrokerSettings, data_dir: Path, rollout_id: str, *, timeout: float = 30.0,
                 index_config: IndexSection | None = None, clock: Clock | None = None) -> list[str]:
    """``fleet update halt``: halt by hand and withdraw the offers not yet being installed."""
    clock = clock or SystemClock()
    with open_index(index_config, Path(data_dir)) as index:
        rollout = index.rollout(rollout_id)
        if rollout is None:
            raise ConfigError(f"no rollout {rollout_id!r}; `linetap-central fleet update status` lists them")
        devices = halt(index, rollout_id, round(clock.wall() * 1000), "halted by the operator")
        if devices is None:
            raise ConfigError(f"rollout {rollout_id} is {rollout['state']}, not active: nothing to halt")
    withdraw(settings, devices, timeout)
    logger.warning("rollout halted alarm=%s rollout=%s withdrawn=%d reason=operator", HALTED_ALARM, rollout_id,
                   len(devices))
    return devices


def withdraw(settings: BrokerSettings, devices: Sequence[str], timeout: float) -> None:
    """Clear the retained offers of ``devices`` (an empty retained message: the box drops its offer)."""
    _publish_retained(settings, {updatewire.offer_topic(wire.check_device_id(d)): b"" for d in devices}, timeout,
                      "halt")

