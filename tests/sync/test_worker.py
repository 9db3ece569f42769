"""Central ingest workers against a real Mosquitto, with a store double that speaks Ingest's API."""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware.errors import ConfigError
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingestworker import IngestWorker
from linetap.sync.central.keys import keys_init
from linetap.sync.central.worker import run_workers, serve
from linetap.sync.mqtt import BrokerSettings

DEVICE = "box-a"
WAIT = 10.0


def recording_id(n: int) -> str:
    return f"0190c3a4-0000-7000-8000-{n:012x}"


class StoreDouble:
    """Ingest's ``receive`` contract: each part staged, the object stored once its last part is in."""

    def __init__(self, fail_first: bool = False) -> None:
        self.parts: list[wire.Part] = []
        self.threads: set[str] = set()
        self._fail_first = fail_first
        self._changed = threading.Condition()

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        if self._fail_first:
            self._fail_first = False
            raise OSError(28, "No space left on device")
        with self._changed:
            self.parts.append(part)
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()
        acks = [wire.Ack(part.recording_id, part.object, part.sha256, "stored", part=part.part)]
        if part.part == part.parts - 1:
            acks.append(wire.Ack(part.recording_id, part.object, part.sha256, "stored"))
        return acks

    def wait_for(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.parts) >= count, WAIT)


class Box:
    """A plain paho client playing a device: publishes upload messages, collects its acks."""

    def __init__(self, broker: LocalBroker, device_id: str = DEVICE) -> None:
        self.device_id = device_id
        self.acks: queue.Queue[wire.Ack] = queue.Queue()
        subscribed = threading.Event()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{device_id}",
                                protocol=mqtt.MQTTv5)
        self.mqtt.on_message = lambda _c, _u, msg: self.acks.put(
            wire.parse_ack(msg.topic, msg.payload, device_id))
        self.mqtt.on_subscribe = lambda *_: subscribed.set()
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.subscribe(wire.ack_filter(device_id), qos=1)
        self.mqtt.loop_start()
        assert subscribed.wait(WAIT)

    def publish(self, topic: str, payload: bytes, user_properties: list[tuple[str, str]] | None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = user_properties
        self.mqtt.publish(topic, payload, qos=1, properties=props).wait_for_publish(WAIT)

    def upload(self, recording: str, obj: wire.ObjectRef, data: bytes) -> list[wire.Part]:
        parts = wire.split(self.device_id, recording, obj, data)
        for part in parts:
            self.publish(part.topic, part.payload, part.user_properties())
        return parts

    def next_acks(self, count: int) -> list[wire.Ack]:
        return [self.acks.get(timeout=WAIT) for _ in range(count)]

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


pytestmark = pytest.mark.broker("session")


@pytest.fixture
def box(broker: LocalBroker) -> Iterator[Box]:
    device = Box(broker)
    yield device
    device.close()


def settings_for(broker: LocalBroker) -> BrokerSettings:
    return BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10, reconnect_min_s=0.2)


def start_worker(broker: LocalBroker, store: StoreDouble, name: str) -> IngestWorker:
    worker = IngestWorker(store, settings_for(broker), group=name, client_id=name).start()
    assert worker.wait_ready(WAIT), broker.log_tail()
    return worker


def test_parts_reach_the_store_on_the_worker_thread_and_acks_reach_the_device(broker, box) -> None:
    store = StoreDouble()
    data = bytes(range(256)) * 800  # 204800 bytes: two parts
    with start_worker(broker, store, "roundtrip") as worker:
        sent = box.upload(recording_id(1), wire.ObjectRef.segment(0), data)
        assert len(sent) == 2
        assert store.wait_for(2)
        acks = box.next_acks(3)

    assert [p.payload for p in store.parts] == [p.payload for p in sent]
    assert store.threads == {f"ingest-{worker.client_id}"}
    digest = hashlib.sha256(data).hexdigest()
    assert [(a.part, a.status, a.sha256) for a in acks] == [
        (0, "stored", digest), (1, "stored", digest), (None, "stored", digest)]


def test_bad_messages_are_refused_with_a_reason_and_never_stored(broker, box, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="linetap.sync.central.ingestworker")
    store = StoreDouble()
    rec = recording_id(2)
    good = wire.split(DEVICE, rec, wire.ObjectRef.segment(1), b"fine")[0]
    oversized = wire.MAX_MESSAGE + 1
    with start_worker(broker, store, "refusals"):
        box.publish(wire.up_topic(DEVICE, rec, wire.ObjectRef.segment(0), 0), b"no properties", None)
        box.publish(wire.up_topic(DEVICE, rec, wire.ObjectRef.manifest(), 0), b"\0" * oversized,
                    [("sha256", "ab" * 32), ("size", str(oversized)), ("parts", "2")])
        box.publish(f"linetap/v1/{DEVICE}/up/not-a-recording/seg/0/0", b"x", good.user_properties())
        box.publish(f"linetap/v1/Box_A/up/{rec}/seg/0/0", b"x", good.user_properties())
        box.publish(f"linetap/v1/{DEVICE}/up/{rec}/seg/007/0", b"x", good.user_properties())
        box.publish(good.topic, good.payload, good.user_properties())
        # The worker takes messages in order: once the good part is acknowledged, the bad ones
        # before it have all been handled.
        acks = box.next_acks(4)

    assert [p.topic for p in store.parts] == [good.topic]
    assert [(str(a.object), a.part, a.status, a.code) for a in acks] == [
        ("seg/0", 0, "rejected", "malformed"),
        ("manifest", 0, "rejected", "too-large"),
        ("seg/1", 0, "stored", None),
        ("seg/1", None, "stored", None)]
    assert "lacks the user property 'sha256'" in acks[0].reason
    assert acks[1].sha256 == "ab" * 32
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upload refused")]
    assert len(reasons) == 5
    for expected in ("lacks the user property", f"{oversized} bytes; at most {wire.MAX_MESSAGE}",
                     "not a lowercase UUID", "device id 'Box_A'", "'seg/007'"):
        assert any(expected in line for line in reasons), (expected, reasons)


def test_two_workers_in_one_group_split_the_messages_and_none_gets_one_twice(broker, box) -> None:
    stores: list[StoreDouble] = []

    def make_store() -> StoreDouble:
        stores.append(StoreDouble())
        return stores[-1]

    with run_workers(2, make_store, settings_for(broker), group="split", client_id_prefix="split") as group:
        assert group.wait_ready(WAIT), broker.log_tail()
        for n in range(40):
            box.upload(recording_id(100 + n), wire.ObjectRef.segment(0), b"segment %d" % n)
        acks = box.next_acks(80)

    assert len(acks) == 80 and all(a.status == "stored" for a in acks)
    names = [[p.recording_id for p in store.parts] for store in stores]
    assert all(names), f"a worker got nothing: {[len(n) for n in names]}"
    everything = names[0] + names[1]
    assert sorted(everything) == [recording_id(100 + n) for n in range(40)]


def test_a_restarted_worker_gets_what_was_published_while_it_was_away(broker, box) -> None:
    first = StoreDouble()
    start_worker(broker, first, "away").close()
    sent = [box.upload(recording_id(200 + n), wire.ObjectRef.segment(0), b"late %d" % n)[0]
            for n in range(5)]

    second = StoreDouble()
    with start_worker(broker, second, "away"):
        assert second.wait_for(5)
        box.next_acks(10)
    assert first.parts == []
    assert [p.topic for p in second.parts] == [p.topic for p in sent]


def test_a_part_the_store_failed_on_comes_back_after_a_restart(broker, box, caplog) -> None:
    failing = StoreDouble(fail_first=True)
    worker = start_worker(broker, failing, "fails")
    part = box.upload(recording_id(300), wire.ObjectRef.manifest(), b"manifest")[0]
    assert worker.wait_stopped(WAIT)
    worker.close()
    worker.close()
    assert isinstance(worker.failure, OSError)
    assert failing.parts == []
    assert "ingest worker failed client_id=fails" in caplog.text

    healthy = StoreDouble()
    with start_worker(broker, healthy, "fails"):
        assert healthy.wait_for(1)
        assert [a.status for a in box.next_acks(2)] == ["stored", "stored"]
    assert [p.topic for p in healthy.parts] == [part.topic]


def test_a_worker_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    with LocalBroker(tmp_path) as own_broker:
        store = StoreDouble()
        with start_worker(own_broker, store, "reconnects") as worker:
            assert worker.sessions == 1
            own_broker.restart()
            assert worker.wait_sessions(2, WAIT), own_broker.log_tail()
            device = Box(own_broker)
            try:
                device.upload(recording_id(400), wire.ObjectRef.segment(0), b"after the restart")
                assert store.wait_for(1)
                assert [a.status for a in device.next_acks(2)] == ["stored", "stored"]
            finally:
                device.close()


def test_settings_refuse_plain_tcp_beyond_this_machine_and_tls_without_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain TCP to broker 'broker.example'"):
        BrokerSettings(host="broker.example", tls=False)
    with pytest.raises(ConfigError, match="ca_file .*ca.pem is not a file"):
        BrokerSettings(host="broker.example", ca_file=tmp_path / "ca.pem",
                       cert_file=tmp_path / "c.pem", key_file=tmp_path / "c.key")
    with pytest.raises(ConfigError, match="ingest group 'a/b'"):
        IngestWorker(StoreDouble(), BrokerSettings(tls=False), group="a/b")


def prepare_session(broker: LocalBroker, group: str, client_id: str) -> None:
    """Make the broker keep messages for a worker that is about to start (its first subscription
    would otherwise race the test's first publish)."""
    IngestWorker(StoreDouble(), settings_for(broker), group=group, client_id=client_id).start().close()


def serve_in_thread(name: str, outcome: list[int], **kwargs) -> threading.Thread:
    runner = threading.Thread(target=lambda: outcome.append(serve(**kwargs)), name=f"test-{name}")
    runner.start()
    return runner


def test_serve_returns_0_when_stopped_and_1_when_a_worker_fails(broker, box) -> None:
    stop = threading.Event()
    outcome: list[int] = []
    prepare_session(broker, "serve-ok", "serve-ok-0")
    runner = serve_in_thread("serve-ok", outcome, broker_settings=settings_for(broker), make_ingest=StoreDouble,
                             group="serve-ok", client_id_prefix="serve-ok", stop=stop)
    try:
        box.upload(recording_id(500), wire.ObjectRef.segment(0), b"served")
        assert [a.status for a in box.next_acks(2)] == ["stored", "stored"]
    finally:
        stop.set()
        runner.join(WAIT)
    assert outcome == [0]

    prepare_session(broker, "serve-fails", "serve-fails-0")
    box.upload(recording_id(501), wire.ObjectRef.segment(0), b"fails")
    stop = threading.Event()
    runner = serve_in_thread("serve-fails", outcome, broker_settings=settings_for(broker),
                             make_ingest=functools.partial(StoreDouble, fail_first=True),
                             group="serve-fails", client_id_prefix="serve-fails", stop=stop)
    runner.join(WAIT)
    stop.set()
    runner.join(WAIT)
    assert outcome == [0, 1]


def test_the_serve_command_runs_the_real_ingest_and_stops_on_sigterm(broker, box, tmp_path: Path) -> None:
    data = tmp_path / "central"
    keys_init(data)  # serve does not start without its store key (receipts)
    (data / "central.toml").write_text(
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nworkers = 1\n'
        'group = "cli"\nclient_id = "cli-test"\n')
    prepare_session(broker, "cli", "cli-test-0")
    # No device is enrolled: the real store refuses, which proves it was the one asked.
    box.upload(recording_id(600), wire.ObjectRef.segment(0), b"from nobody")
    proc = subprocess.Popen([sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(data),
                             "serve"], stderr=subprocess.PIPE, text=True)
    try:
        [ack] = box.next_acks(1)
        assert (ack.status, ack.code) == ("rejected", "not-enrolled")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, errors = proc.communicate(timeout=WAIT)
    assert "Traceback" not in errors


# ------------------------------------------------- one message never stops a worker --

class Crashes(StoreDouble):
    """A store double with a bug that one recording trips: it raises instead of answering."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison
        self.tripped = 0

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        if part.recording_id == self.poison:
            self.tripped += 1
            raise KeyError("segments")
        return super().receive(part)


def test_non_ascii_digits_in_a_topic_or_property_are_refused_and_the_worker_goes_on(broker, box, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="linetap.sync.central.ingestworker")
    store = StoreDouble()
    rec = recording_id(700)
    good = wire.split(DEVICE, rec, wire.ObjectRef.segment(1), b"fine")[0]
    props = dict(good.user_properties())
    with start_worker(broker, store, "digits") as worker:
        # '\u0663' is ARABIC-INDIC DIGIT THREE: int() reads it as 3, so seg/\u0663 would be seg/3.
        box.publish(f"linetap/v1/{DEVICE}/up/{rec}/seg/\u0663/0", b"fine", good.user_properties())
        # '\u00b2' is SUPERSCRIPT TWO: isdigit() says yes, int() raises.
        box.publish(f"linetap/v1/{DEVICE}/up/{rec}/seg/1/\u00b2", b"fine", good.user_properties())
        box.publish(good.topic, b"fine", list({**props, "size": "\u00b2"}.items()))
        box.publish(good.topic, b"fine", list({**props, "parts": "\u0661"}.items()))
        box.publish(good.topic, good.payload, good.user_properties())
        acks = box.next_acks(5)
        assert worker.failure is None

    assert [p.topic for p in store.parts] == [good.topic]
    assert [(str(a.object), a.part, a.status, a.code) for a in acks] == [
        ("seg/1", None, "rejected", "malformed"),
        ("seg/1", 0, "rejected", "malformed"),
        ("seg/1", 0, "rejected", "malformed"),
        ("seg/1", 0, "stored", None),
        ("seg/1", None, "stored", None)]
    assert "not a decimal number of ASCII digits" in acks[1].reason
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upload refused")]
    assert any("seg/\u0663" in line and "ASCII digits" in line for line in refused), refused


def test_a_message_the_store_crashes_on_is_rejected_and_the_next_is_stored(broker, box, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="linetap.sync.central.ingestworker")
    poison = recording_id(710)
    store = Crashes(poison)
    other = Box(broker, "box-b")
    try:
        with start_worker(broker, store, "crash") as worker:
            box.upload(poison, wire.ObjectRef.segment(0), b"trips the bug")
            [rejected] = box.next_acks(1)
            other.upload(recording_id(711), wire.ObjectRef.segment(0), b"after it")
            assert [a.status for a in other.next_acks(2)] == ["stored", "stored"]
            assert worker.failure is None and not worker.wait_stopped(0)
    finally:
        other.close()

    assert (rejected.recording_id, rejected.status, rejected.code) == (poison, "rejected", "internal-error")
    assert "KeyError" in rejected.reason and "central store's log" in rejected.reason
    [record] = [r for r in caplog.records if r.getMessage().startswith("upload handling failed")]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert poison in record.getMessage()
    assert [p.recording_id for p in store.parts] == [recording_id(711)]


def test_a_poison_message_is_acknowledged_so_a_restarted_serve_does_not_meet_it_again(broker, box) -> None:
    poison = recording_id(720)
    stores: list[Crashes] = []

    def make_store() -> Crashes:
        stores.append(Crashes(poison))
        return stores[-1]

    prepare_session(broker, "poison", "poison-0")
    box.upload(poison, wire.ObjectRef.segment(0), b"trips the bug")
    box.upload(recording_id(721), wire.ObjectRef.segment(0), b"behind it")
    for run in range(2):
        stop = threading.Event()
        outcome: list[int] = []
        runner = serve_in_thread(f"poison-{run}", outcome, broker_settings=settings_for(broker),
                                 make_ingest=make_store, group="poison", client_id_prefix="poison", stop=stop)
        try:
            if run == 0:
                assert [(a.recording_id, a.status) for a in box.next_acks(3)] == [
                    (poison, "rejected"), (recording_id(721), "stored"), (recording_id(721), "stored")]
            else:
                # Messages left unacknowledged come first on a resumed session: once this one is
                # stored, the poison message would have been met before it.
                box.upload(recording_id(722), wire.ObjectRef.segment(0), b"after the restart")
                assert [(a.recording_id, a.status) for a in box.next_acks(2)] == [
                    (recording_id(722), "stored"), (recording_id(722), "stored")]
        finally:
            stop.set()
            runner.join(WAIT)
        assert outcome == [0]
    assert [s.tripped for s in stores] == [1, 0]
    assert [p.recording_id for p in stores[1].parts] == [recording_id(722)]
