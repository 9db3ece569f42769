"""The box's whole fleet connection: one MQTT link, the uploader, and the fleet agent's actions run.

One :class:`~linetap.sync.link.Link` (one TLS session, one client
certificate) carries every message of the box. :class:`BoxSync` owns it, the
:class:`~linetap.sync.uploader.Uploader` and a
:class:`~linetap.sync.fleet.FleetAgent`, and routes what arrives by topic:
``ack/...`` to the uploader, ``cmd/...`` and ``config/desired`` to the agent,
whose actions it then executes in order (:meth:`BoxSync._execute`): the
agent decides, this module does the I/O.

Updates: ``update/offer`` and ``update/chunk`` go to the
:class:`~linetap.sync.updater.Updater` (its own thread), which fetches only
while the uploader has nothing pending and switches only when the app's
``line_busy`` hook says no call is up.

On every connect it publishes ``status`` online and ``birth`` (retained) and
the alarms that are raised; the Will it set says offline with the same
(boot, session) pair. The boot counter is one higher at each start
(``<data>/fleet/boot``); every connection of one boot uses the same session,
because the link sets its Will once. Mosquitto publishes no Will when a box
takes its own session over on reconnecting, so a late Will cannot follow the
online status there.

Telemetry goes out every ``sync.telemetry_s`` on the injected clock; alarms
go out as they happen (retained, raised or cleared).

Config. A pushed config is judged by the agent; its ``ApplyConfig`` action
then keeps its text in ``<data>/config/pushed.toml``
(:class:`~linetap.sync.pushedconfig.PushedConfig`). What
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
unsynced bytes come from the spool), and ``PushedConfig.overlay`` judges
the kept document again at every start, against the local file as it is
then: a document the policy now refuses is rolled back like one the drivers
fail with. While consent keys differ from the local file, the
``consent-changed`` alarm is raised (and published, raised or cleared, on
every connect) and the app notes them in every recording's events.

Threads. The link's thread runs the link callbacks: routing, the agent's
handlers and their actions, which only start work (``purge-synced`` deletes
files there, bounded by the spool). The ``fleet`` thread publishes telemetry
and watches the clock and the spool for alarms. The uploader has its own
thread. :meth:`BoxSync.alarm` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware import __version__
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.errors import ConfigError, DeviceMissing, LinetapError, SyncError
from linetap.firmware.keys import OPERATOR_HINT, load_operator_keys, load_signing_key, load_store_keys
from linetap.firmware.spool import Spool
from linetap.sync import fleet, fleetcommands, fleetwire, pushpolicy
from linetap.sync.boxstate import THERMAL_ZONE, RecentLog, cpu_temperature, load_agent_state, next_boot, \
    save_agent_state, set_log_level
from linetap.sync.fleet import Action, FleetAgent
from linetap.sync.fleetwire import BirthInfo, SpoolFigures, Telemetry
from linetap.sync.link import Delivery, Link
from linetap.sync.mqtt import Inbound, Will
from linetap.sync.pushedconfig import PushedConfig
from linetap.sync.signed import key_table
from linetap.sync.uploader import Uploader, with_overdue_acks
from linetap.sync.updater import Updater, app_root_path

logger = logging.getLogger(__name__)

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
    line_busy: Callable[[], bool] | None = None  # a call is up or starting: an update does not switch now
    # Stop the service (to be restarted) if no call is up, judged where calls are: True when it stops.
    stop_if_idle: Callable[[str], bool] | None = None


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
                 local_config: Config | None = None, app_root: Path | None = None) -> None:
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
        self._agent_lock = threading.RLock()
        self._alarms: dict[str, bool] = {}
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
                                operator_keys=key_table(operators), clock=clock, config=config,
                                state=load_agent_state(self._data_dir, self._pushed), boot=self.boot,
                                local_config=self._local_config, can_restart=self._hooks.restart is not None)
        # Raised or cleared on the first connect: a restart may have brought consent back to the local file.
        consent = fleet.consent_alarm(pushpolicy.consent_note(self._local_config, config,
                                                              self.agent.config_version))
        self._alarms[consent.name] = consent.active
        self._alarm_details: dict[str, str] = {consent.name: consent.detail}
        self._session = self.agent.start_session()
        will = self._session.will
        self.link = Link(config.sync, client_id=config.device.id, data_dir=self._data_dir, clock=clock,
                         will=Will(will.topic, will.payload, will.qos, will.retain),
                         on_connected=self._connected, on_disconnected=self._disconnected,
                         on_message=self._message)
        self.uploader = Uploader(spool, self.link, config.sync, clock=clock, on_alarm=self._upload_alarm,
                                 trusted=load_store_keys(self._data_dir))
        self.updater = Updater(config, self.link, self._data_dir, clock=clock, app_root=app_root or app_root_path(),
                               uploads_pending=self._uploads_pending, line_busy=self._hooks.line_busy,
                               stop_service=self._hooks.restart, stop_if_idle=self._hooks.stop_if_idle,
                               current=software_version)
        device = config.device.id
        self.link.subscribe(fleetwire.device_topic(device, "cmd", "#"), qos=1)
        self.link.subscribe(fleetwire.config_desired_topic(device), qos=1)

    # -- life cycle --

    def start(self) -> BoxSync:
        if self._thread is None:
            logging.getLogger("linetap").addHandler(self.recent_log)
            self.uploader.start()
            self.updater.start()
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
            self.updater.close()
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
        """Raise or clear alarm ``name`` (one of :data:`fleetwire.ALARMS`); published only when it changes.

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
        spool = self._spool.status()
        figures = Telemetry(
            uptime_s=int(self._clock.monotonic() - self._started_at),
            spool=SpoolFigures(upload["backlog_recordings"], upload["backlog_bytes"],
                               None if oldest is None else int(oldest), spool["free_bytes"],
                               spool["synced_without_receipt"]),
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
        self.updater.on_connected()
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

    def _message(self, message: Inbound) -> None:
        device = self._config.device.id
        if message.topic.startswith(fleetwire.device_topic(device, "cmd") + "/"):
            self._command(message)
        elif message.topic == fleetwire.config_desired_topic(device):
            self._desired_config(message)
        elif not self.updater.on_message(message):
            self.uploader.on_message(message)

    def _command(self, message: Inbound) -> None:
        with self._agent_lock:
            self._execute(self.agent.handle_command(message.topic, message.payload, message.response_topic,
                                                    message.correlation_data))

    def _desired_config(self, message: Inbound) -> None:
        if not message.payload:
            logger.info("fleet desired config cleared by the operator; the config in effect stays")
            return
        with self._agent_lock:
            self._execute(self.agent.handle_config(message.payload, self._facts()))

    def _facts(self) -> pushpolicy.BoxFacts:
        """What the push policy asks of this box (link thread)."""
        by_state = self._spool.status()["by_state"]
        unsynced = sum(figures["bytes"] for state, figures in by_state.items() if state != "synced")
        return pushpolicy.BoxFacts(data_dir=self._data_dir, unsynced_bytes=unsynced, resolve=os.path.realpath)

    def _uploads_pending(self) -> bool:
        """Recordings wait to be uploaded (those stopped until restart do not count): an update waits."""
        status = self.uploader.status()
        return status["backlog_recordings"] - status["stopped_recordings"] > 0 or status["in_flight"] > 0

    def _upload_alarm(self, kind: str, detail: str) -> None:
        if kind in fleetwire.ALARMS:
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
                            status["free_bytes"], status["synced_without_receipt"])

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

    def _publish(self, message: fleetwire.Outbound) -> None:
        self.link.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    # -- the agent's actions (link thread, under the agent lock) --

    def _execute(self, actions: list[Action]) -> None:
        """Run the agent's actions in order; an effect's outcome goes back to the agent, whose answer runs next."""
        todo, delivery = list(actions), None
        while todo:
            action = todo.pop(0)
            if isinstance(action, fleet.Reply):
                delivery = self.link.publish(action.topic, action.payload, qos=action.qos,
                                             correlation_data=action.correlation_data)
            elif isinstance(action, fleet.ConfigReport):
                delivery = self.link.publish(action.topic, action.payload, qos=action.qos, retain=action.retain)
            elif isinstance(action, fleetcommands.Restart):
                self._restart_after(delivery, action.reason)
            else:
                todo[:0] = self._perform(action)

    def _perform(self, action: Action) -> list[Action]:
        """One action that is neither published nor a restart; what the agent answers to its outcome."""
        if isinstance(action, fleet.SaveState):
            save_agent_state(self._data_dir, action.state)
        elif isinstance(action, fleet.SetAlarm):
            self.alarm(action.name, action.active, action.detail)
        elif isinstance(action, fleet.SetLogLevel):
            set_log_level(action.level)
        elif isinstance(action, fleet.RollbackConfig):
            set_log_level(action.config.log.level)
            self._config = action.config
        elif isinstance(action, fleet.ApplyConfig):
            try:
                self._apply_config(action)
            except LinetapError as e:
                return self.agent.config_done(action, error=e)
            return self.agent.config_done(action)
        else:
            try:
                outcome = self._command_effect(action)
            except LinetapError as e:
                return self.agent.command_done(action, error=e)
            return self.agent.command_done(action, outcome)
        return []

    def _command_effect(self, action: Action) -> Any:
        if isinstance(action, fleetcommands.Ping):
            return self._ping()
        if isinstance(action, fleetcommands.ShowIdentify):
            if self._hooks.identify is None:
                raise DeviceMissing("identify: this box runs without an LED panel (not started as the service)")
            return self._hooks.identify(action.seconds)
        if isinstance(action, fleetcommands.PlayTestAnnouncement):
            if self._hooks.test_announcement is None:
                raise DeviceMissing("test-announcement: this box runs without a line output "
                                    "(not started as the service)")
            return self._hooks.test_announcement()
        if isinstance(action, fleetcommands.SyncNow):
            return self.uploader.sync_now()
        if isinstance(action, fleetcommands.ReadLogs):
            return self.recent_log.lines(action.lines)
        if isinstance(action, fleetcommands.PurgeSynced):
            return len(self._spool.purge_synced())
        raise SyncError(f"the fleet agent asked for {type(action).__name__}, which this box does not run")

    def _ping(self) -> dict[str, Any]:
        upload = self.uploader.status()
        audio = self._hooks.audio() if self._hooks.audio is not None else None
        return {"backlog_recordings": upload["backlog_recordings"], "boot": self.boot,
                "recording": audio.recording if audio else False,
                "uptime_s": int(self._clock.monotonic() - self._started_at)}

    def _restart_after(self, delivery: Delivery | None, reason: str) -> None:
        """Ask the app to restart once ``delivery`` (the answer before) is acknowledged."""
        restart = self._hooks.restart
        if restart is None:
            raise SyncError(f"{reason}: this box cannot restart itself (not started as the service)")
        if delivery is None:
            restart(reason)
        else:
            delivery.add_done_callback(lambda _delivery: restart(reason))

    def _apply_config(self, action: fleet.ApplyConfig) -> None:
        """Check a config that needs a restart, then keep it (on trial), or make it live at once."""
        if action.restart and self._hooks.check_config is not None:
            self._hooks.check_config(action.config)
        try:
            self._pushed.save(action.version, action.text, trial=bool(action.restart))
        except OSError as e:
            raise ConfigError(f"cannot keep pushed config version {action.version} under "
                              f"{self._pushed.folder}: {e.strerror}") from e
        if not action.restart:
            self._config = action.config


__all__ = ["AppHooks", "AudioFigures", "BoxSync"]
