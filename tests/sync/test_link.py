"""The box's MQTT link against a real Mosquitto: TLS, Will, back-off, re-subscription, deliveries."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import ConfigError
from linetap.sync.broker import LocalBroker, free_port
from linetap.firmware.backoff import Backoff
from linetap.sync.link import Link
from linetap.sync.mqtt import Inbound, Retry, Will
from linetap.sync.pki import CertificateAuthority
from netproxy import Proxy

WAIT = 10.0


class Events:
    """What a link reported, as queues a test can wait on."""

    def __init__(self) -> None:
        self.up: queue.Queue[bool] = queue.Queue()
        self.down: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[Inbound] = queue.Queue()

    def callbacks(self) -> dict:
        return {"on_connected": lambda: self.up.put(True), "on_disconnected": self.down.put,
                "on_message": self.messages.put}


def plain(port: int, **kw) -> SyncSection:
    return SyncSection(broker="127.0.0.1", port=port, tls=False, **kw)


def watcher(broker: LocalBroker, topic: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    client.on_subscribe = lambda *_a: ready.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert ready.wait(WAIT)
    return client, got


pytestmark = pytest.mark.broker("test", persistence=False)


# ---------------------------------------------------------------- back-off --

def link_backoff(cap_s: float) -> Backoff:
    """The link's back-off: full jitter from a 1 s base (the link's own ``BACKOFF_BASE_S``)."""
    return Backoff(initial=1, maximum=cap_s, jitter=1)


def test_backoff_is_exponential_with_full_jitter_up_to_the_cap() -> None:
    retry = Retry(link_backoff(30), random.Random(7))
    delays = [retry.next_delay() for _ in range(200)]
    ceilings = [min(30, 2 ** n) for n in range(200)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings))
    assert max(delays[:3]) <= 4 and max(delays[10:]) > 20  # grows, then spreads up to the cap
    assert len({round(d, 6) for d in delays[10:]}) > 150  # jittered, not a fixed schedule
    assert next(link_backoff(30).delays(random.Random(7))) == delays[0]  # seeded: repeatable
    assert retry.attempts == 200
    retry.reset()
    assert retry.attempts == 0 and retry.next_delay() <= 1


def test_a_missing_broker_is_reported_and_retried_on_the_back_off_schedule(tmp_path: Path) -> None:
    clock = ManualClock()
    events = Events()
    rng_copy = random.Random(3)
    link = Link(plain(free_port(), reconnect_max_s=60), client_id="lt-desk-1", data_dir=tmp_path,
                clock=clock, rng=random.Random(3), **events.callbacks())
    with link:
        assert "Refused" in events.down.get(timeout=WAIT)
        first = link.state
        expected = link_backoff(60).delays(rng_copy)
        assert not first.connected and first.attempts == 1
        assert first.next_attempt_at == pytest.approx(clock.monotonic() + next(expected))
        assert events.down.empty()  # nothing more until the clock reaches the next attempt
        clock.advance(first.next_attempt_at - clock.monotonic())
        assert "Refused" in events.down.get(timeout=WAIT)
        assert link.state.attempts == 2
        assert link.state.next_attempt_at == pytest.approx(clock.monotonic() + next(expected))
    link.close()  # twice is fine


# ------------------------------------------------------------ plain link --

def test_publish_subscribe_and_delivery_completion(broker: LocalBroker, tmp_path: Path) -> None:
    events = Events()
    with Link(plain(broker.port), client_id="lt-desk-1", data_dir=tmp_path, clock=SystemClock(),
              **events.callbacks()) as link:
        assert events.up.get(timeout=WAIT)
        link.subscribe("linetap/v1/lt-desk-1/ack/#")
        spy, got = watcher(broker, "linetap/v1/lt-desk-1/up/#")
        completed = threading.Event()
        delivery = link.publish("linetap/v1/lt-desk-1/up/x", b"payload", user_properties=[("sha256", "ab")])
        delivery.add_done_callback(lambda _d: completed.set())
        assert delivery.wait(WAIT) and completed.wait(WAIT)
        assert got.get(timeout=WAIT) == ("linetap/v1/lt-desk-1/up/x", b"payload")
        late = threading.Event()
        delivery.add_done_callback(lambda _d: late.set())
        assert late.is_set()  # added after completion: runs at once
        spy.publish("linetap/v1/lt-desk-1/ack/r", b"ack", qos=1).wait_for_publish(WAIT)
        message = events.messages.get(timeout=WAIT)
        assert (message.topic, message.payload) == ("linetap/v1/lt-desk-1/ack/r", b"ack")
        spy.loop_stop()
        spy.disconnect()


def test_subscriptions_are_renewed_after_the_broker_restarts(broker: LocalBroker, tmp_path: Path) -> None:
    events = Events()
    with Link(plain(broker.port, reconnect_max_s=1), client_id="lt-desk-1", data_dir=tmp_path,
              clock=SystemClock(), **events.callbacks()) as link:
        assert events.up.get(timeout=WAIT)
        link.subscribe("linetap/v1/lt-desk-1/cmd/#")
        broker.restart()  # no persistence: the broker forgot the session and its subscriptions
        assert events.down.get(timeout=WAIT)
        assert events.up.get(timeout=WAIT)
        spy, _ = watcher(broker, "unused")
        spy.publish("linetap/v1/lt-desk-1/cmd/reboot", b"now", qos=1).wait_for_publish(WAIT)
        assert events.messages.get(timeout=WAIT).payload == b"now"
        spy.loop_stop()
        spy.disconnect()


def test_the_will_is_published_when_the_network_drops_and_the_link_comes_back(
        broker: LocalBroker, tmp_path: Path) -> None:
    proxy = Proxy(broker.port)
    events = Events()
    spy, got = watcher(broker, "linetap/v1/lt-desk-1/status")
    try:
        will = Will("linetap/v1/lt-desk-1/status", b"offline")
        with Link(plain(proxy.port, reconnect_max_s=1), client_id="lt-desk-1", data_dir=tmp_path,
                  will=will, clock=SystemClock(), **events.callbacks()) as link:
            assert events.up.get(timeout=WAIT)
            proxy.cut()
            assert got.get(timeout=WAIT) == ("linetap/v1/lt-desk-1/status", b"offline")
            assert events.down.get(timeout=WAIT)
            assert events.up.get(timeout=WAIT) and link.connected
        assert got.empty()  # a clean close sends no Will
    finally:
        spy.loop_stop()
        spy.disconnect()
        proxy.close()


# -------------------------------------------------------------------- TLS --

@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory,
               certificate_authority: CertificateAuthority) -> Iterator[tuple[LocalBroker, CertificateAuthority]]:
    work = tmp_path_factory.mktemp("tls-link")
    ca = certificate_authority
    server = ca.issue_server()
    lines = [f"cafile {ca.cert_file}", f"certfile {server.cert_file}", f"keyfile {server.key_file}",
             "require_certificate true", "use_identity_as_username true", "allow_anonymous false"]
    with LocalBroker(work / "broker", listener_lines=lines, persistence=False) as broker:
        yield broker, ca


def provision(data_dir: Path, ca_file: Path, cert, key) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "ca.pem").write_bytes(ca_file.read_bytes())
    (keys / "tls.crt").write_bytes(cert.read_bytes())
    (keys / "tls.key").write_bytes(key.read_bytes())


def test_tls_with_the_device_certificate_connects(tls_broker, tmp_path: Path) -> None:
    broker, ca = tls_broker
    issued = ca.issue_client("lt-desk-1")
    provision(tmp_path, ca.cert_file, issued.cert_file, issued.key_file)
    events = Events()
    settings = SyncSection(broker="127.0.0.1", port=broker.port)
    with Link(settings, client_id="lt-desk-1", data_dir=tmp_path, clock=SystemClock(), **events.callbacks()) as link:
        assert events.up.get(timeout=WAIT) and link.state.reason == "connected"


def test_a_certificate_from_another_authority_is_refused_without_raising(tls_broker, tmp_path: Path) -> None:
    broker, ca = tls_broker
    rogue = CertificateAuthority.create(tmp_path / "rogue").issue_client("lt-desk-1")
    provision(tmp_path, ca.cert_file, rogue.cert_file, rogue.key_file)
    events = Events()
    clock = ManualClock()
    settings = SyncSection(broker="127.0.0.1", port=broker.port)
    with Link(settings, client_id="lt-desk-1", data_dir=tmp_path, clock=clock, **events.callbacks()) as link:
        reason = events.down.get(timeout=WAIT)
        assert reason and events.up.empty() and not link.connected
        assert link.state.next_attempt_at is not None and link.state.attempts == 1


def test_a_missing_tls_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sync.ca_file = 'keys/ca.pem'.*does not exist.*CN is device.id"):
        Link(SyncSection(broker="broker.example"), client_id="lt-desk-1", data_dir=tmp_path, clock=SystemClock())
