"""The loopback Mosquitto the demo, tests and benchmarks start."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from linetap.firmware.errors import SyncError
from linetap.sync.broker import LocalBroker


def _client(broker: LocalBroker, got: list, event: threading.Event) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c, _u, msg) -> None:
        got.append((msg.topic, msg.payload, msg.retain))
        event.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_retained_messages_survive_a_restart_on_the_same_port(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path).start()
    try:
        port = broker.port
        got: list = []
        event = threading.Event()
        publisher = _client(broker, got, event)
        publisher.publish("linetap/v1/box/status", b"online", qos=1, retain=True).wait_for_publish(5)
        publisher.loop_stop()
        publisher.disconnect()

        broker.restart()
        assert broker.port == port and broker.running

        subscriber = _client(broker, got, event)
        subscriber.subscribe("linetap/v1/+/status", qos=1)
        assert event.wait(5), broker.log_tail()
        assert got == [("linetap/v1/box/status", b"online", True)]
        subscriber.loop_stop()
        subscriber.disconnect()
    finally:
        broker.stop()
    assert not broker.running


def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    with LocalBroker(tmp_path / "a") as first:
        second = LocalBroker(tmp_path / "b", port=first.port)
        with pytest.raises(SyncError, match=f"port {first.port}"):
            second.start(timeout=5)
        assert not second.running
