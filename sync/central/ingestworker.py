"""One central ingest worker: upload messages from the broker into the store, acknowledgements back.

One :class:`IngestWorker` owns one MQTT client (made by
:class:`~linetap.sync.mqtt.BrokerClient`) and one thread of its own:

- paho's network thread (``paho-mqtt-client-<client id>``) receives upload
  messages on the shared subscription ``$share/<group>/linetap/v1/+/up/#`` and
  only puts them in a bounded queue; it never validates, stores or waits.
- the worker thread (``ingest-<client id>``) validates each message with
  :func:`wire.parse_part`, hands good parts to ``ingest.receive`` (the store's
  durable write), publishes every :class:`wire.Ack` it returns at QoS 1 on the
  device's ack topic, and only then acknowledges the MQTT message.

Why acknowledge that late (paho's ``manual_ack``): a message the broker has
not seen acknowledged is delivered again after a worker restart, so a worker
killed mid-write loses nothing. The same choice bounds the work in flight: the
worker announces a Receive Maximum of half its queue, and the broker should
never send more unacknowledged messages than that, so the backlog stays at the
broker. paho's thread waits (a few seconds at most) for room in the queue only
when a broker overruns that limit.

Sessions persist (clean start off, a session expiry): QoS 1 messages that
arrive while every worker of a group is away wait in the broker for them.
Several workers with the same group split the messages between them (the
broker hands each message to one member), on one machine or many. One gap
(seen with Mosquitto 2.0.11): a broker restarted from its persistence file
brings back queued messages but not the shared subscription itself, so what a
device publishes between the broker's restart and the workers' reconnection
reaches no worker; the device's uploader resends it after its ack timeout.

A malformed, oversized or misaddressed message is logged with its reason and
never reaches the store; when its topic names a device, a recording and an
object, the device is told with a ``rejected`` ack (code ``malformed`` or
``too-large``) so its uploader stops resending it.

One message never stops a worker. Anything else that goes wrong while one
message is handled (a bug that one hostile message trips in the store or
here) is that message's failure: it is logged with its traceback, the device
gets a ``rejected`` ack with code ``internal-error``, and the message is
acknowledged to the broker like any other answered one, so it cannot come
back from the worker's persistent session and stop the worker again after
every restart.

Only a store that cannot work at all ends the worker: an ``OSError`` (the
store's :class:`~linetap.sync.central.store.StoreUnavailable` is one; the
real ``Ingest`` already turns a full disk into a ``retry`` ack) or a
``MemoryError`` escaping the store. Then the worker thread ends, its
:attr:`IngestWorker.failure` says why, the message stays unacknowledged,
and :func:`~linetap.sync.central.worker.serve` exits non-zero so the service manager restarts the
service; the message is handled again once the store works.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from linetap.firmware import untrusted
from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync import wire
from linetap.sync.mqtt import HANDOFF_WAIT_S, BrokerClient, BrokerSettings, ClientFactory, hand_over

logger = logging.getLogger(__name__)

# Failures of the store as a whole, not of the message in hand (see _handle).
STORE_DOWN: tuple[type[BaseException], ...] = (OSError, MemoryError)
NO_HASH = "0" * 64  # in a rejection of a message whose sha256 could not be read
STOP_POLL_S = 0.2  # how often an idle worker thread looks at its stop event


class Receiver(Protocol):
    """What a worker feeds: the central store's ingest (``sync/central/ingest.py``)."""

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        """Store or stage ``part`` durably and say so; never raises for bad input."""


@dataclass(frozen=True)
class _Inbound:
    connection: int  # which connection it came on: only that connection may acknowledge it
    mid: int
    qos: int
    topic: str
    payload: bytes
    user_properties: tuple[tuple[str, str], ...]


class IngestWorker:
    """One broker connection feeding ``ingest``; see the module docstring.

    ``ingest.receive`` is called on this worker's own thread only, one part at
    a time. Use as a context manager, or :meth:`start` and :meth:`close`
    (safe to call twice).
    """

    def __init__(self, ingest: Receiver, broker_settings: BrokerSettings, *, group: str = "ingest",
                 client_id: str | None = None, receive_maximum: int = 32,
                 rng: random.Random | None = None, client_factory: ClientFactory = BrokerClient) -> None:
        if not group or any(c in group for c in "/+#"):
            raise ConfigError(f"ingest group {group!r} must be a non-empty name without '/', '+' or '#'")
        if not 1 <= receive_maximum <= 65535:
            raise ConfigError(f"receive_maximum {receive_maximum} is not between 1 and 65535")
        self.ingest = ingest
        self.settings = broker_settings
        self.group = group
        self.client_id = client_id or f"linetap-central-{group}-{socket.gethostname()}"
        self.topic_filter = f"$share/{group}/{wire.up_filter()}"
        # Room for one reconnect's redeliveries on top of a full window.
        self._queue: queue.Queue[_Inbound] = queue.Queue(maxsize=2 * receive_maximum)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._disconnected = threading.Event()
        self._stopped = threading.Event()
        self._sessions = 0  # times connected and subscribed
        self._sessions_changed = threading.Condition()
        self._connection = 0
        self._failure: BaseException | None = None
        self._started = False
        self._closed = False
        self._client = client_factory(broker_settings, client_id=self.client_id, manual_ack=True, rng=rng,
                                      session_expiry_s=broker_settings.session_expiry_s,
                                      receive_maximum=receive_maximum)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name=f"ingest-{self.client_id}", daemon=True)

    # ------------------------------------------------------------ owner --

    @property
    def failure(self) -> BaseException | None:
        """Why this worker stopped on its own (its thread ended), or None."""
        return self._failure

    @property
    def ready(self) -> bool:
        """Connected and subscribed."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def sessions(self) -> int:
        """How many times this worker has connected and subscribed."""
        with self._sessions_changed:
            return self._sessions

    def wait_sessions(self, count: int, timeout: float) -> bool:
        """True once the worker has connected and subscribed ``count`` times (reconnects count)."""
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: self._sessions >= count, timeout)

    def wait_stopped(self, timeout: float) -> bool:
        """True once the worker thread has ended (closed, or :attr:`failure` set)."""
        return self._stopped.wait(timeout)

    def start(self) -> IngestWorker:
        if self._started:
            return self
        self._started = True
        self._thread.start()
        self._client.open_async()
        logger.info("ingest worker started client_id=%s broker=%s:%d tls=%s filter=%s", self.client_id,
                    self.settings.host, self.settings.port, self.settings.tls, self.topic_filter)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Finish the part in hand, then disconnect; the broker keeps the session for the next start."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("ingest worker thread did not stop client_id=%s timeout_s=%.1f",
                               self.client_id, timeout)
        if self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
            # Stopping paho's loop at once could drop the last acknowledgements still queued
            # ahead of the DISCONNECT; they are sent once the broker sees the DISCONNECT.
            self._disconnected.wait(timeout)
        self._client.loop_stop()  # paho's thread notices within its one-second loop tick
        self._ready.clear()
        logger.info("ingest worker stopped client_id=%s", self.client_id)

    def __enter__(self) -> IngestWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------- paho (network thread) --

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            logger.error("broker refused ingest worker client_id=%s reason=%s; check its certificate (CN = "
                         "client id) and its role in the broker's dynamic-security file", self.client_id, reason)
            return
        self._client.retry.reset()
        self._disconnected.clear()
        self._connection += 1
        if flags.session_present:
            # The broker sends every unacknowledged message again on a resumed session; what the
            # queue still holds from the old connection would only be stored twice.
            self._drain_queue()
        logger.info("ingest worker connected client_id=%s session_present=%s",
                    self.client_id, flags.session_present)
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int,
                      reasons: list[mqtt.ReasonCode], _props: Properties | None) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._fail(SyncError(f"broker refused subscription {self.topic_filter} for {self.client_id}: "
                                 f"{', '.join(refused)}; the ACL must let the central identity read "
                                 f"{wire.ROOT}/#"))
            return
        self._ready.set()
        with self._sessions_changed:
            self._sessions += 1
            self._sessions_changed.notify_all()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        self._ready.clear()
        self._disconnected.set()
        if self._stopping.is_set():
            return
        delay = self._client.retry_later()
        logger.warning("ingest worker disconnected client_id=%s reason=%s retry_in_s=%.2f",
                       self.client_id, reason, delay)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        delay = self._client.retry_later()
        logger.warning("ingest worker cannot reach broker client_id=%s broker=%s:%d retry_in_s=%.2f",
                       self.client_id, self.settings.host, self.settings.port, delay)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) or ()
        inbound = _Inbound(self._connection, msg.mid, msg.qos, msg.topic, msg.payload,
                           tuple((str(k), str(v)) for k, v in props))
        # More than our Receive Maximum can arrive (seen with Mosquitto 2.0.11 under load). Left
        # unacknowledged, a dropped message comes again with the next session, and the device
        # resends it meanwhile.
        if not hand_over(self._queue, inbound):
            logger.warning("ingest queue full client_id=%s waited_s=%.0f dropped_topic=%s",
                           self.client_id, HANDOFF_WAIT_S, _short(msg.topic))

    def _drain_queue(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    # ----------------------------------------------------------- worker thread --

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    inbound = self._queue.get(timeout=STOP_POLL_S)
                except queue.Empty:
                    continue
                self._handle(inbound)
        except Exception as e:  # the store failed: reported to the owner, never swallowed
            logger.exception("ingest worker failed client_id=%s", self.client_id)
            self._fail(e)
        finally:
            self._stopped.set()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._stopping.set()

    def _handle(self, inbound: _Inbound) -> None:
        """Answer one message, then acknowledge it to the broker.

        The rule, by exception type: a :data:`STORE_DOWN` error means the store
        cannot work at all (disk gone, index unreadable). It ends the worker
        with the message unacknowledged, so the broker hands it out again once
        the service is back, and nothing is lost. Any other exception was
        raised by this one message (a hostile box found a bug): it becomes this
        message's ``rejected`` ack, and the message is acknowledged to the
        broker once that ack is queued, because left unacknowledged in the
        persistent session it would stop the worker again at every restart.
        """
        try:
            self._answer(inbound)
        except STORE_DOWN:
            raise
        except Exception as e:  # the one place where one message's failure becomes its rejection
            logger.error("upload handling failed topic=%s bytes=%d error=%s; refused as internal-error",
                         _short(inbound.topic), len(inbound.payload), type(e).__name__, exc_info=True)
            self._reject(inbound, "internal-error",
                         f"the central store failed on this message ({type(e).__name__}) and refused it; "
                         "the central store's log has the details")
        if inbound.connection == self._connection:
            self._client.ack(inbound.mid, inbound.qos)

    def _answer(self, inbound: _Inbound) -> None:
        """Validate, store and publish the acks; a refused message gets its ``rejected`` ack."""
        try:
            if len(inbound.payload) > wire.MAX_MESSAGE:
                raise _TooLarge(f"message on {_short(inbound.topic)} is {len(inbound.payload)} bytes; "
                                f"at most {wire.MAX_MESSAGE}")
            part = wire.parse_part(inbound.topic, inbound.payload, inbound.user_properties)
        except wire.WireError as e:
            logger.warning("upload refused topic=%s bytes=%d reason=%s", _short(inbound.topic),
                           len(inbound.payload), e)
            self._reject(inbound, "too-large" if isinstance(e, _TooLarge) else "malformed", str(e))
            return
        for ack in self.ingest.receive(part):
            self._publish_ack(part.device_id, ack)

    def _reject(self, inbound: _Inbound, code: str, reason: str) -> None:
        addressed = _address(inbound.topic, inbound.user_properties)
        if addressed is None:
            return  # nobody to tell: the topic does not name a device, recording and object
        device_id, ack = addressed
        self._publish_ack(device_id, dataclasses.replace(ack, status="rejected", code=code, reason=reason))

    def _publish_ack(self, device_id: str, ack: wire.Ack) -> None:
        # QoS 1 and queued by paho while disconnected; a lost one is harmless, as the device
        # resends what stays unacknowledged and the store answers a repeat again.
        self._client.publish(wire.ack_topic(device_id, ack.recording_id), ack.encode(), qos=1)
        logger.debug("ack sent device=%s recording=%s object=%s part=%s status=%s code=%s", device_id,
                     ack.recording_id, ack.object, ack.part, ack.status, ack.code)


class _TooLarge(wire.WireError):
    """A message above the protocol's size limit."""


def _address(topic: str, user_properties: Iterable[tuple[str, str]]) -> tuple[str, wire.Ack] | None:
    """The device and the object a refused upload message names, when its topic says."""
    levels = topic.split("/")
    if levels[:2] != wire.ROOT.split("/") or len(levels) not in (7, 8) or levels[3] != "up":
        return None
    try:
        device_id = wire.check_device_id(levels[2])
        recording_id = wire.check_recording_id(levels[4])
        obj = wire.ObjectRef.parse("/".join(levels[5:-1]))
    except wire.WireError:
        return None
    # Only an unambiguous sha256 is echoed: one named twice could be either.
    announced = [value for name, value in user_properties if name == "sha256"]
    sha256 = announced[0] if len(announced) == 1 and wire.SHA256.fullmatch(announced[0]) else NO_HASH
    part = untrusted.ascii_int(levels[-1], hi=wire.MAX_PARTS - 1)
    return device_id, wire.Ack(recording_id, obj, sha256, "rejected", part=part)


_short = wire.shown_topic
