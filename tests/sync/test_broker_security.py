"""The broker configuration in image/mosquitto/, run by a real Mosquitto with a CA made here.

Mosquitto drops a refused publish without telling the publisher, and simply
never delivers a message a subscriber may not read. So "not delivered" is
proven by ordering: after the forbidden messages the same connection sends a
marker on a topic it may use, and once the marker has arrived, nothing sent
before it can still be on its way.

The broker runs the shipped listener section with its dynamic-security
plugin and a file written by :func:`dynsec.write_initial_config`, as
``linetap-central broker-init`` writes it: the operator tools (``central``),
two ingest workers and the fleet tracker, and the boxes enrolled so far.
"""

from __future__ import annotations

import json
import queue
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import public_key_b64
from linetap.sync import dynsec, wire
from linetap.sync.broker import LocalBroker, free_port
from linetap.sync.central import cli
from linetap.sync.central.index import SqliteIndex
from linetap.sync.central.ingestworker import IngestWorker
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.central.worker import run_workers
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.pki import CENTRAL, CertificateAuthority, Issued

ROOT = "linetap/v1"
WAIT = 5.0
NOT_AUTHORIZED = 135  # MQTT v5 reason code 0x87
WORKERS = dynsec.centre_identities("linetap-central", workers=2)  # linetap-central-0, -1, -fleet, -updates
BOXES = ("box-a", "box-b", "box-c")  # enrolled before the broker's first start
HOSTILE = tuple(f"box-h{i}" for i in range(6))  # enrolled boxes that misbehave


def listener_lines(pki: Path, server: Issued, port: int, dynsec_file: Path) -> list[str]:
    """The shipped template's listener section, filled with this test's files."""
    return dynsec.shipped_listener_lines(port=port, ca_file=pki / "ca.pem", cert_file=server.cert_file,
                                         key_file=server.key_file, dynsec_file=dynsec_file)


@dataclass
class Fleet:
    broker: LocalBroker
    ca: CertificateAuthority
    certs: dict[str, Issued]

    def settings(self, name: str = CENTRAL) -> BrokerSettings:
        issued = self.certs[name]
        return BrokerSettings(host="localhost", port=self.broker.port, tls=True, ca_file=self.ca.cert_file,
                              cert_file=issued.cert_file, key_file=issued.key_file, keepalive=10,
                              reconnect_min_s=0.2, reconnect_max_s=1.0,
                              session_expiry_s=0)  # no test leaves a subscription behind for the next


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certificate_authority: CertificateAuthority) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("secure-broker")
    ca = certificate_authority
    server = ca.issue_server()
    certs = {name: ca.issue_client(name) for name in (*BOXES, *HOSTILE, CENTRAL, *WORKERS, "box-late",
                                                                "box-old")}
    dynsec_file = work / "dynsec.json"
    dynsec.write_initial_config(dynsec_file, WORKERS, boxes=(*BOXES, *HOSTILE))
    port = free_port()
    broker = LocalBroker(work / "broker", port=port, listener_lines=listener_lines(ca.folder, server, port,
                                                                                   dynsec_file),
                         persistence=False)
    broker.start()
    yield Fleet(broker, ca, certs)
    broker.stop()


class Client:
    """A paho client with its received messages in a queue."""

    def __init__(self, broker: LocalBroker, ca_file: Path, identity: Issued | None, name: str, *,
                 client_id: str | None = None, session_expiry_s: int = 0) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[str] = queue.Queue()
        self.granted: queue.Queue[list[int]] = queue.Queue()
        self.session_present: bool | None = None
        self.session_expiry_s = session_expiry_s
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{name}",
                                protocol=mqtt.MQTTv5)
        self.mqtt.tls_set(ca_certs=str(ca_file),
                          certfile=str(identity.cert_file) if identity else None,
                          keyfile=str(identity.key_file) if identity else None)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = lambda _c, _u, _f, rc, _p: self.connected.put(f"disconnected: {rc}")
        self.mqtt.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.mqtt.on_subscribe = lambda _c, _u, _mid, codes, _p: self.granted.put([c.value for c in codes])
        self.broker = broker

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, rc: mqtt.ReasonCode,
                    _p: object) -> None:
        self.session_present = flags.session_present
        self.connected.put("ok" if not rc.is_failure else str(rc))

    def connect(self, *, clean_start: bool = True) -> str:
        """``ok``, or what went wrong (TLS alert, refused CONNACK, dropped connection)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            self.mqtt.connect(self.broker.host, self.broker.port, keepalive=10, clean_start=clean_start,
                              properties=props)
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

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        self.mqtt.publish(topic, payload, qos=1, properties=properties).wait_for_publish(WAIT)

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

    def open_client(name: str, identity: Issued | None = None, ca_file: Path | None = None, *,
                    client_id: str | None = None, clean_start: bool = True, session_expiry_s: int = 0) -> Client:
        client = Client(fleet.broker, ca_file or fleet.ca.cert_file,
                        identity if identity is not None else fleet.certs.get(name), name,
                        client_id=client_id, session_expiry_s=session_expiry_s)
        opened.append(client)
        outcome = client.connect(clean_start=clean_start)
        assert outcome == "ok", f"{name} could not connect: {outcome}\n{fleet.broker.log_tail()}"
        return client

    yield open_client
    for client in opened:
        client.close()


CENTRE_ONLY = ("ack/0190c3a4-0000-7000-8000-000000000001", "config/desired", "cmd/reboot", "update/offer",
               "update/chunk")
BOX_WRITES = ("up/0190c3a4-0000-7000-8000-000000000001/seg/0/0", "status", "birth", "telemetry",
              "config/reported", "resp/1", "alarm/disk", "update/get", "update/state")


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
    # The wide filters are refused at SUBSCRIBE time; even if one were granted, the broker must
    # never deliver another box's messages through it.
    for topic_filter in (f"{ROOT}/#", f"{ROOT}/box-b/#", f"{ROOT}/box-a/#", "#"):
        assert box_a.subscribe(topic_filter) == [NOT_AUTHORIZED]
    for leaf in ("ack/#", "config/desired", "cmd/#", "update/offer", "update/chunk"):
        assert box_a.subscribe(f"{ROOT}/box-a/{leaf}") == [1]
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


class Store:
    """Stands in for the central store: every part is stored at once."""

    def __init__(self) -> None:
        self.got: queue.Queue[wire.Part] = queue.Queue()

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        self.got.put(part)
        return [wire.Ack(part.recording_id, part.object, part.sha256, "stored")]


def upload(box: Client, device_id: str, count: int, tag: int) -> set[str]:
    """``count`` one-part uploads from ``box``; the recording ids sent."""
    sent = set()
    for i in range(count):
        recording_id = f"0190c3a4-{tag:04x}-7000-8000-{i:012x}"
        part = wire.split(device_id, recording_id, wire.ObjectRef.manifest(), b"m%d" % i)[0]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = part.user_properties()
        box.publish(part.topic, part.payload, props)
        sent.add(recording_id)
    return sent


def acks_for(box: Client, device_id: str, expected: set[str]) -> set[str]:
    """Recording ids acknowledged as stored, until all of ``expected`` are or nothing comes for WAIT s."""
    acked: set[str] = set()
    while not expected <= acked:
        try:
            topic, payload = box.messages.get(timeout=WAIT)
        except queue.Empty:
            break
        ack = wire.parse_ack(topic, payload, device_id)
        if ack.status == "stored":
            acked.add(ack.recording_id)
    return acked & expected


def test_ingest_workers_over_tls_each_show_their_own_certificate(fleet: Fleet, connect) -> None:
    stores: list[Store] = []

    def make_store() -> Store:
        stores.append(Store())
        return stores[-1]

    # Given the operator tools' settings, each worker finds <client id>.pem next to central.pem.
    with run_workers(2, make_store, fleet.settings(CENTRAL), group="tls", client_id_prefix="linetap-central") as group:
        assert group.wait_ready(WAIT), fleet.broker.log_tail()
        assert [w.settings.cert_file.name for w in group.workers] == ["linetap-central-0.pem", "linetap-central-1.pem"]
        box_a = connect("box-a")
        assert box_a.subscribe(wire.ack_filter("box-a")) == [1]
        sent = upload(box_a, "box-a", 10, tag=1)
        assert acks_for(box_a, "box-a", sent) == sent
    assert all(store.got.qsize() > 0 for store in stores), "the shared group split nothing: one worker was shut out"


def test_a_worker_without_its_own_certificate_is_told_which_to_issue(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match=r"CN linetap-central-7 .*dynsec|CN linetap-central-7"):
        run_workers(1, Store, fleet.settings(CENTRAL), client_id_prefix="linetap-central-7")


# ------------------------------------------------------------ hostile boxes --

@pytest.mark.parametrize("topic_filter", [f"$share/ingest/{ROOT}/+/up/#", f"{ROOT}/+/up/#", "#",
                                          f"{ROOT}/box-b/ack/#", f"{ROOT}/+/ack/#", f"{ROOT}/box-a/#",
                                          "$share/ingest/#", "$CONTROL/dynamic-security/v1/#", "$SYS/#"])
def test_a_box_is_refused_a_subscription_beyond_its_own_topics(connect, topic_filter: str) -> None:
    box_a = connect("box-a")
    assert box_a.subscribe(topic_filter) == [NOT_AUTHORIZED]


def test_a_box_may_subscribe_to_what_the_centre_sends_it(connect) -> None:
    box_a = connect("box-a")
    for topic_filter in (wire.ack_filter("box-a"), f"{ROOT}/box-a/config/desired", f"{ROOT}/box-a/cmd/+"):
        assert box_a.subscribe(topic_filter) == [1], topic_filter


def test_uploads_are_all_acknowledged_while_hostile_boxes_try_to_join_the_ingest_group(fleet: Fleet,
                                                                                        connect) -> None:
    """Six boxes ask for the workers' shared subscription; before, they took 6 of 7 uploads and dropped them."""
    store = Store()
    with IngestWorker(store, fleet.settings(WORKERS[1]), group="ingest", client_id=WORKERS[1]) as worker:
        assert worker.wait_ready(WAIT), fleet.broker.log_tail()
        for name in HOSTILE:
            connect(name).subscribe(f"$share/ingest/{ROOT}/+/up/#")  # refused, but the box does not care
        box_a = connect("box-a")
        assert box_a.subscribe(wire.ack_filter("box-a")) == [1]
        sent = upload(box_a, "box-a", 40, tag=2)
        acked = acks_for(box_a, "box-a", sent)
        assert len(acked) == 40, f"{40 - len(acked)} of 40 uploads went unacknowledged"
        assert store.got.qsize() == 40


def test_a_box_asking_for_a_worker_client_id_connects_as_itself(fleet: Fleet, connect) -> None:
    store = Store()
    with IngestWorker(store, fleet.settings(WORKERS[0]), group="takeover", client_id=WORKERS[0]) as worker:
        assert worker.wait_ready(WAIT), fleet.broker.log_tail()
        hostile = connect("box-h0", client_id=WORKERS[0], clean_start=False, session_expiry_s=3600)
        # Resuming the worker's session would have said so, and closed the worker's connection.
        assert hostile.session_present is False
        box_a = connect("box-a")
        assert box_a.subscribe(wire.ack_filter("box-a")) == [1]
        sent = upload(box_a, "box-a", 5, tag=3)
        assert acks_for(box_a, "box-a", sent) == sent
        assert worker.sessions == 1 and worker.failure is None  # never disconnected, never resubscribed


def test_a_box_asking_for_another_box_id_leaves_its_queued_messages(connect) -> None:
    box_b = connect("box-b", client_id="box-b", session_expiry_s=3600)
    assert box_b.subscribe(wire.ack_filter("box-b")) == [1]
    box_b.close()
    central = connect(CENTRAL)
    queued = [f"{ROOT}/box-b/ack/0190c3a4-0000-7000-8000-00000000000{i}" for i in range(3)]
    for topic in queued:
        central.publish(topic, b"queued for box-b")
    # A clean start under box-b's client id would have thrown box-b's session away.
    hostile = connect("box-h1", client_id="box-b", clean_start=True)
    assert hostile.subscribe(f"{ROOT}/box-h1/ack/#") == [1]
    back = connect("box-b", client_id="box-b", clean_start=False, session_expiry_s=3600)
    assert back.session_present is True
    assert back.received_until(queued[-1]) == queued


def test_enrolment_gives_a_new_box_its_role_at_run_time_and_only_the_enroller_can(fleet: Fleet,
                                                                                   connect) -> None:
    late = connect("box-late")  # a valid certificate, but no role yet: allowed nothing
    assert late.subscribe(wire.ack_filter("box-late")) == [NOT_AUTHORIZED]
    # A box sending the same commands to the plugin is ignored (and cannot read the answer).
    box_a = connect("box-a")
    box_a.publish(dynsec.CONTROL_TOPIC, json.dumps(dynsec.enrol_commands("box-late")).encode())
    assert late.subscribe(wire.ack_filter("box-late")) == [NOT_AUTHORIZED]

    rights = len(dynsec.box_role("box-late")["acls"])
    assert dynsec.grant_box(fleet.settings(CENTRAL), "box-late", timeout=WAIT) == ["ok", "ok",
                                                                                   f"{rights} rights added"]
    assert late.subscribe(wire.ack_filter("box-late")) == [1]
    assert late.subscribe(f"$share/ingest/{ROOT}/+/up/#") == [NOT_AUTHORIZED]
    # Again (enrolled twice, or a replaced key): nothing to do, no error.
    assert dynsec.grant_box(fleet.settings(CENTRAL), "box-late", timeout=WAIT) == [
        "Role already exists", "Client already exists", "0 rights added"]


def test_enrolling_again_gives_a_role_made_before_updates_its_update_topics(fleet: Fleet, connect) -> None:
    old = dynsec.box_role("box-old")
    before = [a for a in old["acls"] if "/update/" not in a["topic"]]  # the role as an older version made it
    central = connect(CENTRAL)  # the plugin answers on $CONTROL/.../response, which only central may read
    assert central.subscribe(dynsec.RESPONSE_TOPIC) == [1]
    central.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": [
        {"command": "createRole", "rolename": old["rolename"], "acls": before},
        {"command": "createClient", "username": "box-old", "roles": [{"rolename": old["rolename"]}]}]}).encode())
    assert central.received_until(dynsec.RESPONSE_TOPIC) == [dynsec.RESPONSE_TOPIC]
    box_old = connect("box-old")
    assert box_old.subscribe(f"{ROOT}/box-old/update/offer") == [NOT_AUTHORIZED]
    assert box_old.subscribe(f"{ROOT}/box-old/ack/#") == [1]

    assert dynsec.grant_box(fleet.settings(CENTRAL), "box-old", timeout=WAIT) == [
        "Role already exists", "Client already exists", f"{len(old['acls']) - len(before)} rights added"]
    box_old = connect("box-old")
    assert box_old.subscribe(f"{ROOT}/box-old/update/offer") == [1]
    assert box_old.subscribe(f"{ROOT}/box-old/update/chunk") == [1]


def test_a_worker_identity_cannot_give_roles(fleet: Fleet) -> None:
    with pytest.raises(Exception, match="enrolling certificate must be CN central"):
        dynsec.grant_box(fleet.settings(WORKERS[2]), "box-late", timeout=WAIT)


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
    assert [k.name for k in keys] == sorted(f"{name}.key" for name in (*fleet.certs, "ca", "server"))
    assert {k.stat().st_mode & 0o777 for k in keys} == {0o600}


# ------------------------------------------------------------------ the CLI --

def central_dir(fleet: Fleet, folder: Path) -> Path:
    central = fleet.certs[CENTRAL]
    folder.mkdir(parents=True)
    (folder / "central.toml").write_text(
        f'[broker]\nhost = "localhost"\nport = {fleet.broker.port}\ntls = true\n'
        f'ca_file = "{fleet.ca.cert_file}"\ncert_file = "{central.cert_file}"\nkey_file = "{central.key_file}"\n')
    return folder


def signing_key() -> str:
    return public_key_b64(Ed25519PrivateKey.generate().public_key())


def test_enroll_gives_the_box_its_broker_role(fleet: Fleet, connect, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fleet.certs["box-cli"] = fleet.ca.issue_client("box-cli")
    box = connect("box-cli")
    assert box.subscribe(wire.ack_filter("box-cli")) == [NOT_AUTHORIZED]
    folder = central_dir(fleet, tmp_path / "central")
    assert cli.main(["enroll", "box-cli", "--signing-key", signing_key(), "--data-dir", str(folder)]) == 0
    assert "box-cli may now use its own topics" in capsys.readouterr().out
    assert box.subscribe(wire.ack_filter("box-cli")) == [1]


@pytest.mark.parametrize("name", [CENTRAL, "linetap-central", "linetap-central-0", "linetap-central-fleet"])
def test_enroll_refuses_a_device_id_that_names_the_centre(fleet: Fleet, tmp_path: Path, name: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = central_dir(fleet, tmp_path / "central")
    assert cli.main(["enroll", name, "--signing-key", signing_key(), "--data-dir", str(folder)]) == 1
    assert "is the name of a central process" in capsys.readouterr().err


def test_enroll_says_when_the_broker_role_could_not_be_given(fleet: Fleet, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = central_dir(fleet, tmp_path / "central")
    config = folder / "central.toml"
    config.write_text(config.read_text().replace(f"port = {fleet.broker.port}", f"port = {free_port()}"))
    assert cli.main(["enroll", "box-down", "--signing-key", signing_key(), "--data-dir", str(folder),
                     "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "key is enrolled, but it has no broker role yet" in err and "run this enroll again" in err


def test_broker_init_writes_the_centre_identities_and_the_enrolled_boxes(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "central"
    folder.mkdir()
    (folder / "central.toml").write_text('[broker]\nworkers = 3\n')
    assert cli.main(["enroll", "lt-desk-1", "--signing-key", signing_key(), "--data-dir", str(folder)]) == 0
    target = tmp_path / "dynsec.json"
    assert cli.main(["broker-init", str(target), "--data-dir", str(folder)]) == 0
    data = json.loads(target.read_text())
    clients = {c["username"]: [r["rolename"] for r in c["roles"]] for c in data["clients"]}
    assert clients == {CENTRAL: [dynsec.CENTRE_ROLE, dynsec.ENROL_ROLE],
                       "linetap-central-0": [dynsec.CENTRE_ROLE], "linetap-central-1": [dynsec.CENTRE_ROLE],
                       "linetap-central-2": [dynsec.CENTRE_ROLE], "linetap-central-fleet": [dynsec.CENTRE_ROLE],
                       "linetap-central-updates": [dynsec.CENTRE_ROLE],
                       "lt-desk-1": ["linetap-box-lt-desk-1"]}
    assert data["defaultACLAccess"] == dynsec.DEFAULT_ACCESS
    assert target.stat().st_mode & 0o777 == 0o600
    # The broker rewrites this file as boxes are enrolled: it is never overwritten by accident.
    assert cli.main(["broker-init", str(target), "--data-dir", str(folder)]) == 1
    assert "pass --replace" in capsys.readouterr().err


def test_the_fleet_tracker_runs_as_its_own_identity(fleet: Fleet, connect, tmp_path: Path) -> None:
    settings = dynsec.identity_settings(fleet.settings(CENTRAL), WORKERS[2])
    assert settings.cert_file.name == "linetap-central-fleet.pem"
    with FleetTracker(SqliteIndex(tmp_path / "index.db"), settings, client_id=WORKERS[2], owns_index=True) as tracker:
        tracker.wait_ready(WAIT)
        box_c = connect("box-c")
        body = {"boot": 1, "session": 1, "state": "online", "clock": {"synced": False, "wall_ms": 0}}
        box_c.publish(f"{ROOT}/box-c/status", json.dumps(body).encode())
        tracker.flush(WAIT)  # its barrier goes through linetap/v1/_central/..., which its role allows
        assert tracker.index.fleet_device("box-c")["subjects"]["status"]["body"]["state"] == "online"
        assert tracker.failure is None
