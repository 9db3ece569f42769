"""The box's whole fleet connection: one MQTT link, the uploader and the fleet agent on it.

One :class:`~linetap.sync.link.Link` (one TLS session, one client
certificate) carries every message of the box. :class:`BoxSync` owns it, the
:class:`~linetap.sync.uploader.Uploader` and a
:class:`~linetap.sync.fleet.FleetAgent`, and routes what arrives by topic:
``ack/...`` to the uploader, ``cmd/...`` and ``config/desired`` to the agent.

On every connect it publishes ``status`` online and ``birth`` (retained) and
the alarms that are raised; the Will it set says offline with the same
(boot, session) pair. The boot counter is one higher at each start
(``<data>/fleet/boot``); every connection of one boot uses the same session,
because the link sets its Will once. Mosquitto publishes no Will when a box
takes its own session over on reconnecting, so a late Will cannot follow the
online status there.

Telemetry goes out every ``sync.telemetry_s`` on the injected clock; alarms
go out as they happen (retained, raised or cleared).

Config. A pushed config is judged by the agent; :meth:`BoxSync` then keeps
its text in ``<data>/config/pushed.toml`` (:class:`PushedConfig`). What
applies live and what restarts:

- live: ``[log]`` (the level of the ``linetap`` loggers);
- restart: every other section (``audio``, ``controls``, ``consent``,
  ``calls``, ``spool``, ``sync``): they are read once by drivers, the call
  flow, the spool or the link. Before asking for the restart the app checks
  what it can without touching devices (prompts load, board profile reads);
  a failure there is ``rejected`` at once and nothing changes. After the
  restart the pushed config is on trial: if the drivers fail to start with
  it, the app rolls back to the config before it and the box reports that
  version ``rejected`` (code ``apply-failed``) on ``config/reported``.

A restart ends a call in progress as a hang-up would: what was recorded
up to then is kept.

Push policy. The agent judges each push against the local file with
:mod:`linetap.sync.pushpolicy` (the prompt folder is ``<data>/prompts``; the
unsynced bytes come from the spool), and :meth:`PushedConfig.overlay` judges
the kept document again at every start, against the local file as it is
then: a document the policy now refuses is rolled back like one the drivers
fail with. While consent keys differ from the local file, the
``consent-changed`` alarm is raised (and published, raised or cleared, on
every connect) and the app notes them in every recording's events.

Every file and payload this module reads (``fleet/state.json``,
``config/pushed.json``, the config envelope) goes through
:func:`linetap.firmware.untrusted.loads`.

Threads. The link's thread runs the link callbacks: routing, the agent's
handlers and their effects, which only start work (``purge-synced`` deletes
files there, bounded by the spool). The ``fleet`` thread publishes telemetry
and watches the clock and the spool for alarms. The uploader has its own
thread. :meth:`BoxSync.alarm` may be called from any thread.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware import __version__
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.durable import remove_durably, write_durably
from linetap.firmware.errors import ConfigError, DeviceMissing, SyncError
from linetap.firmware.keys import OPERATOR_HINT, load_operator_keys, load_signing_key
from linetap.firmware.spool import Spool
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync import fleet, pushpolicy
from linetap.sync.fleet import BirthInfo, Effects, FleetAgent, SpoolFigures, Telemetry
from linetap.sync.link import Link, Message, Will
from linetap.sync.signed import MAX_DEPTH, key_table
from linetap.sync.uploader import Uploader, with_overdue_acks

logger = logging.getLogger(__name__)

FLEET_DIR = "fleet"
BOOT_FILE = "boot"
STATE_FILE = "state.json"
CONFIG_DIR = "config"
PUSHED_TOML = "pushed.toml"
PUSHED_STATE = "pushed.json"
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
LIVE_SECTIONS = frozenset({"log"})
MAX_STATE_BYTES = 1024 * 1024  # fleet/state.json and config/pushed.json (which keeps two pushed documents)
LOG_LINES = fleet.MAX_LOG_LINES
_TICK_S = 0.25  # how often the fleet thread looks at its clock
_JOIN_S = 5.0


@dataclass(frozen=True)
class AudioFigures:
    recording: bool
    near_dbfs: float | None
    far_dbfs: float | None
    overruns: int


@dataclass(frozen=True)
class AppHooks:
    """What only the app can do. A hook left None makes its command fail, naming what is missing.

    Each is called on the link thread and must return promptly.
    """

    identify: Callable[[int], None] | None = None  # show the identify pattern for this many seconds
    test_announcement: Callable[[], None] | None = None  # play the prompt into the line, not recording
    restart: Callable[[str], None] | None = None  # stop the service with this reason; systemd restarts it
    audio: Callable[[], AudioFigures] | None = None
    # Raise a LinetapError if ``config`` could not start (prompts, board profile); touches no device.
    check_config: Callable[[Config], None] | None = None


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


# ----------------------------------------------------------- pushed config --

class PushedConfig:
    """The config the fleet pushed, kept under ``<data>/config/``.

    ``pushed.toml`` is the document in effect (the operator's text; the box
    overlays it on the local file with :func:`overlay_config`);
    ``pushed.json`` holds its version and sha256, the document before it
    (for a rollback), whether it is still on trial (not yet started with
    since a restart was asked for) and a rejection the fleet agent has not
    been told of yet. ``pushed.json`` is written first: a ``pushed.toml``
    whose hash does not match it was cut short and is rolled back.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.folder = Path(data_dir) / CONFIG_DIR
        self.toml_path = self.folder / PUSHED_TOML
        self.state_path = self.folder / PUSHED_STATE
        self._overlay_failed = False

    def state(self) -> dict[str, Any] | None:
        try:
            state = loads(self.state_path.read_bytes(), what=str(self.state_path), max_bytes=MAX_STATE_BYTES,
                          max_depth=4)
        except FileNotFoundError:
            return None
        except Untrusted as e:
            raise ConfigError(f"{e}; delete it and {PUSHED_TOML} to run on the local config, then push the "
                              "config again") from None
        if not _pushed_state_ok(state):
            raise ConfigError(f"{self.state_path} is not {{version, sha256, trial, previous, rejected}} as this "
                              f"box writes it; delete it and {PUSHED_TOML} to run on the local config, then "
                              "push the config again")
        return state

    @property
    def version(self) -> int:
        state = self.state()
        return 0 if state is None else state["version"]

    @property
    def on_trial(self) -> bool:
        """True while a start-up failure should roll the pushed config back rather than stop the box."""
        state = self.state()
        return self._overlay_failed or (state is not None and state["trial"])

    def overlay(self, local: Config) -> Config:
        """The config to run: ``local``, with the pushed document over it if there is one."""
        state = self.state()
        if state is None or state["sha256"] is None:
            return local
        try:
            data = self.toml_path.read_bytes()
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).hexdigest() != state["sha256"]:
            self._overlay_failed = True
            raise ConfigError(f"{self.toml_path} does not match the version {state['version']} recorded in "
                              f"{self.state_path}: writing it was cut short")
        try:
            return self._merge(local, data.decode("utf-8", errors="replace"), state["version"])
        except ConfigError:
            self._overlay_failed = True
            raise

    def _merge(self, local: Config, text: str, version: int) -> Config:
        """``text`` laid over ``local`` and judged by the push policy as at the push; ConfigError if not."""
        source = f"{self.toml_path} (version {version})"
        merged = fleet.pushed_config(text, local, source=source)
        verdict = pushpolicy.judge(local, merged, pushpolicy.BoxFacts(data_dir=self.data_dir))
        if verdict.refusals:
            raise ConfigError(f"{source} is refused by this box's push policy against its own file: "
                              + "; ".join(verdict.refusals))
        logger.info("pushed config overlaid source=%s", self.toml_path)
        return merged

    def save(self, version: int, text: str, *, trial: bool) -> dict[str, Any] | None:
        """Make ``text`` the pushed config; returns the state before, for :meth:`restore`."""
        before = self.state()
        previous = None if before is None else {"version": before["version"], "toml": self._text(before)}
        data = text.encode("utf-8")
        self._write({"previous": previous, "rejected": None, "sha256": hashlib.sha256(data).hexdigest(),
                     "trial": trial, "version": version})
        write_durably(self.toml_path, data)
        return before

    def restore(self, before: dict[str, Any] | None, text: str | None) -> None:
        """Undo :meth:`save`: ``before`` and ``text`` are the state and document it replaced."""
        if before is None:
            remove_durably(self.state_path)
            remove_durably(self.toml_path)
            return
        self._write(before)
        self._write_text(text)

    def text(self) -> str | None:
        state = self.state()
        return None if state is None else self._text(state)

    def confirm(self) -> None:
        """The drivers started with the pushed config: it is no longer on trial."""
        state = self.state()
        if state is not None and state["trial"]:
            self._write({**state, "trial": False})
            logger.info("pushed config confirmed version=%d", state["version"])

    def roll_back(self, local: Config, reason: str) -> Config:
        """Go back to the config before the pushed one, remember why, and return it."""
        state = self.state()
        failed = 0 if state is None else state["version"]
        previous = None if state is None else state["previous"]
        text = None if previous is None else previous["toml"]
        self._write({"previous": None, "rejected": {"reason": reason, "version": failed},
                     "sha256": None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest(),
                     "trial": False, "version": 0 if previous is None else previous["version"]})
        self._write_text(text)
        self._overlay_failed = False
        logger.error("pushed config rolled back version=%d back_to=%d reason=%s", failed,
                     self.version, reason)
        if text is None:
            return local
        try:
            return self._merge(local, text, self.version)
        except ConfigError as e:  # the one before fails too (the local file changed since): local alone
            self._write({"previous": None, "rejected": {"reason": reason, "version": failed}, "sha256": None,
                         "trial": False, "version": 0})
            self._write_text(None)
            logger.error("pushed config rolled back to the local file version=%d reason=%s", failed, e)
            return local

    def take_rejection(self) -> dict[str, Any] | None:
        """A rollback's ``{"version", "reason"}`` not yet reported; cleared once taken."""
        state = self.state()
        if state is None or state["rejected"] is None:
            return None
        self._write({**state, "rejected": None})
        return state["rejected"]

    def _text(self, state: dict[str, Any]) -> str | None:
        if state["sha256"] is None:
            return None
        return self.toml_path.read_text(encoding="utf-8")

    def _write(self, state: dict[str, Any]) -> None:
        write_durably(self.state_path, json.dumps(state, sort_keys=True, indent=1).encode("utf-8"))

    def _write_text(self, text: str | None) -> None:
        if text is None:
            remove_durably(self.toml_path)
        else:
            write_durably(self.toml_path, text.encode("utf-8"))


# ---------------------------------------------------------------- the logs --

class RecentLog(logging.Handler):
    """The last ``capacity`` log records as single lines, for the ``logs`` command.

    The project's loggers never log keys, audio or caller numbers at INFO,
    so nothing here needs filtering; lines are cut to the fleet's limit.
    """

    def __init__(self, capacity: int = LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record).replace("\n", " | ")
        self._lines.append(line[:fleet.MAX_LOG_LINE])

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


# ------------------------------------------------------------------ BoxSync --

class BoxSync:
    """Link, uploader and fleet agent for one box. Context manager; :meth:`close` is safe twice.

    ``on_alarm(kind, detail)`` is also told of the uploader's alarms (uploader
    thread). ``hooks`` are the app's effects (:class:`AppHooks`); without
    them the commands that need the app fail with a signed ``failed``
    response. ``config`` is the config running now (local file and pushed
    overlay); ``local_config`` the local file alone, which a pushed config is
    laid over (default: ``config``).
    """

    def __init__(self, config: Config, spool: Spool, data_dir: Path, *, clock: Clock,
                 on_alarm: Callable[[str, str], None] | None = None, hooks: AppHooks | None = None,
                 thermal_path: Path = THERMAL_ZONE, software_version: str = __version__,
                 local_config: Config | None = None) -> None:
        self._config = config
        self._local_config = local_config or config
        self._spool = spool
        self._data_dir = Path(data_dir)
        self._clock = clock
        self._on_alarm = on_alarm
        self._hooks = hooks or AppHooks()
        self._thermal_path = thermal_path
        self._software_version = software_version
        self._pushed = PushedConfig(self._data_dir)
        self._state_path = self._data_dir / FLEET_DIR / STATE_FILE
        self._agent_lock = threading.RLock()
        self._alarms: dict[str, bool] = {}
        self._after_reply: Callable[[], None] | None = None
        self._incoming: tuple[int, str] | None = None  # version and text of the config being judged
        self._restore: tuple[dict[str, Any] | None, str | None] | None = None
        self._started_at = clock.monotonic()
        self._next_telemetry = self._started_at + config.sync.telemetry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recent_log = RecentLog()

        operators = load_operator_keys(self._data_dir)
        if not operators:
            logger.warning("fleet commands and config refused device_id=%s reason=no operator key; %s",
                           config.device.id, OPERATOR_HINT)
        self.boot = next_boot(self._data_dir)
        self.agent = FleetAgent(device_id=config.device.id, signing_key=load_signing_key(self._data_dir),
                                operator_keys=key_table(operators), clock=clock, effects=self._effects(),
                                config=config, state=self._load_state(), save=self._save_state,
                                boot=self.boot, local_config=self._local_config, facts=self._facts)
        # Raised or cleared on the first connect: a restart may have brought consent back to the local file.
        self._alarm_details: dict[str, str] = {}
        self._consent_alarm(pushpolicy.consent_note(self._local_config, config, self.agent.config_version),
                            publish=False)
        self._session = self.agent.start_session()
        will = self._session.will
        self.link = Link(config.sync, client_id=config.device.id, data_dir=self._data_dir, clock=clock,
                         will=Will(will.topic, will.payload, will.qos, will.retain),
                         on_connected=self._connected, on_disconnected=self._disconnected,
                         on_message=self._message)
        self.uploader = Uploader(spool, self.link, config.sync, clock=clock, on_alarm=self._upload_alarm)
        device = config.device.id
        self.link.subscribe(fleet.device_topic(device, "cmd", "#"), qos=1)
        self.link.subscribe(fleet.config_desired_topic(device), qos=1)

    # -- life cycle --

    def start(self) -> BoxSync:
        if self._thread is None:
            logging.getLogger("linetap").addHandler(self.recent_log)
            self.uploader.start()
            self.link.start()
            self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        try:
            if thread is not None:
                thread.join(_JOIN_S)
                if thread.is_alive():
                    raise SyncError(f"fleet thread did not stop within {_JOIN_S:.0f} s")
            self.uploader.close()
        finally:
            self.link.close()
            logging.getLogger("linetap").removeHandler(self.recent_log)

    def __enter__(self) -> BoxSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the app's calls (any thread) --

    def notify(self) -> None:
        """A recording has closed: upload it without waiting for the next rescan."""
        self.uploader.notify()

    def status(self) -> dict[str, Any]:
        return self.uploader.status()

    def alarm(self, name: str, active: bool, detail: str = "") -> None:
        """Raise or clear alarm ``name`` (one of :data:`fleet.ALARMS`); published only when it changes.

        ``detail`` is for the operator and must hold no caller numbers or names.
        """
        with self._agent_lock:
            if self._alarms.get(name, False) == active:
                return
            message = self.agent.alarm(name, active=active, detail=detail)
            self._alarms[name] = active
            self._alarm_details[name] = detail
        log = logger.warning if active else logger.info
        log("fleet alarm name=%s active=%s detail=%s", name, active, detail)
        self._publish(message)

    def tick(self) -> None:
        """Telemetry when due, and the alarms read from the clock and the spool (the fleet thread)."""
        self.alarm("clock-unsynced", not self._clock.synced(),
                   "" if self._clock.synced() else "wall clock not synchronised (NTP): timestamps provisional")
        fault = self._spool.fault
        self.alarm("spool-full", fault is not None, fault or "")
        now = self._clock.monotonic()
        if now >= self._next_telemetry:
            self._next_telemetry = max(self._next_telemetry + self._config.sync.telemetry_s, now)
            self.publish_telemetry()

    def publish_telemetry(self) -> None:
        upload = self.uploader.status()
        audio = self._hooks.audio() if self._hooks.audio is not None else None
        last_sync = upload["last_sync_wall"]
        oldest = upload["oldest_age_s"]
        figures = Telemetry(
            uptime_s=int(self._clock.monotonic() - self._started_at),
            spool=SpoolFigures(upload["backlog_recordings"], upload["backlog_bytes"],
                               None if oldest is None else int(oldest), self._spool.status()["free_bytes"]),
            last_sync_ms=None if last_sync is None else round(last_sync * 1000),
            recording=audio.recording if audio else False,
            near_dbfs=audio.near_dbfs if audio else None, far_dbfs=audio.far_dbfs if audio else None,
            overruns=audio.overruns if audio else 0, cpu_temp_c=cpu_temperature(self._thermal_path))
        with self._agent_lock:
            message = self.agent.telemetry(figures)
        self._publish(with_overdue_acks(message, upload))

    # -- the fleet thread --

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.tick()

    # -- link callbacks (link thread) --

    def _connected(self) -> None:
        self.uploader.on_connected()
        status = self.spool_status()
        with self._agent_lock:
            birth = self.agent.birth(BirthInfo(self._software_version, self._config.device.board,
                                               self._capabilities(), status))
            alarms = [self.agent.alarm(name, active=on, detail=self._alarm_details.get(name, ""))
                      for name, on in self._alarms.items() if on or name == pushpolicy.CONSENT_ALARM]
        self._publish(self._session.online)
        self._publish(birth)
        for message in alarms:  # a broker that lost its retained messages learns them again
            self._publish(message)

    def _disconnected(self, reason: str) -> None:
        self.uploader.on_disconnected(reason)

    def _message(self, message: Message) -> None:
        device = self._config.device.id
        if message.topic.startswith(fleet.device_topic(device, "cmd") + "/"):
            self._command(message)
        elif message.topic == fleet.config_desired_topic(device):
            self._desired_config(message)
        else:
            self.uploader.on_message(message)

    def _command(self, message: Message) -> None:
        with self._agent_lock:
            self._after_reply = None
            response = self.agent.handle_command(message.topic, message.payload, message.response_topic,
                                                 message.correlation_data)
            then, self._after_reply = self._after_reply, None
        delivery = self.link.publish(response.topic, response.payload, qos=response.qos,
                                     correlation_data=response.correlation_data)
        if then is not None:
            delivery.add_done_callback(lambda _delivery: then())

    def _desired_config(self, message: Message) -> None:
        if not message.payload:
            logger.info("fleet desired config cleared by the operator; the config in effect stays")
            return
        with self._agent_lock:
            self._incoming = _version_and_text(message.payload)
            self._after_reply = None
            try:
                report = self.agent.handle_config(message.payload)
            finally:
                self._incoming, self._restore = None, None
            then, self._after_reply = self._after_reply, None
        delivery = self.link.publish(report.topic, report.payload, qos=report.qos, retain=report.retain)
        self._consent_alarm(None if not report.consent else
                            {"changed": list(report.consent), "config_version": report.applied_version})
        if then is not None:
            delivery.add_done_callback(lambda _delivery: then())

    def _consent_alarm(self, note: dict[str, Any] | None, *, publish: bool = True) -> None:
        """Raise ``consent-changed`` while pushed consent keys differ from the local file; else clear it.

        ``publish`` False only sets the state, which the next connect publishes.
        """
        name = pushpolicy.CONSENT_ALARM
        detail = "" if note is None else (f"config version {note['config_version']} changes consent from the "
                                          "box's own file: " + ", ".join(note["changed"]))
        if publish:
            self.alarm(name, note is not None, detail)
            return
        with self._agent_lock:
            self._alarms[name], self._alarm_details[name] = note is not None, detail

    def _facts(self) -> pushpolicy.BoxFacts:
        """What the push policy asks of this box (link thread)."""
        by_state = self._spool.status()["by_state"]
        unsynced = sum(figures["bytes"] for state, figures in by_state.items() if state != "synced")
        return pushpolicy.BoxFacts(data_dir=self._data_dir, unsynced_bytes=unsynced)

    def _upload_alarm(self, kind: str, detail: str) -> None:
        if kind in fleet.ALARMS:
            self.alarm(kind, True, detail)
        else:
            logger.error("alarm not in the fleet's vocabulary, not published alarm=%s detail=%s", kind, detail)
        if self._on_alarm is not None:
            self._on_alarm(kind, detail)

    # -- figures --

    def spool_status(self) -> SpoolFigures:
        status = self._spool.status()
        closed = status["by_state"].get("closed", {"recordings": 0, "bytes": 0})
        oldest = self.uploader.status()["oldest_age_s"]
        return SpoolFigures(closed["recordings"], closed["bytes"], None if oldest is None else int(oldest),
                            status["free_bytes"])

    def _capabilities(self) -> tuple[str, ...]:
        caps = ["sync"]
        if self._hooks.identify is not None:
            caps.append("identify")
        if self._hooks.test_announcement is not None:
            caps.append("test-announcement")
        if self._hooks.restart is not None:
            caps.append("restart")
        if self._config.consent.opt_out_key:
            caps.append("opt-out")
        return tuple(caps)

    def _publish(self, message: fleet.Message) -> None:
        self.link.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    # -- the agent's persisted state --

    def _load_state(self) -> dict[str, Any] | None:
        try:
            state = loads(self._state_path.read_bytes(), what=f"fleet state {self._state_path}",
                          max_bytes=MAX_STATE_BYTES, max_depth=6)
        except FileNotFoundError:
            state = None
        except Untrusted as e:
            raise ConfigError(f"{e}; restore it from a backup or delete it (commands seen before are then "
                              "accepted again until they expire)") from None
        rejection = self._pushed.take_rejection()
        if rejection is not None and state is not None:
            state = _rejected_after_restart(state, rejection, self._pushed.version)
            self._save_state(state)
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        write_durably(self._state_path, json.dumps(state, sort_keys=True).encode("utf-8"), mode=0o600)

    # -- effects (link thread, under the agent lock) --

    def _effects(self) -> Effects:
        return Effects(ping=self._ping, identify=self._identify, test_announcement=self._test_announcement,
                       sync_now=lambda: self.uploader.sync_now(), logs=self.recent_log.lines,
                       purge_synced=lambda: len(self._spool.purge_synced()), restart=self._restart_command,
                       apply_config=self._apply_config, rollback_config=self._rollback_config)

    def _ping(self) -> dict[str, Any]:
        upload = self.uploader.status()
        audio = self._hooks.audio() if self._hooks.audio is not None else None
        return {"backlog_recordings": upload["backlog_recordings"], "boot": self.boot,
                "recording": audio.recording if audio else False,
                "uptime_s": int(self._clock.monotonic() - self._started_at)}

    def _identify(self, seconds: int) -> None:
        if self._hooks.identify is None:
            raise DeviceMissing("identify: this box runs without an LED panel (not started as the service)")
        self._hooks.identify(seconds)

    def _test_announcement(self) -> None:
        if self._hooks.test_announcement is None:
            raise DeviceMissing("test-announcement: this box runs without a line output "
                                "(not started as the service)")
        self._hooks.test_announcement()

    def _restart_command(self) -> None:
        restart = self._restart_hook("restart")
        self._after_reply = lambda: restart("restart requested by the fleet")

    def _restart_hook(self, what: str) -> Callable[[str], None]:
        if self._hooks.restart is None:
            raise SyncError(f"{what}: this box cannot restart itself (not started as the service); "
                            "restart it by hand")
        return self._hooks.restart

    def _apply_config(self, new: Config, changed: frozenset[str]) -> None:
        if self._incoming is None:
            raise SyncError("a config was applied with no pushed document in hand")
        version, text = self._incoming
        needs_restart = sorted(changed - LIVE_SECTIONS)
        restart = self._restart_hook(f"sections {', '.join(needs_restart)}") if needs_restart else None
        if needs_restart and self._hooks.check_config is not None:
            self._hooks.check_config(new)
        try:
            before_text = self._pushed.text()
            before = self._pushed.save(version, text, trial=bool(needs_restart))
        except OSError as e:
            raise ConfigError(f"cannot keep pushed config version {version} under {self._pushed.folder}: "
                              f"{e.strerror}") from e
        self._restore = (before, before_text)
        if "log" in changed:
            set_log_level(new.log.level)
        if restart is None:
            self._config = new
        else:
            reason = f"config version {version} changes {', '.join(needs_restart)}"
            self._after_reply = lambda: restart(reason)
            logger.warning("fleet config needs a restart version=%d sections=%s", version,
                           ",".join(needs_restart))

    def _rollback_config(self, old: Config) -> None:
        if self._restore is not None:
            before, text = self._restore
            self._pushed.restore(before, text)
        set_log_level(old.log.level)
        self._config = old
        self._after_reply = None


def _version_and_text(payload: bytes) -> tuple[int, str] | None:
    """The version and TOML text of a config envelope, if it has them (the agent verifies it)."""
    try:
        envelope = loads(payload, what="config envelope", max_bytes=fleet.MAX_CONFIG_BYTES,
                         max_depth=MAX_DEPTH)
        version, text = envelope["seq"], envelope["body"]["toml"]
    except (Untrusted, TypeError, KeyError):
        return None
    if isinstance(version, int) and isinstance(text, str):
        return version, text
    return None


def _pushed_state_ok(state: Any) -> bool:
    """``pushed.json`` as :class:`PushedConfig` writes it."""
    if not isinstance(state, dict) or set(state) != {"previous", "rejected", "sha256", "trial", "version"}:
        return False
    previous, rejected = state["previous"], state["rejected"]
    return (isinstance(state["version"], int) and isinstance(state["trial"], bool)
            and (state["sha256"] is None or isinstance(state["sha256"], str))
            and (previous is None or isinstance(previous, dict) and set(previous) == {"toml", "version"}
                 and isinstance(previous["version"], int) and (previous["toml"] is None
                                                                or isinstance(previous["toml"], str)))
            and (rejected is None or isinstance(rejected, dict) and set(rejected) == {"reason", "version"}
                 and isinstance(rejected["reason"], str) and isinstance(rejected["version"], int)))


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
                       f"({rejection['reason']}); rolled back to version {back_to}")[:fleet.MAX_REASON]}
    return {**state, "config": {"applied_version": back_to, "last": last}}


__all__ = ["AppHooks", "AudioFigures", "BoxSync", "PushedConfig", "RecentLog", "cpu_temperature", "next_boot",
           "set_log_level"]
