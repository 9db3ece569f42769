"""The fleet protocol, device side: commands, config, status, birth, telemetry and alarms.

Sans-IO: :class:`FleetAgent` takes what arrived (topic, payload, MQTT v5
response topic and correlation data) and returns what to publish; the module
that owns the paho client does the publishing, and the effects (blink the LED,
play the prompt, restart) are callables the app supplies in :class:`Effects`.
Nothing here starts a thread, sleeps or touches a file; the agent's persisted
state (replay guard, config version) goes through the ``save`` callable it is
given, which must write durably before returning.

Topics, under ``linetap/v1/<device>/``:

=================  =========  ==========  ==========================================
topic              direction  QoS/retain  payload
=================  =========  ==========  ==========================================
status             box →      1, retain   :func:`status_payload`; also the Will
birth              box →      1, retain   :meth:`FleetAgent.birth`, on every connect
telemetry          box →      0           :meth:`FleetAgent.telemetry`
alarm/<name>       box →      1, retain   :meth:`FleetAgent.alarm`: raised or cleared
config/desired     → box      1, retain   envelope kind "config", body {"toml": text}
config/reported    box →      1, retain   envelope kind "resp", body {"report": "config", ...}
cmd/<name>         → box      1           envelope kind "cmd", body {"name", "args"}
resp[/...]         box →      1           envelope kind "resp", to the command's response topic
=================  =========  ==========  ==========================================

Status ordering. Every ``status`` payload carries ``boot`` (the app's boot
counter, persisted, one higher at each start) and ``session`` (one higher at
each connection of this boot). The Will set before connecting says offline
with the same pair as the online status published after connecting. A
consumer keeps, per device, the highest (boot, session) it has seen and
ignores any status with a lower pair: a Will that the broker delivers late,
after the box has reconnected or rebooted, is from an older pair and cannot
mark a live box offline. The retained message may still be that late Will;
a box allowed to read its own ``status`` topic repairs it with
:meth:`FleetAgent.on_status`.

Config. A pushed config is the same TOML as the local file (body
``{"toml": text}``: TOML keeps the file's floats, which canonical JSON does
not carry), validated by the same schema, except that ``[device]`` is the
box's own and may not be pushed. It is laid over the box's local file key by
key: what it leaves out keeps the local value. Its version is the envelope's ``seq``.
Versions only move forward: one not above the last applied or judged is
refused, and the same version delivered again (a retained message after every
reconnect) is answered with the report already given, without applying it
again. A valid document is then judged by :mod:`linetap.sync.pushpolicy`
against the local file: a key the policy refuses rejects the whole document
(code ``policy-refused``, each refused key and why in the reason); each key
that changes is logged with its old and new value (at WARNING for consent and
security keys).

Every payload is read through :func:`linetap.firmware.untrusted.loads`
(bounded size, depth and integers) before anything looks at it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.clock import Clock
from linetap.firmware.config import Config, merge_pushed
from linetap.firmware.errors import ConfigError, LinetapError, SyncError
from linetap.firmware.manifest import canonical, plain
from linetap.firmware.schema import parse_toml
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync import pushpolicy
from linetap.sync.pushpolicy import BoxFacts
from linetap.sync.signed import Envelope, EnvelopeRefused, Malformed, ReplayGuard, StaleVersion, WrongDevice, \
    open_envelope, seal
from linetap.sync.wire import ROOT, check_device_id

logger = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
MAX_CONFIG_BYTES = 64 * 1024
MAX_CORRELATION = 256  # bytes of MQTT correlation data echoed; a longer one is refused
RESPONSE_TTL_MS = 10 * 60 * 1000
MAX_REASON = 1000
MAX_LOG_LINES = 500
MAX_LOG_LINE = 400  # characters kept of each log line
MAX_LOG_BYTES = 64 * 1024  # keeps a logs response well inside one 128 KiB message
MAX_FIGURES = 4096  # status, birth, telemetry and alarm payloads
ALARMS = ("not-recording", "spool-full", "clock-unsynced", "device-missing", "modem-lost", "upload-rejected",
          pushpolicy.CONSENT_ALARM)
MAX_TOML_DEPTH = 8  # tables and arrays nested in a pushed config (the schema has two levels)

Outcome = Literal["applied", "rejected"]
ResponseStatus = Literal["ok", "refused", "failed"]


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


# -------------------------------------------------------------- messages --

@dataclass(frozen=True)
class Message:
    """Something to publish."""

    topic: str
    payload: bytes = field(repr=False)
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Response:
    """The signed answer to one command, for ``topic`` with MQTT v5 ``correlation_data``."""

    topic: str
    payload: bytes = field(repr=False)
    correlation_data: bytes | None
    command: str | None  # None when the command could not be read
    status: ResponseStatus
    code: str | None  # why, when refused or failed
    qos: int = 1


@dataclass(frozen=True)
class ConfigReport:
    """The answer to one ``config/desired`` document, for ``config/reported`` (QoS 1, retained)."""

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
class Session:
    """One connection's status pair: set ``will`` before connecting, publish ``online`` after."""

    boot: int
    session: int
    online: Message
    will: Message


@dataclass(frozen=True)
class SpoolFigures:
    unsynced_recordings: int
    unsynced_bytes: int
    oldest_unsynced_age_s: int | None  # None when nothing is waiting
    free_bytes: int


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


# --------------------------------------------------------------- effects --

@dataclass(frozen=True)
class Effects:
    """What the commands and configs do, supplied by the app.

    Each is called on the thread that called the agent's handler (the MQTT
    link's), so each must return promptly: start the work, do not wait for
    it. A :class:`~linetap.firmware.errors.LinetapError` raised by a command
    effect becomes a ``failed`` response naming it; any other exception
    propagates. ``restart`` must only schedule the restart, so that the
    response is published first.
    """

    ping: Callable[[], Mapping[str, Any]]  # figures for the pong (uptime, recording...)
    identify: Callable[[int], None]  # show the identify LED pattern for this many seconds
    test_announcement: Callable[[], None]  # play the prompt into the line without recording
    sync_now: Callable[[], None]
    logs: Callable[[int], Sequence[str]]  # the last N log lines, oldest first
    purge_synced: Callable[[], int]  # delete synced recordings now; how many went
    restart: Callable[[], None]
    # Make ``new`` live, restarting only the components of these sections; raise if one fails.
    apply_config: Callable[[Config, frozenset[str]], None]
    # Bring back ``old`` after apply_config failed; an error here propagates (the service restarts).
    rollback_config: Callable[[Config], None]


@dataclass(frozen=True)
class IntArg:
    name: str
    low: int
    high: int
    default: int


@dataclass(frozen=True)
class CommandSpec:
    args: tuple[IntArg, ...]
    run: Callable[[Effects, Mapping[str, int]], dict[str, Any]]


def _ping(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    return {"pong": True, "figures": plain(dict(effects.ping()))}


def _identify(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    effects.identify(args["seconds"])
    return {"seconds": args["seconds"]}


def _test_announcement(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    effects.test_announcement()
    return {}


def _sync_now(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    effects.sync_now()
    return {}


def _logs(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    lines = [str(line)[:MAX_LOG_LINE] for line in list(effects.logs(args["lines"]))[-args["lines"]:]]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):  # the newest lines matter most
        size += len(line.encode("utf-8", "replace")) + 3
        if size > MAX_LOG_BYTES:
            break
        kept.append(line)
    kept.reverse()
    return {"lines": kept, "truncated": len(kept) < len(lines)}


def _purge_synced(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    return {"purged": int(effects.purge_synced())}


def _restart(effects: Effects, args: Mapping[str, int]) -> dict[str, Any]:
    effects.restart()
    return {"restarting": True}


COMMANDS: dict[str, CommandSpec] = {
    "ping": CommandSpec((), _ping),
    "identify": CommandSpec((IntArg("seconds", 1, 600, 15),), _identify),
    "test-announcement": CommandSpec((), _test_announcement),
    "sync-now": CommandSpec((), _sync_now),
    "logs": CommandSpec((IntArg("lines", 1, MAX_LOG_LINES, 100),), _logs),
    "purge-synced": CommandSpec((), _purge_synced),
    "restart": CommandSpec((), _restart),
}


def command_body(name: str, **args: int) -> dict[str, Any]:
    """The body of a ``cmd`` envelope (for the sender)."""
    return {"args": dict(args), "name": name}


def config_body(toml_text: str) -> dict[str, Any]:
    """The body of a ``config`` envelope (for the sender): the config file's text."""
    return {"toml": toml_text}


class _Refusal(LinetapError):
    """A readable, signed command the box will not run (unknown name, bad arguments)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


# ----------------------------------------------------------------- agent --

class FleetAgent:
    """The box's side of the fleet protocol. Not thread-safe: call it from one thread.

    ``operator_keys`` maps fingerprints to the operator public keys whose
    commands and configs the box obeys (:func:`~linetap.sync.signed.key_table`).
    ``config`` is the config running now and ``local_config`` the box's own
    file that pushed configs are laid over (default: ``config``); ``state`` is what ``save`` was last
    given (None on a new box); ``boot`` is the app's persisted boot counter. ``facts`` tells the
    push policy where the box's prompt folder is and what it holds unsynced (default: nothing
    known, only the packaged prompts).
    """

    def __init__(self, *, device_id: str, signing_key: Ed25519PrivateKey,
                 operator_keys: Mapping[str, Ed25519PublicKey], clock: Clock, effects: Effects,
                 config: Config, state: Mapping[str, Any] | None,
                 save: Callable[[dict[str, Any]], None], boot: int, local_config: Config | None = None,
                 facts: Callable[[], BoxFacts] | None = None) -> None:
        self.device_id = check_device_id(device_id)
        self._key = signing_key
        self._operator_keys = dict(operator_keys)
        self._clock = clock
        self._effects = effects
        self._config = config
        self._local = local_config or config  # what pushed configs are laid over
        self._facts = facts or BoxFacts
        self._save_state = save
        self._boot = boot
        self._session = 0
        state = state or {}
        self._applied_version, self._last = _load_config_state(state.get("config"))
        self._replay = ReplayGuard(save=self._save_with_replay, state=state.get("replay"))

    @property
    def config(self) -> Config:
        return self._config

    @property
    def config_version(self) -> int:
        """The version of the running config; 0 for the local file."""
        return self._applied_version

    # ------------------------------------------------------------ commands --

    def handle_command(self, topic: str, payload: bytes, response_topic: str | None,
                       correlation_data: bytes | None) -> Response:
        """Verify and run one command; the response is always signed, refusals included.

        The command is recorded as seen (``save``) before its effect runs; an
        error from ``save`` propagates and the command does not run.
        """
        now_ms = self._now_ms()
        reply_to = self._reply_topic(response_topic)
        correlation = correlation_data if correlation_data and len(correlation_data) <= MAX_CORRELATION \
            else None
        name = None
        envelope = None
        try:
            if correlation_data is not None and len(correlation_data) > MAX_CORRELATION:
                raise Malformed(f"correlation data is {len(correlation_data)} bytes, more than "
                                f"{MAX_CORRELATION}; use a shorter request id")
            topic_name = self._command_name(topic)
            envelope = open_envelope(payload, trusted_keys=self._operator_keys, device_id=self.device_id,
                                     kind="cmd", now_ms=now_ms, max_bytes=MAX_COMMAND_BYTES)
            name, raw_args = _command(envelope.body, topic_name)
            self._replay.admit(envelope, now_ms=now_ms)
            spec = COMMANDS.get(name)
            if spec is None:
                raise _Refusal("unknown-command", f"command {name!r} is not one of {', '.join(COMMANDS)}")
            args = _args(name, spec, raw_args)
        except (EnvelopeRefused, _Refusal) as e:
            logger.warning("fleet command refused device_id=%s topic=%s code=%s reason=%s",
                           self.device_id, str(topic)[:200], e.code, str(e)[:MAX_REASON])
            return self._response(reply_to, correlation, envelope, name, "refused", e.code, str(e), None)
        try:
            result = spec.run(self._effects, args)
        except LinetapError as e:
            logger.warning("fleet command failed device_id=%s command=%s seq=%s error=%s",
                           self.device_id, name, envelope.seq, type(e).__name__)
            return self._response(reply_to, correlation, envelope, name, "failed", "effect-failed",
                                  f"{type(e).__name__}: {e}", None)
        logger.info("fleet command done device_id=%s command=%s seq=%s key=%s time_checked=%s",
                    self.device_id, name, envelope.seq, envelope.key_id, envelope.time_checked)
        return self._response(reply_to, correlation, envelope, name, "ok", None, None, result)

    def _command_name(self, topic: str) -> str:
        levels = topic.split("/") if isinstance(topic, str) else []
        if len(levels) != 5 or "/".join(levels[:2]) != ROOT or levels[3] != "cmd" or not levels[4]:
            raise Malformed(f"topic {str(topic)[:200]!r} is not {ROOT}/<device>/cmd/<name>")
        if levels[2] != self.device_id:
            raise WrongDevice(f"command topic {topic[:200]!r} is for device {levels[2][:64]!r}, "
                              f"not {self.device_id!r}")
        return levels[4]

    def _reply_topic(self, response_topic: str | None) -> str:
        """The response topic asked for, if the box may publish there; else its own ``resp``.

        The broker lets a box write only in its own subtree, so a response
        topic elsewhere would be dropped silently.
        """
        own = resp_topic(self.device_id)
        if isinstance(response_topic, str) and (response_topic == own or (
                response_topic.startswith(own + "/") and len(response_topic) <= 512
                and not any(c in response_topic for c in "+#\0"))):
            return response_topic
        return own

    def _response(self, reply_to: str, correlation: bytes | None, envelope: Envelope | None,
                  name: str | None,
                  status: ResponseStatus, code: str | None, reason: str | None,
                  result: dict[str, Any] | None) -> Response:
        body: dict[str, Any] = {"boot": self._boot, "clock_synced": self._clock.synced(),
                                "command": name, "status": status,
                                "time_checked": envelope.time_checked if envelope is not None else False}
        if correlation is not None:
            body["correlation"] = base64.b64encode(correlation).decode("ascii")
        if code is not None:
            body["code"] = code
        if reason is not None:
            body["reason"] = reason[:MAX_REASON]
        if result is not None:
            body["result"] = result
        payload = self._seal(body, envelope.seq if envelope is not None else None,
                             envelope.nonce if envelope is not None else None)
        return Response(reply_to, payload, correlation, name, status, code)

    # -------------------------------------------------------------- config --

    def handle_config(self, payload: bytes) -> ConfigReport:
        """Verify, validate and apply one ``config/desired`` document."""
        now_ms = self._now_ms()
        try:
            envelope = open_envelope(payload, trusted_keys=self._operator_keys, device_id=self.device_id,
                                     kind="config", now_ms=now_ms, max_bytes=MAX_CONFIG_BYTES)
        except EnvelopeRefused as e:
            logger.warning("fleet config refused device_id=%s code=%s reason=%s", self.device_id, e.code,
                           str(e)[:MAX_REASON])
            return self._report(None, "rejected", e.code, str(e), ())
        version = envelope.seq
        # The body, not the envelope: the same document sealed again (new times) is the same version.
        digest = hashlib.sha256(canonical(envelope.body)).hexdigest()
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
        old = self._config
        try:
            new = self._validate(envelope.body, version)
        except ConfigError as e:
            return self._judged(version, digest, "rejected", "invalid-config", str(e), ())
        verdict = pushpolicy.judge(self._local, new, self._facts())
        if verdict.refusals:
            for refusal in verdict.refusals:
                logger.warning("fleet config key refused device_id=%s version=%d %s", self.device_id, version,
                               refusal)
            return self._judged(version, digest, "rejected", "policy-refused",
                                f"config version {version} is refused by this box's push policy: "
                                + "; ".join(verdict.refusals), ())
        changed = frozenset(name for name in Config.model_fields if getattr(old, name) != getattr(new, name))
        if changed:
            try:
                self._effects.apply_config(new, changed)
            except LinetapError as e:
                logger.error("fleet config apply failed device_id=%s version=%d sections=%s error=%s",
                             self.device_id, version, ",".join(sorted(changed)), type(e).__name__)
                self._effects.rollback_config(old)
                return self._judged(version, digest, "rejected", "apply-failed",
                                    f"applying sections {', '.join(sorted(changed))} failed "
                                    f"({type(e).__name__}: {e}); rolled back to version "
                                    f"{self._applied_version}", tuple(sorted(changed)))
        for change in pushpolicy.changes(old, new):
            log = logger.warning if change.rule.guarded else logger.info
            log("fleet config key changed device_id=%s version=%d %s", self.device_id, version, change.shown())
        self._config = new
        return self._judged(version, digest, "applied", None, None, tuple(sorted(changed)))

    def _validate(self, body: Mapping[str, Any], version: int) -> Config:
        source = f"config/desired version {version}"
        if set(body) != {"toml"} or not isinstance(body["toml"], str):
            raise ConfigError(f"{source}: body must be {{\"toml\": <the config file's text>}}, "
                              f"not members {', '.join(sorted(body))[:200]}")
        return pushed_config(body["toml"], self._local, source=source)

    def _judged(self, version: int, digest: str, outcome: Outcome, code: str | None, reason: str | None,
                changed: tuple[str, ...]) -> ConfigReport:
        """Persist the outcome for ``version`` (the applied version too), then report it."""
        applied = version if outcome == "applied" else self._applied_version
        last = {"changed": list(changed), "code": code, "outcome": outcome,
                "reason": None if reason is None else reason[:MAX_REASON], "sha256": digest,
                "version": version}
        self._save_state(self._as_state(applied, last, self._replay.state()))
        self._applied_version, self._last = applied, last
        log = logger.info if outcome == "applied" else logger.warning
        log("fleet config device_id=%s version=%d outcome=%s code=%s changed=%s", self.device_id, version,
            outcome, code, ",".join(changed) or "-")
        return self._report(version, outcome, code, reason, changed)

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

    def on_status(self, payload: bytes) -> Message | None:
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

    def birth(self, info: BirthInfo) -> Message:
        body = {"boot": self._boot, "board": info.board[:64],
                "capabilities": sorted(c[:32] for c in info.capabilities)[:32],
                "clock": self._clock_state(), "config_version": self._applied_version,
                "session": self._session, "software_version": info.software_version[:64],
                "spool": _spool(info.spool)}
        return Message(birth_topic(self.device_id), _bounded(body), qos=1, retain=True)

    def telemetry(self, figures: Telemetry) -> Message:
        body = {"clock": self._clock_state(), "config_version": self._applied_version,
                "cpu_temp_c": _tenths(figures.cpu_temp_c), "far_dbfs": _tenths(figures.far_dbfs),
                "last_sync_ms": figures.last_sync_ms, "near_dbfs": _tenths(figures.near_dbfs),
                "overruns": figures.overruns, "recording": figures.recording,
                "spool": _spool(figures.spool), "uptime_s": figures.uptime_s}
        return Message(telemetry_topic(self.device_id), _bounded(body), qos=0, retain=False)

    def alarm(self, name: str, *, active: bool, detail: str = "") -> Message:
        """An alarm raised (``active``) or cleared; retained, so its latest state is what a reader sees.

        ``detail`` is for the operator; it must not hold caller numbers or names.
        """
        if name not in ALARMS:
            raise SyncError(f"alarm {name!r} is not one of {', '.join(ALARMS)}; add it to fleet.ALARMS "
                            "and to the fleet tools that read it")
        body = {"active": active, "alarm": name, "boot": self._boot, "clock": self._clock_state(),
                "detail": detail[:500]}
        return Message(alarm_topic(self.device_id, name), _bounded(body), qos=1, retain=True)

    # -------------------------------------------------------------- helpers --

    def _status(self, state: Literal["online", "offline"]) -> Message:
        body = {"boot": self._boot, "clock": self._clock_state(), "session": self._session, "state": state}
        return Message(status_topic(self.device_id), _bounded(body), qos=1, retain=True)

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

    def _save_with_replay(self, replay: dict[str, Any]) -> None:
        self._save_state(self._as_state(self._applied_version, self._last, replay))

    @staticmethod
    def _as_state(applied: int, last: dict[str, Any] | None, replay: dict[str, Any]) -> dict[str, Any]:
        return {"config": {"applied_version": applied, "last": last}, "replay": replay}


def pushed_config(text: str, local: Config, *, source: str) -> Config:
    """A pushed config's TOML laid over the box's local config, validated as the box runs it.

    See :func:`linetap.firmware.config.merge_pushed`; the centre checks with
    the defaults as the local config before pushing.
    """
    return merge_pushed(local, _bounded_toml(text, source), source=source)


def _bounded_toml(text: str, source: str) -> dict[str, Any]:
    """``text`` parsed as TOML; nesting or an integer out of bounds is a ConfigError, not a crash.

    Brackets are counted before parsing (inside strings too: a config needs few), so a document
    nested thousands deep is refused without recursing.
    """
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    if deepest > MAX_TOML_DEPTH:
        raise ConfigError(f"{source}: nests tables or arrays {deepest} deep, more than {MAX_TOML_DEPTH}; "
                          "a config has sections of keys")
    try:
        data = parse_toml(text, source=source)
    except ConfigError:
        raise
    except (ValueError, RecursionError) as e:  # tomllib hands an over-long integer to int(), which refuses it
        raise ConfigError(f"{source}: holds a value out of bounds ({str(e)[:80]})") from None
    if _depth(data) > MAX_TOML_DEPTH:
        raise ConfigError(f"{source}: nests tables deeper than {MAX_TOML_DEPTH} levels; a config has "
                          "sections of keys")
    return data


def _depth(value: Any) -> int:
    """How deeply ``value``'s tables and arrays nest (dotted keys nest too), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_TOML_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _command(body: Mapping[str, Any], topic_name: str) -> tuple[str, Mapping[str, Any]]:
    if (set(body) != {"name", "args"} or not isinstance(body["name"], str)
            or not isinstance(body["args"], dict)):
        raise Malformed("command body must be {\"name\": text, \"args\": {...}}")
    if body["name"] != topic_name:
        raise Malformed(f"command published on cmd/{topic_name[:64]} is signed as {body['name'][:64]!r}; "
                        "publish it on its own topic")
    return body["name"], body["args"]


def _args(name: str, spec: CommandSpec, raw: Mapping[str, Any]) -> dict[str, int]:
    allowed = {arg.name: arg for arg in spec.args}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise _Refusal("bad-args", f"{name}: unknown argument {unknown[0][:40]!r} (accepted: {accepted})")
    args = {}
    for arg in spec.args:
        value = raw.get(arg.name, arg.default)
        if not isinstance(value, int) or isinstance(value, bool) or not arg.low <= value <= arg.high:
            raise _Refusal("bad-args", f"{name}: {arg.name} = {str(value)[:40]!r} must be a whole number "
                                       f"from {arg.low} to {arg.high}")
        args[arg.name] = value
    return args


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


def _spool(figures: SpoolFigures) -> dict[str, Any]:
    return {"free_bytes": figures.free_bytes, "oldest_unsynced_age_s": figures.oldest_unsynced_age_s,
            "unsynced_bytes": figures.unsynced_bytes, "unsynced_recordings": figures.unsynced_recordings}


def _tenths(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _bounded(body: Mapping[str, Any]) -> bytes:
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_FIGURES:
        raise SyncError(f"fleet payload is {len(data)} bytes, more than {MAX_FIGURES}; "
                        "a field grew without a bound")
    return data
