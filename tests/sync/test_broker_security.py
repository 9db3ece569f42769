"""The broker configuration in image/mosquitto/, run by a real Mosquitto with a CA made here.

Mosquitto drops a refused publish without telling the publisher, and simply
never delivers a message a subscriber may not read. So "not delivered" is
proven by ordering: after the forbidden messages the same connection sends a
marker on a topic it may use, and once the marker has arrived, nothing sent
before it can still be on its way.
"""

from __future__ import annotations

import queue
import ssl
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.sync import wire
from linetap.sync.broker import LocalBroker, free_port
from linetap.sync.central.worker import BrokerSettings, IngestWorker
from linetap.sync.pki import CENTRAL, CertificateAuthority, Issued

CONF_DIR = Path(__file__).resolve().parents[2] / "image" / "mosquitto"
ROOT = "linetap/v1"
WAIT = 5.0


def listener_lines(pki: Path, server: Issued, port: int) -> list[str]:
    """The shipped template's listener section, filled with this test's files."""
    text = string.Template((CONF_DIR / "linetap.conf").read_text()).substitute(
        port=port, ca_file=pki / "ca.pem", cert_file=server.cert_file, key_file=server.key_file,
        acl_file=CONF_DIR / "acl")
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    return [line for line in lines[start + 1:] if line and not line.startswith("#")]


@dataclass
class Fleet:
    broker: LocalBroker
    ca: CertificateAuthority
    certs: dict[str, Issued]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("secure-broker")
    ca = CertificateAuthority.create(work / "pki")
    server = ca.issue_server()
    certs = {name: ca.issue_client(name) for name in ("box-a", "box-b", CENTRAL)}
    port = free_port()
    broker = LocalBroker(work / "broker", port=port, listener_lines=listener_lines(work / "pki", server, port),
                         persistence=False)
    broker.start()
    yield Fleet(broker, ca, certs)
    broker.stop()


class Client:
    """A paho client with its received messages in a queue."""

    def __init__(self, broker: LocalBroker, ca_file: Path, identity: Issued | None, name: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[str] = queue.Queue()
        self.granted: queue.Queue[list[int]] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{name}",
                                protocol=mqtt.MQTTv5)
        self.mqtt.tls_set(ca_certs=str(ca_file),
                          certfile=str(identity.cert_file) if identity else None,
                          keyfile=str(identity.key_file) if identity else None)
        self.mqtt.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put("ok" if not rc.is_failure else str(rc))
        self.mqtt.on_disconnect = lambda _c, _u, _f, rc, _p: self.connected.put(f"disconnected: {rc}")
        self.mqtt.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.mqtt.on_subscribe = lambda _c, _u, _mid, codes, _p: self.granted.put([c.value for c in codes])
        self.broker = broker

    def connect(self) -> str:
        """``ok``, or what went wrong (TLS alert, refused CONNACK, dropped connection)."""
        try:
            self.mqtt.connect(self.broker.host, self.broker.port, keepalive=10)
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e}"
        self.mqtt.loop_start()
        try:
            return self.connected.get(timeout=WAIT)
        except queue.Empty:
            return "no answer"

    def subscribe(self, topic_filter: str) -> list[int]:
        self.mqtt.subscribe(topic_filter, qos=1)
        return self.granted.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes) -> None:
        self.mqtt.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def received_until(self, marker_topic: str) -> list[str]:
        """Topics received up to and including the marker (which must arrive)."""
        topics = []
        while True:
            topic, _ = self.messages.get(timeout=WAIT)
            topics.append(topic)
            if topic == marker_topic:
                return topics

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def connect(fleet: Fleet) -> Iterator:
    opened: list[Client] = []

    def open_client(name: str, identity: Issued | None = None, ca_file: Path | None = None) -> Client:
        client = Client(fleet.broker, ca_file or fleet.ca.cert_file,
                        identity if identity is not None else fleet.certs.get(name), name)
        opened.append(client)
        outcome = client.connect()
        assert outcome == "ok", f"{name} could not connect: {outcome}\n{fleet.broker.log_tail()}"
        return client

    yield open_client
    for client in opened:
        client.close()


CENTRE_ONLY = ("ack/0190c3a4-0000-7000-8000-000000000001", "config/desired", "cmd/reboot")
BOX_WRITES = ("up/0190c3a4-0000-7000-8000-000000000001/seg/0/0", "status", "birth", "telemetry",
              "config/reported", "resp/1", "alarm/disk")


def test_a_box_cannot_publish_to_another_box_or_to_its_own_centre_only_topics(connect) -> None:
    central = connect(CENTRAL)
    assert central.subscribe(f"{ROOT}/#") == [1]
    box_a = connect("box-a")

    forbidden = [f"{ROOT}/box-b/{leaf}" for leaf in BOX_WRITES + CENTRE_ONLY]
    forbidden += [f"{ROOT}/box-a/{leaf}" for leaf in CENTRE_ONLY]
    forbidden += ["linetap/v2/box-a/status", "elsewhere/box-a"]
    for topic in forbidden:
        box_a.publish(topic, b"forged")
    marker = f"{ROOT}/box-a/telemetry"
    box_a.publish(marker, b"marker")

    assert central.received_until(marker) == [marker]


def test_a_box_may_write_each_of_its_own_upward_topics(connect) -> None:
    central = connect(CENTRAL)
    assert central.subscribe(f"{ROOT}/box-a/#") == [1]
    box_a = connect("box-a")
    topics = [f"{ROOT}/box-a/{leaf}" for leaf in BOX_WRITES]
    for topic in topics:
        box_a.publish(topic, b"x")
    assert central.received_until(topics[-1]) == topics


def test_a_box_reads_only_what_the_centre_sends_to_it(connect) -> None:
    box_a = connect("box-a")
    # Some of these filters reach beyond box-a's subtree; the broker may grant or refuse them,
    # but must never deliver another box's messages through them.
    for topic_filter in (f"{ROOT}/#", f"{ROOT}/box-b/#", f"{ROOT}/box-a/#", "#"):
        box_a.subscribe(topic_filter)
    central = connect(CENTRAL)
    box_b = connect("box-b")

    for leaf in BOX_WRITES:
        box_b.publish(f"{ROOT}/box-b/{leaf}", b"b's own")
    for leaf in CENTRE_ONLY:
        central.publish(f"{ROOT}/box-b/{leaf}", b"for b")
    # box-a may not read its own upward topics either: central writes one before the marker.
    central.publish(f"{ROOT}/box-a/status", b"not for a's eyes")
    readable = [f"{ROOT}/box-a/{leaf}" for leaf in CENTRE_ONLY]
    for topic in readable:
        central.publish(topic, b"for a")

    # box-b's publishes were acknowledged before central sent anything, so the broker had routed
    # them already: had any been for box-a, it would be queued ahead of central's messages.
    received = box_a.received_until(readable[-1])
    assert sorted(set(received)) == sorted(readable)


def test_central_reads_and_writes_every_box_and_uses_shared_subscriptions(connect) -> None:
    central = connect(CENTRAL)
    assert central.subscribe(f"$share/ingest/{ROOT}/+/up/#") == [1]
    box_a = connect("box-a")
    assert box_a.subscribe(f"{ROOT}/box-a/ack/#") == [1]

    up = f"{ROOT}/box-a/up/0190c3a4-0000-7000-8000-000000000001/manifest/0"
    box_a.publish(up, b"manifest")
    assert central.received_until(up) == [up]

    ack = f"{ROOT}/box-a/ack/0190c3a4-0000-7000-8000-000000000001"
    central.publish(ack, b"{}")
    assert box_a.received_until(ack) == [ack]


def test_an_ingest_worker_with_the_central_certificate_ingests_over_tls(fleet: Fleet, connect) -> None:
    got: queue.Queue[wire.Part] = queue.Queue()

    class Store:
        def receive(self, part: wire.Part) -> list[wire.Ack]:
            got.put(part)
            return [wire.Ack(part.recording_id, part.object, part.sha256, "stored")]

    central = fleet.certs[CENTRAL]
    settings = BrokerSettings(host="localhost", port=fleet.broker.port, tls=True, ca_file=fleet.ca.cert_file,
                              cert_file=central.cert_file, key_file=central.key_file)
    with IngestWorker(Store(), settings, group="tls", client_id="central-tls") as worker:
        assert worker.wait_ready(WAIT), fleet.broker.log_tail()
        box_a = connect("box-a")
        assert box_a.subscribe(wire.ack_filter("box-a")) == [1]
        part = wire.split("box-a", "0190c3a4-0000-7000-8000-000000000002", wire.ObjectRef.manifest(), b"m")[0]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = part.user_properties()
        box_a.mqtt.publish(part.topic, part.payload, qos=1, properties=props).wait_for_publish(WAIT)
        assert got.get(timeout=WAIT) == part
        topic, payload = box_a.messages.get(timeout=WAIT)
    assert wire.parse_ack(topic, payload, "box-a").status == "stored"


def test_a_client_without_a_certificate_cannot_connect(fleet: Fleet) -> None:
    client = Client(fleet.broker, fleet.ca.cert_file, None, "anonymous")
    try:
        assert client.connect().startswith(("refused", "disconnected"))
    finally:
        client.close()


def test_a_certificate_from_another_ca_cannot_connect(fleet: Fleet, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(tmp_path / "rogue")
    # Same CN as a real box and as the centre: the name alone must open nothing.
    for name in ("box-a", CENTRAL):
        client = Client(fleet.broker, fleet.ca.cert_file, rogue.issue_client(name), f"rogue-{name}")
        try:
            assert client.connect().startswith(("refused", "disconnected"))
        finally:
            client.close()


def test_keys_are_private_to_their_owner(fleet: Fleet) -> None:
    keys = sorted(fleet.ca.folder.glob("*.key"))
    assert [k.name for k in keys] == ["box-a.key", "box-b.key", "ca.key", "central.key", "server.key"]
    assert {k.stat().st_mode & 0o777 for k in keys} == {0o600}
