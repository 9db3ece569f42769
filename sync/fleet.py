"""The fleet protocol, device side: commands, config, status, birth, telemetry and alarms.

Sans-IO, in h11's manner: :class:`FleetAgent` takes what arrived (topic,
payload, MQTT v5 response topic and correlation data), the clock and what the
box knows (:class:`~linetap.sync.pushpolicy.BoxFacts`), and returns a list of
actions, frozen dataclasses that the box's service module
(:mod:`linetap.sync.boxsync`) executes in order. Nothing here starts a
thread, sleeps, touches a file or calls back into its caller; the agent's
persisted state (replay guard, config version) is handed in as a value and
comes out as :class:`SaveState`, which must be written durably before the
actions after it run. Topics and payloads are in :mod:`linetap.sync.fleetwire`.

Actions, run in order: :class:`SaveState` (durably, before what follows); a
command's effect (:class:`Ping`, :class:`ShowIdentify`, :class:`PlayTestAnnouncement`,
:class:`SyncNow`, :class:`ReadLogs`, :class:`PurgeSynced`), whose outcome or
LinetapError goes to :meth:`FleetAgent.command_done` for the :class:`Reply`;
:class:`ApplyConfig`, whose outcome goes to :meth:`FleetAgent.config_done`;
:class:`RollbackConfig`, :class:`SetLogLevel`, :class:`SetAlarm`; :class:`Reply`
and :class:`ConfigReport`, published; :class:`Restart`, once the reply or
report before it is delivered (systemd starts the service again).

Status ordering: every ``status`` carries (boot, session); a consumer keeps
the highest pair per box, so a late Will cannot mark a live box offline
(:meth:`FleetAgent.on_status` repairs a late retained one).

Config. A pushed config is the local file's TOML (body ``{"toml": text}``),
laid over the local file key by key and validated by the same schema
(``[device]`` may not be pushed). Its version is the envelope's ``seq`` and
only moves forward; the same version delivered again (retained, after every
reconnect) is answered with the report already given. A valid document is
judged by :mod:`linetap.sync.pushpolicy` against the local file: one refused
key rejects it (``policy-refused``); each changed key is logged with its old
and new value. Every payload is read through
:func:`linetap.firmware.untrusted.loads` before anything looks at it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.errors import ConfigError, LinetapError, SyncError
from linetap.firmware.manifest import canonical
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync import pushpolicy
from linetap.sync.fleetcommands import (
    COMMANDS, MAX_CORRELATION, CommandAction, Ping, PlayTestAnnouncement, PurgeSynced, ReadLogs, Refusal, Restart,
    ShowIdentify, SyncNow, Ticket, command_args, command_body_parts, command_name, reply_topic)
from linetap.sync.fleetwire import (
    ALARMS, MAX_COMMAND_BYTES, MAX_CONFIG_BYTES, MAX_FIGURES, MAX_REASON, BirthInfo, Outbound, Session,
    Telemetry, alarm_topic, birth_topic, bounded, config_reported_topic, spool_body, status_topic,
    telemetry_topic, tenths)
from linetap.sync.pushpolicy import BoxFacts, pushed_config
from linetap.sync.signed import EnvelopeRefused, Malformed, ReplayGuard, StaleVersion, open_envelope, seal
from linetap.sync.wire import check_device_id

logger = logging.getLogger(__name__)

RESPONSE_TTL_MS = 10 * 60 * 1000

Outcome = Literal["applied", "rejected"]
ResponseStatus = Literal["ok", "refused", "failed"]


# --------------------------------------------------------------- actions --

@dataclass(frozen=True)
class SaveState:
    """Write the agent's state durably, before running the actions after it."""

    state: dict[str, Any] = field(repr=False, hash=False)


@dataclass(frozen=True)
class Reply:
    """The signed answer to one command: publish to ``topic`` with MQTT v5 ``correlation_data``."""

    topic: str
    payload: bytes = field(repr=False)
    correlation_data: bytes | None
    command: str | None  # None when the command could not be read
    status: ResponseStatus
    code: str | None  # why, when refused or failed
    qos: int = 1


@dataclass(frozen=True)
class ConfigReport:
    """The answer to one ``config/desired`` document: publish on ``config/reported`` (QoS 1, retained)."""

    topic: str
    payload: bytes = field(repr=False)
    version: int | None  # of the document answered; None when it could not be read
    outcome: Outcome
    applied_version: int  # what the box runs after this
    code: str | None
    reason: str | None
    changed: tuple[str, ...]
    # Consent keys of the running config that differ from the local file (alarm "consent-changed").
    consent: tuple[str, ...] = ()
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ApplyConfig:
    """Make ``config`` the box's: check it (when it needs a restart), keep ``text`` as the pushed
    document (on trial when it needs a restart), make it live otherwise. A LinetapError goes to
    :meth:`FleetAgent.config_done`, as does success."""

    config: Config
    sections: frozenset[str]  # the sections that change
    restart: tuple[str, ...]  # of those, the ones read only at start
    version: int
    text: str = field(repr=False)
    digest: str
    previous: Config = field(repr=False)


@dataclass(frozen=True)
class RollbackConfig:
    """:class:`ApplyConfig` failed: run ``config`` again (the one before)."""

    config: Config


@dataclass(frozen=True)
class SetLogLevel:
    level: str


@dataclass(frozen=True)
class SetAlarm:
    """Raise (``active``) or clear alarm ``name``; build its message with :meth:`FleetAgent.alarm`."""

    name: str
    active: bool
    detail: str = ""


Action = (SaveState | Reply | ConfigReport | ApplyConfig | RollbackConfig | SetLogLevel | SetAlarm | Restart
          | Ping | ShowIdentify | PlayTestAnnouncement | SyncNow | ReadLogs | PurgeSynced)


def consent_alarm(note: Mapping[str, Any] | None) -> SetAlarm:
    """``consent-changed`` raised while pushed consent keys differ from the local file (a
    :func:`~linetap.sync.pushpolicy.consent_note`), else cleared."""
    detail = "" if note is None else (f"config version {note['config_version']} changes consent from the "
                                      "box's own file: " + ", ".join(note["changed"]))
    return SetAlarm(pushpolicy.CONSENT_ALARM, note is not None, detail)


# ----------------------------------------------------------------- agent --

class FleetAgent:
    """The box's side of the fleet protocol. Not thread-safe: call it from one thread.

    ``operator_keys`` maps fingerprints to the operator public keys whose
    commands and configs the box obeys (:func:`~linetap.sync.signed.key_table`).
    ``config`` is the config running now and ``local_config`` the box's own
    file that pushed configs are laid over (default: ``config``); ``state`` is the
    last :class:`SaveState`'s (None on a new box); ``boot`` is the app's persisted boot
    counter; ``can_restart`` whether the box can restart itself (as the service).
    """

    def __init__(self, *, device_id: str, signing_key: Ed25519PrivateKey,
                 operator_keys: Mapping[str, Ed25519PublicKey], clock: Clock, config: Config,
                 state: Mapping[str, Any] | None, boot: int, local_config: Config | None = None,
                 can_restart: bool = False) -> None:
        self.device_id = check_device_id(device_id)
        self._key = signing_key
        self._operator_keys = dict(operator_keys)
        self._clock = clock
        self._config = config
        self._local = local_config or config  # what pushed configs are laid over
        self._boot = boot
        self._can_restart = can_restart
        self._session = 0
        state = state or {}
        self._applied_version, self._last = _load_config_state(state.get("config"))
        self._replay = ReplayGuard(state.get("replay"))

    @property
    def config(self) -> Config:
        return self._config

    @property
    def config_version(self) -> int:
        """The version of the running config; 0 for the local file."""
        return self._applied_version

    # ------------------------------------------------------------ commands --

    def handle_command(self, topic: str, payload: bytes, response_topic: str | None,
                       correlation_data: bytes | None) -> list[Action]:
        """Verify one command: a signed refusal, or :class:`SaveState` then the command's effect.

        The command is recorded as seen before its effect runs: if saving
        fails, the service must stop rather than run the actions after it.
        """
        now_ms = self._now_ms()
        correlation = correlation_data if correlation_data and len(correlation_data) <= MAX_CORRELATION \
            else None
        ticket = Ticket(None, reply_topic(response_topic, self.device_id), correlation, None, None, False)
        try:
            if correlation_data is not None and len(correlation_data) > MAX_CORRELATION:
                raise Malformed(f"correlation data is {len(correlation_data)} bytes, more than "
                                f"{MAX_CORRELATION}; use a shorter request id")
            topic_name = command_name(topic, self.device_id)
            envelope = open_envelope(payload, trusted_keys=self._operator_keys, device_id=self.device_id,
                                     kind="cmd", now_ms=now_ms, max_bytes=MAX_COMMAND_BYTES)
            ticket = replace(ticket, seq=envelope.seq, nonce=envelope.nonce, time_checked=envelope.time_checked)
            name, raw_args = command_body_parts(envelope.body, topic_name)
            ticket = replace(ticket, name=name)
            self._replay = self._replay.admit(envelope, now_ms=now_ms)
            spec = COMMANDS.get(name)
            if spec is None:
                raise Refusal("unknown-command", f"command {name!r} is not one of {', '.join(COMMANDS)}")
            args = command_args(name, spec, raw_args)
        except (EnvelopeRefused, Refusal) as e:
            logger.warning("fleet command refused device_id=%s topic=%s code=%s reason=%s",
                           self.device_id, str(topic)[:200], e.code, str(e)[:MAX_REASON])
            admitted = [SaveState(self._state())] if isinstance(e, Refusal) else []  # a Refusal comes after admit
            return [*admitted, self._reply(ticket, "refused", e.code, str(e), None)]
        logger.info("fleet command admitted device_id=%s command=%s seq=%s key=%s time_checked=%s",
                    self.device_id, name, envelope.seq, envelope.key_id, envelope.time_checked)
        save = SaveState(self._state())
        if spec.action is not None:
            return [save, spec.action(ticket, **args)]
        if not self._can_restart:
            return [save, self._failed(ticket, _cannot_restart("restart"))]
        return [save, self._reply(ticket, "ok", None, None, spec.result(None, None)),
                Restart("restart requested by the fleet")]

    def command_done(self, action: CommandAction, outcome: Any = None, *,
                     error: LinetapError | None = None) -> list[Action]:
        """The signed answer to a command whose effect returned ``outcome`` or raised ``error``."""
        ticket = action.ticket
        if error is not None:
            return [self._failed(ticket, error)]
        logger.info("fleet command done device_id=%s command=%s seq=%s", self.device_id, ticket.name,
                    ticket.seq)
        return [self._reply(ticket, "ok", None, None, COMMANDS[ticket.name].result(action, outcome))]

    def _failed(self, ticket: Ticket, error: LinetapError) -> Reply:
        logger.warning("fleet command failed device_id=%s command=%s seq=%s error=%s",
                       self.device_id, ticket.name, ticket.seq, type(error).__name__)
        return self._reply(ticket, "failed", "effect-failed", f"{type(error).__name__}: {error}", None)

    def _reply(self, ticket: Ticket, status: ResponseStatus, code: str | None, reason: str | None,
               result: dict[str, Any] | None) -> Reply:
        body: dict[str, Any] = {"boot": self._boot, "clock_synced": self._clock.synced(),
                                "command": ticket.name, "status": status, "time_checked": ticket.time_checked}
        if ticket.correlation is not None:
            body["correlation"] = base64.b64encode(ticket.correlation).decode("ascii")
        if code is not None:
            body["code"] = code
        if reason is not None:
            body["reason"] = reason[:MAX_REASON]
        if result is not None:
            body["result"] = result
        payload = self._seal(body, ticket.seq, ticket.nonce)
        return Reply(ticket.reply_to, payload, ticket.correlation, ticket.name, status, code)

    # -------------------------------------------------------------- config --

    def handle_config(self, payload: bytes, facts: BoxFacts | None = None) -> list[Action]:
        """Verify, validate and judge one ``config/desired`` document; ``facts`` for the push policy.

        A document that changes nothing it has not judged before is answered at
        once; one that changes sections comes back as :class:`ApplyConfig`.
        """
        try:
            envelope = open_envelope(payload, trusted_keys=self._operator_keys, device_id=self.device_id,
                                     kind="config", now_ms=self._now_ms(), max_bytes=MAX_CONFIG_BYTES)
        except EnvelopeRefused as e:
            logger.warning("fleet config refused device_id=%s code=%s reason=%s", self.device_id, e.code,
                           str(e)[:MAX_REASON])
            return self._reported(self._report(None, "rejected", e.code, str(e), ()))
        version = envelope.seq
        # The body, not the envelope: the same document sealed again (new times) is the same version.
        digest = hashlib.sha256(canonical(envelope.body)).hexdigest()
        stale = self._stale(version, digest)
        if stale is not None:
            return self._reported(stale)
        try:
            new = self._validate(envelope.body, version)
        except ConfigError as e:
            return self._judged(version, digest, "rejected", "invalid-config", str(e), ())
        verdict = pushpolicy.judge(self._local, new, facts or BoxFacts())
        if verdict.refusals:
            for refusal in verdict.refusals:
                logger.warning("fleet config key refused device_id=%s version=%d %s", self.device_id, version,
                               refusal)
            return self._judged(version, digest, "rejected", "policy-refused",
                                f"config version {version} is refused by this box's push policy: "
                                + "; ".join(verdict.refusals), ())
        old = self._config
        changed = frozenset(name for name in Config.model_fields if getattr(old, name) != getattr(new, name))
        apply = ApplyConfig(new, changed, tuple(sorted(changed - LIVE_SECTIONS)), version,
                            envelope.body["toml"], digest, old)
        if not changed:
            return self.config_done(apply)
        if apply.restart and not self._can_restart:
            return self.config_done(apply, error=_cannot_restart(f"sections {', '.join(apply.restart)}"))
        return [apply]

    def config_done(self, apply: ApplyConfig, *, error: LinetapError | None = None) -> list[Action]:
        """The report on a config that :class:`ApplyConfig` made the box's, or that failed with ``error``."""
        version, changed = apply.version, tuple(sorted(apply.sections))
        if error is not None:
            logger.error("fleet config apply failed device_id=%s version=%d sections=%s error=%s",
                         self.device_id, version, ",".join(changed), type(error).__name__)
            return [RollbackConfig(apply.previous), *self._judged(
                version, apply.digest, "rejected", "apply-failed",
                f"applying sections {', '.join(changed)} failed ({type(error).__name__}: {error}); "
                f"rolled back to version {self._applied_version}", changed)]
        for change in pushpolicy.changes(apply.previous, apply.config):
            log = logger.warning if change.rule.guarded else logger.info
            log("fleet config key changed device_id=%s version=%d %s", self.device_id, version, change.shown())
        self._config = apply.config
        live = [SetLogLevel(apply.config.log.level)] if "log" in apply.sections else []
        actions = [*live, *self._judged(version, apply.digest, "applied", None, None, changed)]
        if not apply.restart:
            return actions
        logger.warning("fleet config needs a restart version=%d sections=%s", version, ",".join(apply.restart))
        return [*actions, Restart(f"config version {version} changes {', '.join(apply.restart)}")]

    def _stale(self, version: int, digest: str) -> ConfigReport | None:
        """The answer to a version already judged or older than the newest, else None."""
        last = self._last
        if last is not None and version == last["version"]:
            if digest == last["sha256"]:
                return self._report(version, last["outcome"], last["code"], last["reason"],
                                    tuple(last["changed"]))
            return self._report(version, "rejected", StaleVersion.code,
                                f"config version {version} was already used for another document; "
                                f"push this one with a version above {version}", ())
        newest = max(self._applied_version, last["version"] if last is not None else 0)
        if version <= newest:
            return self._report(version, "rejected", StaleVersion.code,
                                f"config version {version} is not above {newest}, the newest this box has "
                                f"applied or judged; push it with a version above {newest}", ())
        return None

    def _validate(self, body: Mapping[str, Any], version: int) -> Config:
        source = f"config/desired version {version}"
        if set(body) != {"toml"} or not isinstance(body["toml"], str):
            raise ConfigError(f"{source}: body must be {{\"toml\": <the config file's text>}}, "
                              f"not members {', '.join(sorted(body))[:200]}")
        return pushed_config(body["toml"], self._local, source=source)

    def _judged(self, version: int, digest: str, outcome: Outcome, code: str | None, reason: str | None,
                changed: tuple[str, ...]) -> list[Action]:
        """Keep the outcome for ``version`` (the applied version too), then report it."""
        applied = version if outcome == "applied" else self._applied_version
        self._applied_version = applied
        self._last = {"changed": list(changed), "code": code, "outcome": outcome,
                      "reason": None if reason is None else reason[:MAX_REASON], "sha256": digest,
                      "version": version}
        log = logger.info if outcome == "applied" else logger.warning
        log("fleet config device_id=%s version=%d outcome=%s code=%s changed=%s", self.device_id, version,
            outcome, code, ",".join(changed) or "-")
        return [SaveState(self._state()), *self._reported(self._report(version, outcome, code, reason, changed))]

    def _reported(self, report: ConfigReport) -> list[Action]:
        """``report``, then the consent alarm as the running config leaves it."""
        note = {"changed": list(report.consent), "config_version": report.applied_version}
        return [report, consent_alarm(note if report.consent else None)]

    def _report(self, version: int | None, outcome: Outcome, code: str | None, reason: str | None,
                changed: tuple[str, ...]) -> ConfigReport:
        reason = None if reason is None else reason[:MAX_REASON]
        body = {"applied_version": self._applied_version, "changed": list(changed),
                "clock_synced": self._clock.synced(), "code": code, "outcome": outcome,
                "reason": reason, "report": "config", "version": version}
        consent = pushpolicy.consent_keys(self._local, self._config)
        return ConfigReport(config_reported_topic(self.device_id), self._seal(body, version, None),
                            version, outcome, self._applied_version, code, reason, changed, consent)

    # -------------------------------------------------- status and figures --

    def start_session(self) -> Session:
        """The status pair for the next connection (call before each connect)."""
        self._session += 1
        return Session(self._boot, self._session,
                       online=self._status("online"), will=self._status("offline"))

    def on_status(self, payload: bytes) -> Outbound | None:
        """Given this box's retained ``status`` as read back: the online status to publish again, or None.

        Needs read access to the box's own ``status`` topic. A status from an
        older (boot, session) (a late Will) is answered; a newer one means
        another box runs with this device id, which is logged and not fought.
        """
        if self._session == 0:
            return None
        current = (self._boot, self._session)
        try:
            seen = loads(payload, what=f"retained status of {self.device_id}", max_bytes=MAX_FIGURES,
                         max_depth=4)
            pair = (seen["boot"], seen["session"])
            state = seen["state"]
        except (Untrusted, TypeError, KeyError):
            return self._status("online")
        if not all(isinstance(n, int) for n in pair):
            return self._status("online")
        if pair == current and state == "online":
            return None
        if pair > current:
            logger.error("status from a newer session device_id=%s seen_boot=%s seen_session=%s boot=%d "
                         "session=%d: another box may use this device id", self.device_id, pair[0],
                         pair[1], self._boot, self._session)
            return None
        return self._status("online")

    def birth(self, info: BirthInfo) -> Outbound:
        body = {"boot": self._boot, "board": info.board[:64],
                "capabilities": sorted(c[:32] for c in info.capabilities)[:32],
                "clock": self._clock_state(), "config_version": self._applied_version,
                "session": self._session, "software_version": info.software_version[:64],
                "spool": spool_body(info.spool)}
        return Outbound(birth_topic(self.device_id), bounded(body), qos=1, retain=True)

    def telemetry(self, figures: Telemetry) -> Outbound:
        body = {"clock": self._clock_state(), "config_version": self._applied_version,
                "cpu_temp_c": tenths(figures.cpu_temp_c), "far_dbfs": tenths(figures.far_dbfs),
                "last_sync_ms": figures.last_sync_ms, "near_dbfs": tenths(figures.near_dbfs),
                "overruns": figures.overruns, "recording": figures.recording,
                "spool": spool_body(figures.spool), "uptime_s": figures.uptime_s}
        return Outbound(telemetry_topic(self.device_id), bounded(body), qos=0, retain=False)

    def alarm(self, name: str, *, active: bool, detail: str = "") -> Outbound:
        """An alarm raised (``active``) or cleared; retained, so its latest state is what a reader sees.

        ``detail`` is for the operator; it must not hold caller numbers or names.
        """
        if name not in ALARMS:
            raise SyncError(f"alarm {name!r} is not one of {', '.join(ALARMS)}; add it to fleetwire.ALARMS "
                            "and to the fleet tools that read it")
        body = {"active": active, "alarm": name, "boot": self._boot, "clock": self._clock_state(),
                "detail": detail[:500]}
        return Outbound(alarm_topic(self.device_id, name), bounded(body), qos=1, retain=True)

    # -------------------------------------------------------------- helpers --

    def _status(self, state: Literal["online", "offline"]) -> Outbound:
        body = {"boot": self._boot, "clock": self._clock_state(), "session": self._session, "state": state}
        return Outbound(status_topic(self.device_id), bounded(body), qos=1, retain=True)

    def _clock_state(self) -> dict[str, Any]:
        return {"synced": self._clock.synced(), "wall_ms": self._wall_ms()}

    def _wall_ms(self) -> int:
        return round(self._clock.wall() * 1000)

    def _now_ms(self) -> int | None:
        """Wall time for judging expiry, or None while the clock is not synchronised."""
        return self._wall_ms() if self._clock.synced() else None

    def _seal(self, body: dict[str, Any], seq: int | None, nonce: str | None) -> bytes:
        return seal("resp", self.device_id, body, self._key, seq=seq, now_ms=self._wall_ms(),
                    ttl_ms=RESPONSE_TTL_MS, nonce=nonce)

    def _state(self) -> dict[str, Any]:
        return {"config": {"applied_version": self._applied_version, "last": self._last},
                "replay": self._replay.state()}


LIVE_SECTIONS = frozenset({"log"})  # applied at once; every other section is read once, at start


def _cannot_restart(what: str) -> SyncError:
    return SyncError(f"{what}: this box cannot restart itself (not started as the service); restart it by hand")


def _load_config_state(state: Any) -> tuple[int, dict[str, Any] | None]:
    if state is None:
        return 0, None
    fields = {"changed", "code", "outcome", "reason", "sha256", "version"}
    valid = isinstance(state, Mapping) and set(state) == {"applied_version", "last"} \
        and isinstance(state["applied_version"], int) and (
            state["last"] is None or isinstance(state["last"], Mapping) and set(state["last"]) == fields)
    if not valid:
        raise ConfigError("saved fleet config state is not {applied_version: int, last: null | {...}}; "
                          "restore it from a backup, or delete it (the box then accepts any pushed "
                          "config version above 0)")
    return state["applied_version"], None if state["last"] is None else dict(state["last"])
