"""The chunk server: answers each box's ``update/get`` with one chunk of a kept release.

``serve`` runs one (:func:`start_chunk_server`) on its own MQTT connection
(identity ``<client_id>-updates``). A box asks for chunk ``n`` of file
``sha256`` of release ``id`` (:func:`linetap.sync.updatewire.read_get`); the
server reads those bytes from ``releases/<id>/files/<sha256>``
(:class:`~linetap.sync.central.releases.ReleaseStore`, which checks both ids
are 64 hex digits and the file is in the signed manifest) and publishes
:func:`linetap.sync.release.pack_chunk` to that box's ``update/chunk`` (QoS 1).

Which releases: any kept one, not only the one offered to the asking box.
A release is not secret (the same signed wheels go to every box of a
rollout) and fetching one installs nothing: the operator's signed offer is
what a box acts on. So the server needs no index and no query per chunk,
and a box whose offer was withdrawn mid-fetch (a halted rollout) gets no
error frame it would have to understand: it stops asking.

Several hosts. The server subscribes in a shared group
(``$share/linetap-updates/...``), so with ``serve`` on several hosts each
request is answered by one of them; every host needs the release in its own
data dir (``releases/`` is content addressed: build on one, copy the
folder to the others). A host without it drops the request (logged) and
the box asks again after its timeout.

Fairness. paho's thread only files each request under its device (at most
:data:`PENDING_PER_DEVICE` waiting; past that the box's requests are
dropped, and it asks again after its timeout). The server's thread takes the
devices in turn, each with a token bucket on the injected clock
(:data:`CHUNKS_PER_S`, burst :data:`BURST`), so a box flooding ``get`` is
slowed to its own rate and never delays another box by more than one chunk.
A bad request (malformed, an unknown release or file, a chunk out of range)
is logged once per device per minute and dropped; nothing a box sends stops
the server.

Threads: paho's network thread (files requests), ``update-chunks`` (reads
and publishes).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import SyncError
from linetap.sync import release, updatewire, wire
from linetap.sync.central.fleetclient import FleetClient
from linetap.sync.central.releases import ReleaseStore
from linetap.sync.mqtt import BrokerSettings, Inbound

logger = logging.getLogger(__name__)

SHARE_GROUP = "linetap-updates"  # several serve hosts share the requests: each is answered once
CHUNKS_PER_S = 16.0  # per box: 2 MiB/s of 128 KiB chunks, more than a box's upload cap
BURST = 32
PENDING_PER_DEVICE = 32
IN_FLIGHT = 32  # chunks published and not yet acknowledged by the broker
LOG_EVERY_S = 60.0
MAX_TRACKED = 10_000  # devices with a bucket or a log time; idle ones are forgotten past it
STOP_POLL_S = 0.2
_JOIN_S = 10.0


@dataclass
class _Device:
    tokens: float
    at: float  # clock.monotonic() of the last refill
    pending: deque[bytes] = field(default_factory=deque)
    dropped: int = 0


@dataclass
class ChunkCounts:
    served: int = 0
    refused: int = 0
    dropped: int = 0


class ChunkServer:
    """Serves chunks of ``store``'s releases to boxes on the broker of ``settings``; see the module docstring."""

    def __init__(self, store: ReleaseStore, settings: BrokerSettings, *, client_id: str,
                 clock: Clock | None = None, rate: float = CHUNKS_PER_S, burst: int = BURST) -> None:
        self.store = store
        self.counts = ChunkCounts()
        self._clock = clock or SystemClock()
        self._rate, self._burst = rate, float(burst)
        self._devices: dict[str, _Device] = {}
        self._turn: deque[str] = deque()  # devices with requests waiting, in turn
        self._logged: dict[str, float] = {}  # device → when its last bad request was logged
        self._changed = threading.Condition()
        self._stopping = False
        self._in_flight: deque[int] = deque()
        self._failure: BaseException | None = None
        self.client = FleetClient(settings, client_id=client_id, filters=[f"$share/{SHARE_GROUP}/"
                                                                          f"{updatewire.get_filter()}"],
                                  on_message=self._file)
        self._thread = threading.Thread(target=self._run, name="update-chunks", daemon=True)
        self._started = self._closed = False

    @property
    def failure(self) -> BaseException | None:
        return self._failure or self.client.failure

    def start(self) -> ChunkServer:
        if not self._started:
            self._started = True
            self._thread.start()
            self.client.start()
            logger.info("chunk server started client_id=%s releases=%s", self.client.client_id, self.store.root)
        return self

    def wait_ready(self, timeout: float) -> None:
        self.client.wait_ready(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(_JOIN_S)
        self.client.close()
        logger.info("chunk server stopped served=%d refused=%d dropped=%d", self.counts.served,
                    self.counts.refused, self.counts.dropped)

    def __enter__(self) -> ChunkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread: file the request under its device, nothing more --

    def _file(self, inbound: Inbound) -> None:
        levels = inbound.topic.split("/")
        device_id = levels[2] if len(levels) == 5 else ""
        if not wire.DEVICE_ID.fullmatch(device_id) or inbound.topic != updatewire.get_topic(device_id):
            return  # the subscription's filter lets nothing else in; a broker's mistake is not ours to serve
        now = self._clock.monotonic()
        with self._changed:
            device = self._devices.get(device_id)
            if device is None:
                self._forget_idle()
                device = self._devices[device_id] = _Device(self._burst, now)
            if len(device.pending) >= PENDING_PER_DEVICE:
                device.dropped += 1
                self.counts.dropped += 1
                return
            if not device.pending:
                self._turn.append(device_id)
            device.pending.append(bytes(inbound.payload[:updatewire.MAX_GET_BYTES + 1]))
            self._changed.notify_all()

    def _forget_idle(self) -> None:
        if len(self._devices) < MAX_TRACKED:
            return
        for name in [n for n, d in self._devices.items() if not d.pending]:
            del self._devices[name]
        self._logged.clear()

    # -- the server's thread --

    def _run(self) -> None:
        try:
            while True:
                job = self._next()
                if job is None:
                    return
                self._serve(*job)
        except Exception as e:  # a bug, not a box: kept for the owner, never swallowed
            logger.exception("chunk server failed")
            self._failure = e

    def _next(self) -> tuple[str, bytes] | None:
        """The next request of the next device in turn with a token; None once closing."""
        with self._changed:
            while not self._stopping:
                now = self._clock.monotonic()
                wait = STOP_POLL_S
                for _ in range(len(self._turn)):
                    device_id = self._turn.popleft()
                    device = self._devices[device_id]
                    device.tokens = min(self._burst, device.tokens + (now - device.at) * self._rate)
                    device.at = now
                    if device.tokens >= 1:
                        device.tokens -= 1
                        payload = device.pending.popleft()
                        if device.pending:
                            self._turn.append(device_id)
                        return device_id, payload
                    self._turn.append(device_id)
                    wait = min(wait, (1 - device.tokens) / self._rate)
                self._changed.wait(max(0.001, wait))
        return None

    def _serve(self, device_id: str, payload: bytes) -> None:
        try:
            get = updatewire.read_get(payload)
            data = self.store.chunk(get.release_id, get.file_sha256, get.chunk)
        except release.ReleaseError as e:
            self._refuse(device_id, str(e))
            return
        except OSError as e:
            self._refuse(device_id, f"cannot read the release: {e}")
            logger.error("release file unreadable device_id=%s error=%s", device_id, e)
            return
        frame = release.pack_chunk(get.release_id, get.file_sha256, get.chunk, data)
        self._in_flight.append(self.client.publish(updatewire.chunk_topic(device_id), frame))
        self.counts.served += 1
        if len(self._in_flight) > IN_FLIGHT:
            try:  # the broker's pace bounds ours, and paho's table of acknowledged ids stays small
                self.client.wait_published([self._in_flight.popleft()], _JOIN_S)
            except SyncError as e:
                logger.warning("chunk not acknowledged by the broker: %s", e)

    def _refuse(self, device_id: str, reason: str) -> None:
        self.counts.refused += 1
        now = self._clock.monotonic()
        last = self._logged.get(device_id)
        if last is None or now - last >= LOG_EVERY_S:
            self._logged[device_id] = now
            logger.warning("update request refused device_id=%s reason=%s (more from this box are not logged "
                           "for %.0f s)", device_id, reason[:200], LOG_EVERY_S)


def start_chunk_server(settings: BrokerSettings, data_dir: Path, *, client_id: str) -> ChunkServer:
    """A started chunk server for the releases in ``data_dir``; close it to stop (for ``serve``)."""
    return ChunkServer(ReleaseStore(data_dir), settings, client_id=client_id).start()
