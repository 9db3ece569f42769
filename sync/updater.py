"""The update thread: the box's update core fed from the link and the disk, its actions run.

:class:`Updater` owns one named thread, ``update``, and the
:class:`~linetap.sync.update.BoxUpdate` core, which only that thread
touches. The link's callbacks (:meth:`on_message` for ``update/offer`` and
``update/chunk``, :meth:`on_connected`) only queue. Every
:data:`TICK_S` the thread gives the core a :class:`Tick` with the
conditions (recordings waiting to be uploaded, a call up, the link up), and
every :data:`POLL_S` it reads root's ``prepared.json`` and ``outcome.json``
(:mod:`linetap.sync.appslots`) and passes on what changed.

Actions: ``update/get`` and the retained ``update/state`` are published on
the link (the state also on every connect, and kept in ``state.json``);
chunks, checks, staging and the offer are written by
:class:`~linetap.sync.updatefiles.UpdateFiles`; a switch writes
``switch.json`` and stops the service (the app's restart hook: the service
manager starts it again, and root's gate starts the new version), unless a
call came up since the core asked, in which case the core waits again.
After an outcome the fetched files and the staging are removed (root keeps
the wheels of the versions it installed, which the box then has on hand).

A failure of one action (a full disk while writing a chunk) is logged and
told to the core as a failed check, so the file is fetched again; nothing an
offer or a chunk holds stops the thread.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linetap.firmware import __version__
from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.errors import LinetapError
from linetap.firmware.keys import load_operator_keys, load_release_keys
from linetap.sync import appslots, updatewire
from linetap.sync.eventthread import EventThread
from linetap.sync.link import Link
from linetap.sync.mqtt import Inbound
from linetap.sync.signed import key_table
from linetap.sync.update import TERMINAL, BoxUpdate
from linetap.sync.updateevents import (
    Action, CheckFile, ChunkArrived, Discard, DiskFacts, Event, FileChecked, FinishedSeen,
    OfferArrived, PreparedSeen, Report, RequestChunk, RequestSwitch, SaveOffer, Stage, StageDone,
    SwitchRefused, Tick, Unstage, WriteChunk)
from linetap.sync.updatefiles import FACTORY_WHEELS, UpdateFiles

logger = logging.getLogger(__name__)

TICK_S = 0.25
POLL_S = 1.0


def app_root_path() -> Path:
    """The app root: ``LINETAP_APP_ROOT``, or ``/data/app`` as on the image."""
    return Path(os.environ.get(appslots.APP_ROOT_ENV) or appslots.DEFAULT_APP_ROOT)


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


class Updater(EventThread):
    """Fetches, stages and switches to the releases offered to this box; see the module docstring.

    ``uploads_pending()`` says whether recordings wait to go (the fetch waits
    for them), ``line_busy()`` whether a call is up or starting, and
    ``stop_service(reason)`` stops the service to be restarted; without it
    (not run as the service) the box never switches. ``stop_if_idle(reason)``,
    when given, does the stop instead, judging the line idle where calls are
    handled (the call loop), so no call can start between the check and the
    stop; it returns whether it stopped. All are called on the update thread
    and must return promptly.
    """

    thread_name = "update"

    def __init__(self, config: Config, link: Link, data_dir: Path, *, clock: Clock, app_root: Path,
                 uploads_pending: Callable[[], bool], line_busy: Callable[[], bool] | None = None,
                 stop_service: Callable[[str], None] | None = None,
                 stop_if_idle: Callable[[str], bool] | None = None, current: str = __version__,
                 factory_wheels: Path = FACTORY_WHEELS) -> None:
        self.device_id = config.device.id
        self._link, self._clock = link, clock
        self._uploads_pending = uploads_pending
        self._line_busy = line_busy or (lambda: False)
        self._stop_service = stop_service
        self._stop_if_idle = stop_if_idle
        self._reserve = config.spool.min_free_mb * 2**20
        self.files = UpdateFiles(data_dir, app_root=app_root, factory_wheels=factory_wheels)
        self.core = BoxUpdate(device_id=self.device_id, current=current, board=config.device.board,
                              machine=platform.machine(), python=python_tag(),
                              operator_keys=key_table(load_operator_keys(data_dir)),
                              release_keys=load_release_keys(data_dir), clock=clock,
                              bandwidth_bytes_s=config.sync.bandwidth_bytes_s)
        if stop_service is None:
            logger.warning("update: this box cannot restart itself (not run as the service): it fetches and "
                           "stages offered releases but never switches to one")
        super().__init__()
        self._seen: dict[str, Any] = {}  # root's files as last read
        self.switched = threading.Event()  # set once switch.json is written and the stop asked for
        link.subscribe(updatewire.offer_topic(self.device_id), qos=1)
        link.subscribe(updatewire.chunk_topic(self.device_id), qos=1)

    # -- link callbacks (link thread): they only queue --

    def on_message(self, message: Inbound) -> bool:
        """Queue an ``update/offer`` or ``update/chunk`` message; False for any other topic."""
        if message.topic == updatewire.offer_topic(self.device_id):
            self._events.put(("offer", bytes(message.payload)))
        elif message.topic == updatewire.chunk_topic(self.device_id):
            self._events.put(("chunk", bytes(message.payload)))
        else:
            return False
        return True

    # -- the update thread --

    def _run(self) -> None:
        saved = self.files.load()
        self._seen["outcome"] = saved.finished
        self._execute(self.core.start(saved, self._disk()))
        next_poll = self._clock.monotonic()
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=TICK_S)
                while True:
                    self._take(*event)
                    event = self._events.get_nowait()
            except queue.Empty:
                pass
            if self._stop.is_set():
                return
            if self._clock.monotonic() >= next_poll:
                next_poll = self._clock.monotonic() + POLL_S
                self._poll()
            self._feed(Tick(uploads_pending=self._uploads_pending(), call_up=self._busy(),
                            connected=self._link.connected))

    def _take(self, kind: str, value: Any) -> None:
        if kind == "offer":
            self._feed(OfferArrived(value, self._disk()))
        elif kind == "chunk":
            self._feed(ChunkArrived(value))
        elif kind == "connected":
            self._publish(self.core.report())  # the centre may have lost the retained state

    def _busy(self) -> bool:
        return self._stop_service is None or self._line_busy()

    def _disk(self) -> DiskFacts:
        try:
            return DiskFacts(have=frozenset(self.files.on_hand()), free_bytes=self.files.free_bytes(),
                             reserve_bytes=self._reserve)
        except OSError as e:
            logger.error("update: cannot read what the box has reason=%s", e)
            return DiskFacts(reserve_bytes=self._reserve)

    def _poll(self) -> None:
        """Root's prepared.json and outcome.json: passed on when they change."""
        try:
            prepared = appslots.read_prepared(self.files.app_root)
            outcome = appslots.read_outcome(self.files.app_root)
        except appslots.SlotFileError as e:
            logger.error("update: root's files unreadable reason=%s", e)
            return
        if prepared is not None and self.core.state == "preparing":
            self._feed(PreparedSeen(prepared.version, prepared.release_id))
        if outcome is not None and outcome != self._seen.get("outcome"):
            self._seen["outcome"] = outcome
            self._feed(FinishedSeen(outcome))

    def _feed(self, event: Event) -> None:
        self._execute(self.core.handle(event))

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                answer = self._perform(action)
            except (OSError, LinetapError) as e:
                logger.error("update action failed action=%s reason=%s", type(action).__name__, e)
                answer = _failed(action, e)
            if answer is not None:
                self._feed(answer)

    def _perform(self, action: Action) -> Event | None:
        files = self.files
        if isinstance(action, RequestChunk):
            self._link.publish(updatewire.get_topic(self.device_id),
                               updatewire.get_payload(action.release_id, action.file_sha256, action.index), qos=1)
        elif isinstance(action, WriteChunk):
            files.write_chunk(action.file_sha256, action.index, action.offset, action.data)
        elif isinstance(action, CheckFile):
            return FileChecked(action.file_sha256, files.check_file(action.file_sha256, action.size))
        elif isinstance(action, Report):
            files.save_state(action.state)
            if action.state.state in TERMINAL:
                files.clean()
            self._publish(action.state)
        elif isinstance(action, SaveOffer):
            files.save_offer(action.payload, action.seq)
        elif isinstance(action, Discard):
            files.discard(action.shas)
        elif isinstance(action, Stage):
            files.stage(action, int(self._clock.wall() * 1000))
            return StageDone()
        elif isinstance(action, Unstage):
            files.unstage(action.release_id)
        elif isinstance(action, RequestSwitch):
            return self._switch(action)
        return None

    def _switch(self, action: RequestSwitch) -> Event | None:
        if self._busy():
            return SwitchRefused()
        switch = appslots.Named(release_id=action.release_id, version=action.version)
        appslots.write_switch(self.files.data_dir, switch)  # before the stop: the next start's gate reads it
        reason = f"update to {action.version}"
        if self._stop_if_idle is not None and not self._stop_if_idle(reason):
            appslots.remove(appslots.update_dir(self.files.data_dir) / appslots.SWITCH)
            return SwitchRefused()
        logger.warning("update switching to version=%s: the service stops to be restarted", action.version)
        self.switched.set()
        if self._stop_if_idle is None:
            assert self._stop_service is not None
            self._stop_service(reason)
        return None

    def _publish(self, state: updatewire.UpdateState) -> None:
        self._link.publish(updatewire.state_topic(self.device_id), updatewire.state_payload(state), qos=1,
                           retain=True)


def _failed(action: Action, error: Exception) -> Event | None:
    """What the core is told when an action failed: a chunk not kept is a file to fetch again."""
    if isinstance(action, WriteChunk):
        return FileChecked(action.file_sha256, False)
    if isinstance(action, CheckFile):
        return FileChecked(action.file_sha256, False)
    if isinstance(action, Stage):
        return StageDone(str(error))
    return None
