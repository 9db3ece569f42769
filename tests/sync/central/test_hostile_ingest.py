"""A hostile enrolled box against the real central ingest: no message stops it, garbage is never stored.

Everything here is real: a Mosquitto on loopback, an :class:`IngestWorker`
(or ``linetap-central serve``) over the real :class:`Ingest` and its data dir,
and a box that is enrolled at the store. A worker handles its messages in
order and the broker keeps one publisher's order, so "every message before
this one has been handled" is proven by a marker message sent last: once its
ack arrives, nothing sent before it is still on its way.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware.keys import public_key_b64
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.index import INDEX_FILE
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.ingestworker import IngestWorker
from linetap.sync.mqtt import BrokerSettings

DEVICE = "box-hostile"
WAIT = 20.0
UP = f"{wire.ROOT}/{DEVICE}/up"


def recording_id(n: int) -> str:
    return f"0190c3a4-0000-7000-8000-{n:012x}"


class Box:
    """An enrolled box's MQTT v5 client, used by hand: any topic under its subtree, any properties."""

    def __init__(self, broker: LocalBroker, client_id: str) -> None:
        self.acks: queue.Queue[wire.Ack] = queue.Queue()
        self.unreadable: list[bytes] = []
        subscribed = threading.Event()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.mqtt.on_message = self._on_message
        self.mqtt.on_subscribe = lambda *_: subscribed.set()
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.subscribe(wire.ack_filter(DEVICE), qos=1)
        self.mqtt.loop_start()
        assert subscribed.wait(WAIT)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.acks.put(wire.parse_ack(msg.topic, msg.payload, DEVICE))
        except wire.WireError:
            self.unreadable.append(msg.payload)  # the test fails on it: the box could not read its ack

    def publish(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = user_properties
        info = self.mqtt.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"the broker did not take {topic!r}"

    def acks_until(self, recording: str) -> list[wire.Ack]:
        """Every ack up to and including the first one about ``recording``."""
        seen: list[wire.Ack] = []
        while not seen or seen[-1].recording_id != recording:
            seen.append(self.acks.get(timeout=WAIT))
        return seen

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def make_central(folder: Path) -> Path:
    keys_init(folder)
    with StoreTools(folder) as tools:
        tools.enroll(DEVICE, public_key_b64(Ed25519PrivateKey.generate().public_key()))
    return folder


def stored_objects(central: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(f"file:{central / INDEX_FILE}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT recording_id, name, sha256 FROM objects WHERE stored_ms IS NOT NULL").fetchall()
        assert db.execute("SELECT COUNT(*) FROM recordings").fetchone() == (0,)
    return {(rec, name): sha for rec, name, sha in rows}


def object_files(central: Path) -> list[Path]:
    return sorted(p for p in (central / "objects").rglob("*") if p.is_file())


class Lines(logging.Handler):
    """Log lines of the central store, from whatever thread writes them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.failures: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.getMessage().startswith("upload handling failed"):
            self.failures.append(record)


pytestmark = pytest.mark.broker("session")


def settings_for(broker: LocalBroker) -> BrokerSettings:
    return BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10, reconnect_min_s=0.2)


# ------------------------------------------------------------ serve restarts --

def serve_process(central: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(central),
                             "serve"], stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> tuple[int | None, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, errors = proc.communicate(timeout=WAIT)
    return code, errors


def test_serve_survives_a_poison_message_and_does_not_meet_it_again_after_a_restart(broker, tmp_path) -> None:
    central = make_central(tmp_path / "central")
    (central / "central.toml").write_text(
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nworkers = 1\n'
        'group = "poison-cli"\nclient_id = "poison-cli"\n')
    # The session exists before the first publish, so the broker keeps what arrives for it.
    with Ingest(central) as core:
        IngestWorker(core, settings_for(broker), group="poison-cli", client_id="poison-cli-0").start().close()
    box = Box(broker, "hostile-cli")
    try:
        good = wire.split(DEVICE, recording_id(2), wire.ObjectRef.segment(0), b"a real segment")[0]
        # SUPERSCRIPT TWO passes str.isdigit() and makes int() raise: the part number of this
        # message once stopped the worker, and every restart met it again.
        box.publish(f"{UP}/{recording_id(1)}/seg/0/\u00b2", b"x", good.user_properties())
        box.publish(good.topic, good.payload, good.user_properties())
        proc = serve_process(central)
        try:
            acks = box.acks_until(recording_id(2))
        finally:
            first = stop(proc)
        assert first[0] == 0, first[1]
        assert [(a.recording_id, a.status, a.code) for a in acks] == [
            (recording_id(1), "rejected", "malformed"), (recording_id(2), "stored", None)]

        marker = wire.split(DEVICE, recording_id(3), wire.ObjectRef.segment(0), b"after the restart")[0]
        box.publish(marker.topic, marker.payload, marker.user_properties())
        proc = serve_process(central)
        try:
            # A poison message left in the session would come before the marker.
            again = box.acks_until(recording_id(3))
        finally:
            second = stop(proc)
        assert second[0] == 0, second[1]
        assert [(a.recording_id, a.status) for a in again] == [(recording_id(3), "stored")]
        assert "Traceback" not in first[1] + second[1]
        assert box.unreadable == []
    finally:
        box.close()
    assert stored_objects(central) == {(recording_id(2), "seg/0"): good.sha256,
                                       (recording_id(3), "seg/0"): marker.sha256}


# ------------------------------------------------------------ property: garbage --

@dataclass
class Hostile:
    """One worker over a real Ingest, and the box that attacks it, for the whole property test."""

    central: Path
    worker: IngestWorker
    box: Box
    log: Lines
    expected: dict[tuple[str, str], str] = field(default_factory=dict)  # what may be stored, first wins
    markers: int = 0


@pytest.fixture(scope="module")
def hostile(shared_broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    central = make_central(tmp_path_factory.mktemp("hostile") / "central")
    log = Lines()
    logger = logging.getLogger("linetap.sync.central")
    logger.addHandler(log)
    level = logger.level
    logger.setLevel(logging.INFO)
    ingest = Ingest(central)
    worker = IngestWorker(ingest, settings_for(shared_broker), group="hostile", client_id="hostile").start()
    box = Box(shared_broker, "hostile-box")
    try:
        assert worker.wait_ready(WAIT), shared_broker.log_tail()
        yield Hostile(central, worker, box, log)
    finally:
        box.close()
        worker.close()
        ingest.close()
        logger.removeHandler(log)
        logger.setLevel(level)


# What Mosquitto delivers at all: UTF-8 without surrogates, control characters or
# noncharacters (it refuses those in topics and properties), no wildcards in a topic.
def _deliverable(char: str) -> bool:
    code = ord(char)
    return not (0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE)


TEXT = st.characters(blacklist_categories=("Cs", "Cc")).filter(_deliverable)
LEVEL_TEXT = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#").filter(_deliverable)
def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """``common`` four times in five: well-formed enough to reach the deeper checks."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else common)


NUMBERS = st.one_of(
    st.integers(0, 3).map(str),
    st.integers(0, 2**70).map(str),
    # Digits of other scripts: '\u0663' reads as 3 to int(), '\u00b2' passes isdigit() and breaks int().
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=3),
    st.sampled_from(["", "0", "00", "01", "-1", "+1", " 1", "1 ", "1_0", "\u00b2", "\u0663", "\uff11",
                     "1e3", "0x1", "4294967296", "1023", "1024"]),
)
LEVEL = mostly(NUMBERS.filter(lambda t: not set(t) & set("/+#")), st.text(LEVEL_TEXT, max_size=12))
RECORDING = mostly(st.integers(0, 3).map(recording_id),
                   st.one_of(st.text(LEVEL_TEXT, max_size=40),
                             st.integers(0, 3).map(lambda n: recording_id(n).upper())))
PROPERTY = st.tuples(
    mostly(st.sampled_from(["sha256", "size", "parts"]), st.text(TEXT, max_size=8)),
    st.one_of(NUMBERS, st.text(TEXT, max_size=70)))


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, str]]]:
    """A well-formed message with a few things changed: it reaches the store's own checks."""
    payload = draw(st.binary(max_size=200))
    obj = draw(st.one_of(st.integers(0, 3).map(lambda i: f"seg/{i}"), st.just("manifest")))
    levels = [draw(st.integers(0, 3).map(recording_id)), *obj.split("/"), "0"]
    props = [("sha256", hashlib.sha256(payload).hexdigest()), ("size", str(len(payload))), ("parts", "1")]
    for change in draw(st.lists(st.sampled_from(["level", "value", "drop", "repeat", "hash", "add"]), max_size=2)):
        if change == "level":
            levels[draw(st.integers(0, len(levels) - 1))] = draw(LEVEL)
        elif change == "value" and props:
            k = draw(st.integers(0, len(props) - 1))
            props[k] = (props[k][0], draw(st.one_of(NUMBERS, st.text(TEXT, max_size=70))))
        elif change == "drop" and props:
            props.pop(draw(st.integers(0, len(props) - 1)))
        elif change == "repeat" and props:
            props.append(draw(st.sampled_from(props)))
        elif change == "hash":
            props = [("sha256", hashlib.sha256(payload + b"!").hexdigest()) if n == "sha256" else (n, v)
                     for n, v in props]
        elif change == "add":
            props.append(draw(PROPERTY))
    return f"{UP}/{'/'.join(levels)}", payload, draw(st.permutations(props))


@st.composite
def garbage(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, str]]]:
    payload = draw(st.binary(max_size=200))
    shape = draw(st.sampled_from(["segment", "segment", "manifest", "anything"]))
    if shape == "anything":
        tail = draw(st.text(TEXT.filter(lambda c: c not in "+#"), max_size=120))
    else:
        obj = f"seg/{draw(LEVEL)}" if shape == "segment" else "manifest"
        extra = draw(mostly(st.just([]), st.lists(LEVEL, min_size=1, max_size=2)))
        tail = "/".join([draw(RECORDING), obj, draw(LEVEL)] + extra)
    # Often the true hash, size and part count, so that one odd value is what decides.
    honest = [("sha256", hashlib.sha256(payload).hexdigest()), ("size", str(len(payload))), ("parts", "1")]
    props = draw(st.lists(st.one_of(st.sampled_from(honest), PROPERTY), max_size=5))
    return f"{UP}/{tail}", payload, props


MESSAGES = st.one_of(near_valid(), garbage())


def acked_key(ack: wire.Ack) -> tuple[str, str]:
    return ack.recording_id, str(ack.object)


def addressed(topic: str) -> tuple[str, str] | None:
    """(recording, object) when the topic names them, so the box can be told about this message."""
    levels = topic.split("/")
    if len(levels) not in (7, 8) or not wire.RECORDING_ID.fullmatch(levels[4]):
        return None
    try:
        return levels[4], str(wire.ObjectRef.parse("/".join(levels[5:-1])))
    except wire.WireError:
        return None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_garbage_from_an_enrolled_box_never_stops_the_worker_or_reaches_the_store(hostile, sent) -> None:
    before = len(hostile.log.lines)
    for topic, payload, props in sent:
        hostile.box.publish(topic, payload, props)
        try:
            part = wire.parse_part(topic, payload, props)
        except wire.WireError:
            continue
        # What the protocol itself lets through: a whole object whose bytes match its hash.
        if part.object.kind == "seg" and hashlib.sha256(payload).hexdigest() == part.sha256:
            hostile.expected.setdefault((part.recording_id, str(part.object)), part.sha256)
    hostile.markers += 1
    marker = recording_id(1_000_000 + hostile.markers)
    hostile.box.publish(wire.up_topic(DEVICE, marker, wire.ObjectRef.manifest(), 0), b"marker", [])
    acks = hostile.box.acks_until(marker)
    lines = hostile.log.lines[before:]

    assert hostile.worker.failure is None and not hostile.worker.wait_stopped(0)
    assert hostile.log.failures == [], "the store failed on a message instead of refusing it"
    assert hostile.box.unreadable == []
    assert (acks[-1].status, acks[-1].code) == ("rejected", "malformed")
    acked = {acked_key(a) for a in acks}
    for topic, _payload, _props in sent:
        key = addressed(topic)
        if key is not None:
            assert key in acked, f"no ack for {topic!r}"
        else:
            assert any(wire.shown_topic(topic) in line for line in lines), f"{topic!r} dropped without a log line"
    assert stored_objects(hostile.central) == hostile.expected
    assert len(object_files(hostile.central)) == len(hostile.expected)
    assert not any(p.is_file() for p in (hostile.central / "staging").rglob("*"))
