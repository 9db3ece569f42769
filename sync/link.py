"""The box's MQTT link: the one module that owns a paho client.

:class:`Link` keeps one MQTT v5 session (``clean_start`` false, a session
expiry, so acks addressed to the box wait at the broker while it is away) to
the broker named by ``config.sync``: TLS with the CA and this box's client
certificate, plain TCP only when ``tls = false``. The Will is set before every
connect. Subscriptions are remembered and made again on every connect.

Threads. The link runs one named thread, ``link-<client id>``, that connects,
drives paho's network loop and reconnects. Every callback
(``on_connected``, ``on_disconnected``, ``on_message``, :class:`Delivery`
callbacks) runs on that thread, except a :class:`Delivery` callback added
after its PUBACK came, which runs at once on the caller's thread. Callbacks
must not block: hand work to your own thread. :meth:`Link.publish` and
:meth:`Link.subscribe` may be called from any thread.

Failures never raise into the app: a broker that is down, refuses the
connection, or fails the TLS handshake (bad certificate) is logged, reported
through ``on_disconnected(reason)`` and :attr:`Link.state`, and tried again
after an exponential back-off with full jitter
(:class:`~linetap.firmware.backoff.Backoff`, ``jitter=1``) capped at
``reconnect_max_s``. A connection must stay up for :data:`STABLE_S` before the
back-off starts again from its base, so a flapping broker is not hammered.
Only a missing TLS file is an error, raised at construction: it needs a person.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from linetap.firmware.backoff import Backoff
from linetap.firmware.clock import Clock
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync.mqtt import (CONNECT_TIMEOUT_S, BrokerClient, ClientFactory, Inbound, Will, box_settings,
                               publish_properties)

logger = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
STABLE_S = 30.0
SESSION_EXPIRY_S = 7 * 86400  # acks wait at the broker through a week-long outage
_LOOP_S = 0.1  # paho's select timeout; also how often a sleeping link looks at its clock
_JOIN_S = 5.0


@dataclass(frozen=True)
class LinkState:
    """Connected or not, and the last reason the link gave for being down."""

    connected: bool
    reason: str
    attempts: int  # connection attempts since the last stable connection
    next_attempt_at: float | None  # monotonic, while waiting to reconnect


class Delivery:
    """A published message's completion: the broker's PUBACK (QoS 1) or the send (QoS 0)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Delivery], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the broker has the message; False on timeout."""
        return self._done.wait(timeout)

    def add_done_callback(self, callback: Callable[[Delivery], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _complete(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


class Link:
    """One MQTT v5 session to the fleet broker, kept up until :meth:`close`.

    ``on_connected()`` runs after every successful connect, once the broker
    has acknowledged the renewed subscriptions; ``on_disconnected(reason)`` after every lost or failed
    connection; ``on_message(Inbound)`` for each message received. All on the
    link thread (see the module docstring).
    """

    def __init__(self, settings: SyncSection, *, client_id: str, data_dir: Path,
                 will: Will | None = None,
                 on_connected: Callable[[], None] | None = None,
                 on_disconnected: Callable[[str], None] | None = None,
                 on_message: Callable[[Inbound], None] | None = None,
                 clock: Clock, rng: random.Random | None = None,
                 session_expiry_s: int = SESSION_EXPIRY_S, client_factory: ClientFactory = BrokerClient) -> None:
        if not settings.broker:
            raise ConfigError("sync.broker is empty; set it to the fleet broker's host name")
        self.settings = settings
        self.client_id = client_id
        self._clock = clock
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_message = on_message
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}
        self._deliveries: dict[int, Delivery] = {}
        self._early_acks: set[int] = set()  # PUBACKs that came before publish() returned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._socket_open = False
        self._connecting_since: float | None = None
        self._connected_since: float | None = None
        self._next_attempt_at: float | None = None
        self._reason = "not started"
        self._renewing: int | None = None  # mid of the SUBSCRIBE renewing subscriptions after a connect
        self._session_present = False

        client = client_factory(box_settings(settings, data_dir, reconnect_min_s=BACKOFF_BASE_S),
                                client_id=client_id, will=will, session_expiry_s=session_expiry_s, rng=rng,
                                backoff=Backoff(initial=BACKOFF_BASE_S, maximum=settings.reconnect_max_s, jitter=1))
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        self._client = client

    # -- life cycle --

    def start(self) -> Link:
        """Start the link thread; it connects at once and keeps trying."""
        if self._thread is None:
            self._next_attempt_at = self._clock.monotonic()
            self._thread = threading.Thread(target=self._run, name=f"link-{self.client_id}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Disconnect cleanly (no Will) and stop the thread. Safe to call twice."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(_JOIN_S)
            if thread.is_alive():
                raise SyncError(f"link thread {thread.name} did not stop within {_JOIN_S} s")
        if self._socket_open:
            self._client.disconnect()
            self._client.loop(_LOOP_S)
            self._socket_open = False
        self._connected = False

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state --

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> LinkState:
        return LinkState(self._connected, self._reason, self._client.retry.attempts,
                         None if self._connected else self._next_attempt_at)

    # -- use --

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again on every connect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self._connected or self._renewing is not None:
            self._client.subscribe(topic_filter, qos)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                user_properties: Sequence[tuple[str, str]] = (),
                correlation_data: bytes | None = None) -> Delivery:
        """Queue a message; while disconnected, paho keeps QoS 1 messages for the next connect.

        ``correlation_data`` is the MQTT v5 property a response echoes from its request.
        """
        properties = publish_properties(user_properties, correlation_data=correlation_data)
        delivery = Delivery(topic)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise SyncError(f"publishing to {topic!r} failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            if qos == 0:  # paho reports QoS 0 as sent, with no PUBACK to wait for
                self._early_acks.discard(info.mid)
                early = info.rc == mqtt.MQTT_ERR_SUCCESS
            else:
                early = info.mid in self._early_acks
                self._early_acks.discard(info.mid)
                if not early:
                    self._deliveries[info.mid] = delivery
        if early:
            delivery._complete()
        return delivery

    # -- the link thread --

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._socket_open:
                rc = self._client.loop(_LOOP_S)
                if rc != mqtt.MQTT_ERR_SUCCESS and self._socket_open:
                    self._lost(f"network: {mqtt.error_string(rc)}")
                elif (not self._connected and self._connecting_since is not None
                      and self._clock.monotonic() - self._connecting_since > CONNECT_TIMEOUT_S):
                    self._client.disconnect()
                    self._lost(f"no CONNACK within {CONNECT_TIMEOUT_S:.0f} s")
                continue
            assert self._next_attempt_at is not None
            remaining = self._next_attempt_at - self._clock.monotonic()
            if remaining > 0:
                self._stop.wait(min(remaining, _LOOP_S))
                continue
            self._attempt()

    def _attempt(self) -> None:
        try:
            self._client.open()
        except (OSError, ValueError) as e:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            self._failed(f"connect: {type(e).__name__}: {e}")
            return
        self._socket_open = True
        self._connecting_since = self._clock.monotonic()

    def _failed(self, reason: str) -> None:
        delay = self._client.retry.next_delay()
        self._next_attempt_at = self._clock.monotonic() + delay
        self._reason = reason
        logger.warning("link down client=%s broker=%s:%d reason=%s retry_in_s=%.1f attempt=%d", self.client_id,
                       self.settings.broker, self.settings.port, reason, delay, self._client.retry.attempts)
        if self._on_disconnected is not None:
            self._on_disconnected(reason)

    def _lost(self, reason: str) -> None:
        """The socket is gone (after a connection, or after a refused CONNACK)."""
        self._socket_open = False
        self._connecting_since = None
        self._renewing = None
        was_connected, self._connected = self._connected, False
        if was_connected and self._connected_since is not None \
                and self._clock.monotonic() - self._connected_since >= STABLE_S:
            self._client.retry.reset()
        self._failed(reason)

    # -- paho callbacks (link thread) --

    def _handle_connect(self, _client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                        reason_code: mqtt.ReasonCode, _properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._reason = f"refused: {reason_code}"
            return  # the broker closes the socket; _handle_disconnect or the loop reports it
        self._connecting_since = None
        self._session_present = flags.session_present
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        if subscriptions:
            # Up only once the broker has the subscriptions back: a message sent to this box
            # right after on_connected must not find them missing.
            _rc, self._renewing = self._client.subscribe(subscriptions)
            return
        self._up()

    def _handle_subscribe(self, _client: mqtt.Client, _userdata: object, mid: int,
                          reason_codes: list[mqtt.ReasonCode], _properties: Properties | None) -> None:
        if mid != self._renewing:
            return
        self._renewing = None
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            logger.warning("link subscriptions refused client=%s reasons=%s (check the box's role in the broker's dynamic security)",
                           self.client_id, ",".join(refused))
        self._up()

    def _up(self) -> None:
        self._connected = True
        self._connected_since = self._clock.monotonic()
        self._reason = "connected"
        logger.info("link up client=%s broker=%s:%d session_present=%s", self.client_id, self.settings.broker,
                    self.settings.port, self._session_present)
        if self._on_connected is not None:
            self._on_connected()

    def _handle_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: mqtt.DisconnectFlags,
                           reason_code: mqtt.ReasonCode, _properties: Properties | None) -> None:
        if self._stop.is_set() or not self._socket_open:
            return
        reason = self._reason if self._reason.startswith("refused") else f"disconnected: {reason_code}"
        self._lost(reason)

    def _handle_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is None:
            return
        self._on_message(Inbound.of(msg))

    def _handle_publish(self, _client: mqtt.Client, _userdata: object, mid: int,
                        _reason_code: mqtt.ReasonCode, _properties: Properties | None) -> None:
        with self._lock:
            delivery = self._deliveries.pop(mid, None)
            if delivery is None:
                self._early_acks.add(mid)
        if delivery is not None:
            delivery._complete()
