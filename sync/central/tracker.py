"""The centre's fleet tracker: who is online and what it runs, kept in the index.

:class:`FleetTracker` subscribes to every box's ``status``, ``birth``,
``telemetry``, ``alarm/#``, ``config/reported`` and ``update/state`` and stores the latest of
each per device (:mod:`linetap.sync.central.observation` validates them and
says which status wins), with the time the device was last seen.
``linetap-central serve`` runs one (:func:`start_tracker`); ``linetap-central
fleet list`` reads what it keeps.

Unacknowledged uploads. Each box's telemetry says how many of its upload
messages have gone unanswered for its ack timeout, and for how long
(``upload``, see :meth:`linetap.sync.upload.Upload.overdue`). The tracker
logs a WARNING naming every box that reports some, each time it does, and
``fleet list``/``show`` show the alarm
:data:`~linetap.sync.central.observation.UNACKED_ALARM`: uploads that reach
no ingest worker (a client in the ingest group that drops them, a broker
restart, stalled workers) are otherwise silent at the centre.

Remote updates. A box's ``update/state`` (:func:`linetap.sync.updatewire.read_state`)
goes to ``update_states`` and to its rollout's targets
(:mod:`~linetap.sync.central.rolloutindex`); after an outcome the rollout is
judged (:func:`linetap.sync.central.rollout.judge`) and, past its halt share,
halted here: the tracker's own connection withdraws the offers of the boxes
that have not started.

Threads. paho's network thread (:class:`~linetap.sync.central.fleetclient.FleetClient`)
only queues; the tracker's thread, ``fleet-tracker``, parses and writes to
the index in batches (one transaction each).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import SyncError
from linetap.sync import updatewire, wire
from linetap.sync.central import rollout
from linetap.sync.central.fleetclient import FleetClient
from linetap.sync.central.config import IndexSection
from linetap.sync.central.index import FleetUpdate, IndexTables
from linetap.sync.central.indexes import open_index
from linetap.sync.central.observation import (TRACKED_FILTERS, FleetMessageError, key_lookup, parse_observation,
                                              short_topic)
from linetap.sync.mqtt import HANDOFF_WAIT_S, BrokerSettings, Inbound, hand_over
from linetap.sync.release import ReleaseError
from linetap.sync.updatewire import UpdateState

logger = logging.getLogger(__name__)

STATE_SUFFIX = "/update/state"
TRACKER_QUEUE = 4096
TRACKER_BATCH = 500
STOP_POLL_S = 0.2
_JOIN_S = 10.0
WITHDRAW_TIMEOUT_S = 10.0  # the broker's acknowledgement of a halted rollout's withdrawals


class FleetTracker:
    """Keeps ``index``'s fleet tables current from the broker; see the module docstring.

    Start it, or use it as a context manager; :meth:`close` is safe twice and
    closes the index when ``owns_index``.
    """

    def __init__(self, index: IndexTables, settings: BrokerSettings, *, client_id: str | None = None,
                 clock: Clock | None = None, owns_index: bool = False) -> None:
        self.index = index
        self._clock = clock or SystemClock()
        self._owns_index = owns_index
        self._queue: queue.Queue[Inbound | threading.Event] = queue.Queue(maxsize=TRACKER_QUEUE)
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._device_key = key_lookup(index)
        self.client = FleetClient(settings, client_id=client_id or f"linetap-central-fleet-{socket.gethostname()}",
                                  filters=(*TRACKED_FILTERS, updatewire.state_filter()), on_message=self._enqueue)
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
                           short_topic(inbound.topic))

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
        states: list[tuple[str, UpdateState]] = []
        for item in batch:
            if isinstance(item, threading.Event):
                done.append(item)
                continue
            if item.topic.endswith(STATE_SUFFIX):
                self._read_state(item, states)
                continue
            try:
                observation = parse_observation(item.topic, item.payload, retained=item.retain,
                                                received_ms=now_ms, device_key=self._device_key)
            except FleetMessageError as e:
                logger.warning("fleet message ignored topic=%s bytes=%d reason=%s", short_topic(item.topic),
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
        if states:
            self._record_states(states, now_ms)
        for event in done:
            event.set()

    def _read_state(self, item: Inbound, into: list[tuple[str, UpdateState]]) -> None:
        levels = item.topic.split("/")
        device_id = levels[2] if len(levels) == 5 else ""
        if not wire.DEVICE_ID.fullmatch(device_id) or item.topic != updatewire.state_topic(device_id):
            logger.warning("update state ignored topic=%s: not a box's update/state", short_topic(item.topic))
            return
        if not item.payload:
            return  # a retained state cleared
        try:
            into.append((device_id, updatewire.read_state(item.payload)))
        except ReleaseError as e:
            logger.warning("update state ignored device_id=%s bytes=%d reason=%s", device_id, len(item.payload),
                           str(e)[:200])

    def _record_states(self, states: list[tuple[str, UpdateState]], now_ms: int) -> None:
        """Keep the boxes' update states; halt a rollout past its share and withdraw its offers."""
        halted = rollout.judge(self.index, sorted(self.index.record_update_states(states, now_ms)), now_ms)
        mids = [self.client.publish(updatewire.offer_topic(device_id), b"", retain=True)
                for devices in halted.values() for device_id in devices]
        if not mids:
            return
        # Waited for here, so that once flush() returns the withdrawals are on the broker (and no
        # acknowledgement is left for nobody to collect).
        try:
            self.client.wait_published(mids, WITHDRAW_TIMEOUT_S)
        except SyncError as e:
            logger.error("offers not withdrawn alarm=rollout-halted rollouts=%s reason=%s", ",".join(halted), e)


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


def start_tracker(settings: BrokerSettings, data_dir: Path, *, client_id: str | None = None,
                  index_config: IndexSection | None = None) -> FleetTracker:
    """A started tracker writing to the index ``index_config`` names (default: ``data_dir``'s SQLite file);
    close it to stop (for ``serve``)."""
    index = open_index(index_config, Path(data_dir))
    try:
        return FleetTracker(index, settings, client_id=client_id, owns_index=True).start()
    except BaseException:
        index.close()
        raise
