"""The service, ``linetap run``: threads, supervision, the watchdog and the fleet connection.

Threads (:func:`run`):

- ``linetap-audio-reader`` reads blocks from the codec and posts them to the
  call loop's queue;
- the drivers' own threads (gpiozero, hook debounce, modem reader) post
  events to the same queue and return at once;
- the calling thread runs :meth:`~linetap.firmware.callloop.CallLoop.run`;
- with ``sync.broker`` set, :class:`~linetap.sync.boxsync.BoxSync` runs the
  link, the uploader and the fleet agent on threads of its own
  (:func:`start_sync`, :func:`fleet_hooks`).

A reader that does not stop within 5 s is an error, so a stalled device ends
the service (exit 1) and the service manager restarts it.

Talking to the service manager (:class:`Notifier`, the sd_notify protocol).
systemd starts the recorder as ``Type=notify`` with ``WatchdogSec=``: it
waits for ``READY=1`` and restarts the service when ``WATCHDOG=1`` stops
coming. The recorder pets the watchdog only from the call loop, after a block
of audio was processed while the loop kept up (little backlog), so a stalled
codec, a hung sink or a loop that falls behind all end in a restart, not in
a box that looks alive and records nothing.

The protocol is one datagram per message to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (an ``@`` prefix means the abstract namespace); without
that variable (not run by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from linetap.drivers.audio import Codec
from linetap.firmware.callloop import CallLoop, Identify, StopWhenIdle, TestAnnouncement, load_prompts, open_spool
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.consent import Prompt
from linetap.firmware.devices import Board, build_board
from linetap.firmware.errors import ConfigError, DeviceError, LinetapError
from linetap.firmware.keys import KeyMissing
from linetap.firmware.spool import Spool, SpoolSink

if TYPE_CHECKING:
    from linetap.sync.boxsync import AppHooks, BoxSync
    from linetap.sync.pushedconfig import PushedConfig

logger = logging.getLogger(__name__)

_STOP_ANSWER_S = 5.0  # how long an update's switch waits for the call loop to judge the line


class Notifier:
    """Sends sd_notify messages; a no-op outside systemd."""

    def __init__(self, clock: Clock, *, address: str | None = None,
                 watchdog_usec: str | None = None) -> None:
        self._clock = clock
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        # systemd's advice: pet at half the timeout.
        self.pet_interval = int(usec) / 2e6 if usec and usec.isdigit() and int(usec) > 0 else None
        self._last_pet: float | None = None
        self.pets = 0

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            # The manager being unreachable must not stop recording; it will restart us if it cares.
            logger.warning("sd_notify failed message=%s error=%s", message.split("=")[0], exc.strerror)

    def ready(self, status: str = "recording") -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def pipeline_alive(self) -> None:
        """Called by the call loop after a block processed in time; pets at most every pet_interval."""
        if self.pet_interval is None:
            return
        now = self._clock.monotonic()
        if self._last_pet is None or now - self._last_pet >= self.pet_interval:
            self._last_pet = now
            self.pets += 1
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def run(config: Config, data_dir: Path) -> int:
    """The service: run calls until stopped (SIGTERM, a fleet restart) or the audio device is lost.

    A config the fleet pushed (``<data>/config/pushed.toml``) is laid over
    ``config``; if the drivers do not start with a pushed config still on
    trial, the config before it is brought back and the box reports the
    pushed version rejected (see :mod:`linetap.sync.boxsync`).
    """
    from linetap.sync.boxstate import set_log_level
    from linetap.sync.pushedconfig import PushedConfig
    from linetap.sync.pushpolicy import consent_note

    clock = SystemClock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    notifier = Notifier(clock)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    pushed = PushedConfig(data_dir)
    local = config
    config, prompts, board = _start_board(pushed, local, clock, inbox)
    set_log_level(config.log.level)
    sink: SpoolSink | None = None
    sync: BoxSync | None = None
    try:
        sink = _open_sink(config, data_dir, clock)
        loop = CallLoop(config, board, sink, clock, inbox=inbox, prompts=prompts,
                        heartbeat=notifier.pipeline_alive,
                        consent_note=consent_note(local, config, pushed.version))
        if sink is not None:
            sync = start_sync(config, sink.spool, data_dir, clock,
                              hooks=fleet_hooks(loop, board, stop, notifier), local_config=local)
        if sync is not None:
            # Before the loop runs, so no recording closes and no alarm is raised unheard.
            notify = sync.notify
            loop.on_recording, loop.on_alarm = (lambda _recording: notify()), sync.alarm
        unhealthy = _check_trial(config, data_dir, board, sync, stop, clock)
        _serve(loop, board.codec, stop, notifier)
    finally:
        board.close()
        notifier.close()
        if sync is not None:
            sync.close()
        if sink is not None:
            sink.spool.close()
    return 1 if unhealthy else 0


def _check_trial(config: Config, data_dir: Path, board: Board, sync: BoxSync | None, stop: threading.Event,
                 clock: Clock) -> list[str]:
    """When this version is on trial after an update, self-test it (a thread); a failure stops the service.

    The list it returns gets the failure's reason, so :func:`run` exits 1.
    """
    from linetap.firmware import __version__, selftest
    from linetap.sync.updater import app_root_path

    failed: list[str] = []

    def connected(deadline_s: float) -> bool:
        until = clock.monotonic() + deadline_s
        while not sync.link.connected:
            if stop.wait(0.1) or clock.monotonic() >= until:
                return sync.link.connected
        return True

    def on_failed(reason: str) -> None:
        failed.append(reason)
        stop.set()

    selftest.start_trial_check(config, data_dir, app_root_path(), __version__, clock=clock,
                               drivers=lambda: _drivers_answer(config, board),
                               broker=None if sync is None else connected, on_failed=on_failed)
    return failed


def _start_board(pushed: PushedConfig, local: Config, clock: Clock, inbox: queue.SimpleQueue[object]
                 ) -> tuple[Config, dict[str, Prompt], Board]:
    """The pushed config over ``local``, its prompts and its board; the config before it if they fail.

    A bad prompt stops the box now, not at the first call.
    """
    try:
        config = pushed.overlay(local)
        prompts = load_prompts(config)
        board = build_board(config, clock, inbox.put, live=True)
    except LinetapError as exc:
        if not pushed.on_trial:
            raise
        config = pushed.roll_back(local, f"{type(exc).__name__}: {exc}")
        prompts = load_prompts(config)
        board = build_board(config, clock, inbox.put, live=True)
    pushed.confirm()
    return config, prompts, board


def _open_sink(config: Config, data_dir: Path, clock: Clock) -> SpoolSink | None:
    """The spool's sink, or None when the box has no keys to record with."""
    try:
        return open_spool(config, data_dir, clock)
    except KeyMissing as exc:
        # Keep running: the box still detects calls and shows the fault pattern,
        # so an installer sees that it cannot record.
        logger.error("not recording: %s", exc)
        return None


def _serve(loop: CallLoop, codec: Codec, stop: threading.Event, notifier: Notifier) -> None:
    """Start the audio, run the loop until ``stop`` or the audio ends, then stop the reader in bounded time."""
    reader = _AudioReader(codec, loop.post, stop)
    codec.start()
    reader.start()
    notifier.ready()
    try:
        loop.run(stop)
    finally:
        notifier.stopping()
        stop.set()
        reader.join()
    loop.finish()
    if reader.error is not None:
        raise reader.error


def _drivers_answer(config: Config, board: Board) -> str:
    board.codec.stats()  # the codec answers
    return f"board {config.device.board}: {type(board.codec).__name__} open"


def fleet_hooks(loop: CallLoop, board: Board, stop: threading.Event, notifier: Notifier) -> AppHooks:
    """What the fleet's commands do on this box: requests to the call loop, or the stop event."""
    from linetap.sync.boxsync import AppHooks, AudioFigures

    def test_announcement() -> None:
        if loop.flow.call is not None:
            raise DeviceError("test-announcement: a call is in progress; try again when the line is idle")
        if loop.prompts.get(loop.flow.policy.language) is None:
            raise ConfigError("test-announcement: no announcement is configured (consent.announce is off)")
        loop.post(TestAnnouncement())

    def restart(reason: str) -> None:
        logger.warning("restart requested reason=%s", reason)
        notifier.status(f"restart requested: {reason}")
        stop.set()  # the service exits; systemd's Restart=always starts it again

    def audio() -> AudioFigures:
        stats = board.codec.stats()
        assert board.panel is not None
        return AudioFigures(recording=board.panel.rec_led_lit, near_dbfs=None, far_dbfs=None,
                            overruns=stats.overruns + stats.dropped_blocks)

    def check_config(new: Config) -> None:
        new.board_profile()
        load_prompts(new)

    def line_busy() -> bool:  # read on the update thread; the call loop's thread alone changes the flow
        return loop.flow.call is not None or loop.flow.state.value != "idle"

    def stop_if_idle(reason: str) -> bool:
        """The call loop judges the line idle and stops, between two of its items; False when a call is up."""
        answer: queue.SimpleQueue[bool] = queue.SimpleQueue()
        loop.post(StopWhenIdle(stop=lambda: restart(reason), answer=answer.put))
        try:
            return answer.get(timeout=_STOP_ANSWER_S)
        except queue.Empty:
            return False  # the loop did not answer (stopping, or stalled): no switch now

    return AppHooks(identify=lambda seconds: loop.post(Identify(seconds)), test_announcement=test_announcement,
                    restart=restart, audio=audio, check_config=check_config, line_busy=line_busy,
                    stop_if_idle=stop_if_idle)


def start_sync(config: Config, spool: Spool, data_dir: Path, clock: Clock, *,
               hooks: AppHooks | None = None, local_config: Config | None = None) -> BoxSync | None:
    """Upload and take fleet orders over the broker in ``sync.broker``; None when it is empty.

    ``hooks`` are :class:`linetap.sync.boxsync.AppHooks` (see :func:`fleet_hooks`).
    """
    if not config.sync.broker:
        logger.warning("sync.broker is not set: recordings stay on the box until it is")
        return None
    from linetap.sync.boxsync import BoxSync

    return BoxSync(config, spool, data_dir, clock=clock, hooks=hooks, local_config=local_config).start()


class _AudioReader(threading.Thread):
    """Moves blocks from the codec to the call loop; posts None when the audio ends."""

    def __init__(self, codec: Codec, post: Callable[[object], None], stop: threading.Event) -> None:
        super().__init__(name="linetap-audio-reader", daemon=True)
        self._codec, self._post, self._stopping = codec, post, stop
        self.error: LinetapError | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                block = self._codec.read(timeout=2.0)
                self._post(block)
                if block is None:
                    return
        except DeviceError as exc:
            self.error = exc
            self._post(None)

    def join(self, timeout: float | None = 5.0) -> None:
        super().join(timeout)
        if self.is_alive():
            raise DeviceError("the audio reader did not stop within 5 s; the codec is stalled")

