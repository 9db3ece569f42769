"""The MQTT client of the centre's fleet tracker and fleet tools.

Knowing that the broker has delivered everything: MQTT keeps the order of
messages on one connection, so a client subscribes, then publishes a marker
to a topic of its own (``linetap/v1/_central/barrier/<token>``, which no
device id can spell) and waits for it to come back: every retained message,
and everything the broker had routed to this client before the marker, came
first (:meth:`FleetClient.barrier`). Nothing here sleeps to wait for the broker.

Threads. Each :class:`FleetClient` runs paho's network thread
(``paho-mqtt-client-<client id>``); its ``on_message`` runs there and must
only hand work over.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from linetap.firmware.errors import SyncError
from linetap.sync import wire
from linetap.sync.mqtt import BrokerClient, BrokerSettings, ClientFactory, Inbound, publish_properties

logger = logging.getLogger(__name__)

BARRIER_ROOT = f"{wire.ROOT}/_central/barrier"


class FleetClient:
    """One MQTT client (clean start) of the centre's fleet tracker and tools.

    Subscribes ``filters`` at every (re)connect. ``on_message`` runs on paho's
    network thread for every message but the client's own barrier markers;
    it must not block or raise. Context manager; :meth:`close` is safe twice.
    """

    def __init__(self, settings: BrokerSettings, *, client_id: str, filters: Sequence[str],
                 on_message: Callable[[Inbound], None], client_factory: ClientFactory = BrokerClient) -> None:
        self.settings = settings
        self.client_id = client_id
        self._on_inbound = on_message
        self._barrier_topic = f"{BARRIER_ROOT}/{secrets.token_hex(8)}"
        self._filters = [*filters, self._barrier_topic]
        self._changed = threading.Condition()
        self._sessions = 0  # connected and subscribed this many times
        self._failure: SyncError | None = None
        self._connect_mids: set[int] = set()  # the subscriptions made at each connect
        self._published: dict[int, mqtt.ReasonCode] = {}
        self._barriers_seen = 0
        self._barriers_sent = 0
        self._started = False
        self._closed = False
        self._client = client_factory(settings, client_id=client_id)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- owner --

    @property
    def failure(self) -> SyncError | None:
        """Why the broker will not serve this client (a refused connection or subscription), or None."""
        return self._failure

    def start(self) -> FleetClient:
        if not self._started:
            self._started = True
            self._client.open_async()
        return self

    def wait_ready(self, timeout: float, sessions: int = 1) -> None:
        """Return once connected and subscribed ``sessions`` times; SyncError if not within ``timeout``."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._sessions >= sessions or self._failure is not None,
                                          timeout)
        if self._failure is not None:
            raise self._failure
        if not done:
            raise SyncError(f"no subscribed connection to broker {self.settings.host}:{self.settings.port} "
                            f"within {timeout:.0f} s; check that it runs and the [broker] settings "
                            f"(tls={self.settings.tls})")

    @property
    def sessions(self) -> int:
        with self._changed:
            return self._sessions

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, response_topic: str | None = None,
                correlation_data: bytes | None = None) -> int:
        """Queue a QoS 1 message (paho sends it once connected); its message id for :meth:`wait_published`."""
        props = publish_properties(response_topic=response_topic, correlation_data=correlation_data)
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=props).mid

    def wait_published(self, mids: Iterable[int], timeout: float) -> None:
        """Return once the broker acknowledged every message in ``mids``; SyncError otherwise."""
        wanted = set(mids)
        with self._changed:
            done = self._changed.wait_for(lambda: wanted <= self._published.keys(), timeout)
            reasons = [self._published.pop(mid) for mid in wanted if mid in self._published]
        if not done:
            raise SyncError(f"broker {self.settings.host}:{self.settings.port} did not acknowledge "
                            f"{len(wanted) - len(reasons)} of {len(wanted)} messages within {timeout:.0f} s")
        refused = [r for r in reasons if r.is_failure]
        if refused:
            raise SyncError(f"broker refused {len(refused)} of {len(wanted)} messages ({refused[0]}); "
                            f"the broker must give this identity the role linetap-centre (writes {wire.ROOT}/#; "
                            "image/mosquitto/README.md)")

    def barrier(self, timeout: float) -> None:
        """Return once every message the broker routed to this client before now has been handed over."""
        with self._changed:
            self._barriers_sent += 1
            number = self._barriers_sent
        mid = self.publish(self._barrier_topic, str(number).encode("ascii"))
        with self._changed:
            returned = self._changed.wait_for(
                lambda: self._barriers_seen >= number and mid in self._published, timeout)
            self._published.pop(mid, None)
            if not returned:
                raise SyncError(f"broker {self.settings.host}:{self.settings.port} did not return this "
                                f"client's marker within {timeout:.0f} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> FleetClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread --

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            logger.error("broker refused fleet client client_id=%s reason=%s", self.client_id, reason)
            if reason.value in (0x86, 0x87, 0x8C):  # bad credentials, not authorised, bad auth method
                self._fail(SyncError(f"broker refused {self.client_id} ({reason}); check the central "
                                     "certificate (its CN is its client id) and its role in the broker's "
                                     "dynamic-security file (image/mosquitto/README.md)"))
            return
        self._client.retry.reset()
        logger.info("fleet client connected client_id=%s", self.client_id)
        _rc, mid = client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters])
        with self._changed:
            self._connect_mids.add(mid)  # its SUBACK comes later on this same thread

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      _props: Properties | None) -> None:
        with self._changed:
            if mid not in self._connect_mids:
                return
            self._connect_mids.discard(mid)
            refused = [str(r) for r in reasons if r.is_failure]
            if refused:
                self._failure = self._failure or SyncError(
                    f"broker refused fleet subscriptions for {self.client_id}: {', '.join(refused)}; the broker "
                    f"must give this identity the role linetap-centre (reads {wire.ROOT}/#)")
            else:
                self._sessions += 1
            self._changed.notify_all()

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, reason: mqtt.ReasonCode,
                    _props: Properties | None) -> None:
        with self._changed:
            self._published[mid] = reason
            self._changed.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._barrier_topic:
            with self._changed:
                self._barriers_seen = max(self._barriers_seen, int(msg.payload))
                self._changed.notify_all()
            return
        self._on_inbound(Inbound.of(msg))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, _props: Properties | None) -> None:
        if not self._closed:
            logger.warning("fleet client disconnected client_id=%s reason=%s retry_in_s=%.2f", self.client_id,
                           reason, self._client.retry_later())

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        logger.warning("fleet client cannot reach broker client_id=%s broker=%s:%d retry_in_s=%.2f", self.client_id,
                       self.settings.host, self.settings.port, self._client.retry_later())

    def _fail(self, error: SyncError) -> None:
        with self._changed:
            self._failure = self._failure or error
            self._changed.notify_all()
