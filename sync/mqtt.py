"""The one MQTT client factory: every paho client of linetap is made here.

:class:`BrokerClient` is a paho client (MQTT v5, client id = the identity the
broker knows the client by) set up from one :class:`BrokerSettings`: TLS with
the fleet CA and the client's certificate and key, a Will if given, the
session (``session_expiry_s=None`` starts clean at every connect; a number
keeps a persistent session that long), and one reconnect back-off
(:class:`~linetap.firmware.backoff.Backoff`, counted by :class:`Retry`).
Its users: the box's :class:`~linetap.sync.link.Link`, the centre's ingest
workers (:mod:`linetap.sync.central.ingestworker`), the fleet tracker and the
fleet tools (:mod:`linetap.sync.central.fleetclient`) and enrolment
(:func:`linetap.sync.dynsec.grant_box`). Each takes the factory as a
constructor argument (``client_factory``), so a test can hand it another.

Who drives the reconnects: the box's link runs its own loop on an injected
clock and asks :attr:`BrokerClient.retry` for each wait; the centre's clients
run paho's thread (:meth:`BrokerClient.open_async`) and call
:meth:`BrokerClient.retry_later` from ``on_disconnect`` and
``on_connect_fail``, which sets paho's next wait to the back-off's.

The box's TLS files are checked for their kind (:func:`tls_files`): its
Ed25519 signing key or a certificate given as the TLS key is refused before
any connection, naming the config key and where the file belongs.
"""

from __future__ import annotations

import queue
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware import keys
from linetap.firmware.backoff import Backoff
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import ConfigError

LOOPBACK = ("localhost", "127.0.0.1", "::1")
CONNECT_TIMEOUT_S = 10.0
HANDOFF_WAIT_S = 5.0  # longest paho's thread waits for room in a consumer's queue


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how a client proves who it is.

    With ``tls`` the client shows the certificate in ``cert_file`` and trusts
    only ``ca_file``; the broker takes the certificate CN as user name and
    client id (see ``image/mosquitto/``). Plain TCP is allowed to a broker on
    this machine only.
    """

    host: str = "127.0.0.1"
    port: int = 8883
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps messages for an absent worker

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("broker host is empty; set it to the broker's name or address")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"broker port {self.port} is not between 1 and 65535")
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError(f"keepalive {self.keepalive} s is not between 5 and 3600")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError(f"reconnect back-off {self.reconnect_min_s}..{self.reconnect_max_s} s "
                              "needs 0 < minimum <= maximum")
        if self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, name)
                if path is None or not Path(path).is_file():
                    raise ConfigError(f"broker {name} {path} is not a file; TLS to {self.host} needs the "
                                      "fleet CA, and the central certificate and key")
        elif self.host not in LOOPBACK:
            raise ConfigError(f"plain TCP to broker {self.host!r} would expose every recording's "
                              "acknowledgements; set tls with ca_file, cert_file and key_file")

    def backoff(self) -> Backoff:
        """The centre's back-off: doubling from the minimum, each wait at least half its ceiling."""
        return Backoff(initial=self.reconnect_min_s, maximum=self.reconnect_max_s, jitter=0.5,
                       minimum=self.reconnect_min_s)


def tls_files(settings: SyncSection, data_dir: Path) -> tuple[Path, Path, Path]:
    """The CA, certificate and key files ``config.sync`` names; ConfigError if one is missing, or if the
    certificate or key file holds the wrong kind (the box's Ed25519 signing key as the TLS key, say)."""
    files = []
    for key in ("ca_file", "cert_file", "key_file"):
        path = Path(getattr(settings, key))
        path = path if path.is_absolute() else Path(data_dir) / path
        if not path.is_file():
            # Boxes set up before the TLS files had names of their own kept them as device.crt/.key.
            old = path.with_name("device.crt") if key == "cert_file" else None
            moved = (f"; {old} is there from an older setup: move it to {path}, and put the TLS key in "
                     f"{path.with_name('tls.key')} (keys/device.key is the signing key)"
                     if old is not None and old.is_file() else "")
            raise ConfigError(f"sync.{key} = {getattr(settings, key)!r}: {path} does not exist{moved}; provision "
                              "the box with the fleet CA and a client certificate whose CN is device.id "
                              "(or set sync.tls = false for a broker on this machine only)")
        files.append(path)
    for key, path, check in (("cert_file", files[1], keys.check_tls_certificate),
                             ("key_file", files[2], lambda p: keys.check_tls_key(p, data_dir))):
        try:
            check(path)
        except keys.WrongKeyKind as e:
            raise keys.WrongKeyKind(f"sync.{key} = {getattr(settings, key)!r}: {e.finding}", e.fix) from None
    return files[0], files[1], files[2]


def box_settings(settings: SyncSection, data_dir: Path, *, reconnect_min_s: float) -> BrokerSettings:
    """The box's ``[sync]`` section as broker settings, its TLS files found and checked (:func:`tls_files`)."""
    ca = cert = key = None
    if settings.tls:
        ca, cert, key = tls_files(settings, data_dir)
    return BrokerSettings(host=settings.broker, port=settings.port, tls=settings.tls, ca_file=ca, cert_file=cert,
                          key_file=key, keepalive=settings.keepalive_s, reconnect_min_s=reconnect_min_s,
                          reconnect_max_s=settings.reconnect_max_s)


@dataclass(frozen=True)
class Will:
    """What the broker publishes for a client that vanishes without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Inbound:
    """A message received on a subscription."""

    topic: str
    payload: bytes = field(repr=False)
    user_properties: tuple[tuple[str, str], ...] = ()
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None

    @classmethod
    def of(cls, msg: mqtt.MQTTMessage) -> Inbound:
        props = msg.properties
        return cls(msg.topic, bytes(msg.payload),
                   tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", None) or ()),
                   bool(msg.retain), getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))


class Retry:
    """The waits of one :class:`Backoff`, counted; :meth:`reset` starts again from the first."""

    def __init__(self, backoff: Backoff, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.attempts = 0
        self._rng = rng
        self._delays = backoff.delays(rng)

    def next_delay(self) -> float:
        self.attempts += 1
        return next(self._delays)

    def reset(self) -> None:
        self.attempts = 0
        self._delays = self.backoff.delays(self._rng)


class BrokerClient(mqtt.Client):
    """A paho client set up from ``settings``; see the module docstring.

    ``session_expiry_s``: None for a clean start at every connect, else a
    persistent session the broker keeps that long. ``receive_maximum``: how
    many unacknowledged QoS 1 messages the broker may send at once.
    ``backoff``: the reconnect waits (default :meth:`BrokerSettings.backoff`).
    """

    def __init__(self, settings: BrokerSettings, *, client_id: str, will: Will | None = None,
                 session_expiry_s: int | None = None, receive_maximum: int | None = None,
                 manual_ack: bool = False, backoff: Backoff | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
        if settings.tls:
            self.tls_set(ca_certs=str(settings.ca_file), certfile=str(settings.cert_file),
                         keyfile=str(settings.key_file), cert_reqs=ssl.CERT_REQUIRED,
                         tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            self.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self.connect_timeout = CONNECT_TIMEOUT_S
        self.broker = settings
        self.retry = Retry(backoff or settings.backoff(), rng)
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_min_s)

    def _connect_args(self) -> dict[str, Any]:
        props = None
        if self._session_expiry_s is not None or self._receive_maximum is not None:
            props = Properties(PacketTypes.CONNECT)
            if self._session_expiry_s is not None:
                props.SessionExpiryInterval = self._session_expiry_s
            if self._receive_maximum is not None:
                props.ReceiveMaximum = self._receive_maximum
        return {"host": self.broker.host, "port": self.broker.port, "keepalive": self.broker.keepalive,
                "clean_start": self._session_expiry_s is None, "properties": props}

    def open(self) -> None:
        """Connect now (TCP, TLS handshake, CONNECT sent); raises OSError or ValueError when that fails."""
        self.connect(**self._connect_args())

    def open_async(self) -> None:
        """Connect from paho's own thread, started here; it reconnects on :meth:`retry_later`'s waits."""
        self.connect_async(**self._connect_args())
        self.loop_start()

    def retry_later(self) -> float:
        """The next back-off wait, set as paho's wait before its next reconnect; returned for the log."""
        delay = self.retry.next_delay()
        # paho doubles its wait from the minimum up to the maximum: both at the delay chosen here.
        self.reconnect_delay_set(delay, delay)
        return delay


ClientFactory = Callable[..., BrokerClient]


def publish_properties(user_properties: Sequence[tuple[str, str]] = (), response_topic: str | None = None,
                       correlation_data: bytes | None = None) -> Properties | None:
    """MQTT v5 PUBLISH properties, or None when there are none."""
    if not user_properties and response_topic is None and correlation_data is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if user_properties:
        props.UserProperty = list(user_properties)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    return props


def hand_over(into: queue.Queue[Any], item: Any, *, wait_s: float = HANDOFF_WAIT_S) -> bool:
    """Queue ``item`` from paho's network thread; False if the queue stayed full for ``wait_s``.

    Holding paho's thread while the consumer catches up pushes back on the
    broker through TCP; only a consumer stuck for ``wait_s`` makes it let go.
    """
    try:
        into.put_nowait(item)
    except queue.Full:
        try:
            into.put(item, timeout=wait_s)
        except queue.Full:
            return False
    return True
