"""What the central update tests share: small releases of dummy wheels, and a box that is only a paho client.

``release.py`` checks wheel names and hashes, never wheel contents, so a
few files of random bytes named like wheels make a real release here.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.sync import updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.releases import KeptRelease, ReleaseStore

OWN_SIZE = 300_000  # three chunks of 128 KiB, the last short


def make_wheels(folder: Path, version: str = "0.2.0", own_size: int = OWN_SIZE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"linetap-{version}-py3-none-any.whl").write_bytes(os.urandom(own_size))
    (folder / "numpy-2.0.0-cp311-cp311-manylinux_2_36_aarch64.whl").write_bytes(os.urandom(5000))
    return folder


def build_release(data_dir: Path, key: Ed25519PrivateKey, version: str = "0.2.0", *, now_ms: int = 1_767_225_600_000,
                  **options) -> KeptRelease:
    kept, _new = ReleaseStore(data_dir).build(key, make_wheels(data_dir.parent / f"wheels-{version}", version),
                                              now_ms=now_ms, **options)
    return kept


class PahoBox:
    """A box as the broker sees it: one paho client that publishes and keeps what it receives, by topic."""

    def __init__(self, broker: LocalBroker, device_id: str, *subscriptions: str) -> None:
        self.device_id = device_id
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{device_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for topic in subscriptions:
            self.client.subscribe(topic, qos=1)[1]
        # A round trip through the broker: the subscriptions are in place once it comes back.
        marker = f"linetap/v1/{device_id}/update/test-marker"
        self.client.subscribe(marker, qos=1)
        self.client.publish(marker, b"m", qos=1)
        self.wait_for(marker)

    def get(self, release_id: str, sha256: str, chunk: int) -> None:
        self.client.publish(updatewire.get_topic(self.device_id),
                            updatewire.get_payload(release_id, sha256, chunk), qos=1).wait_for_publish(5)

    def send(self, topic_leaf: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(f"linetap/v1/{self.device_id}/{topic_leaf}", payload, qos=1,
                            retain=retain).wait_for_publish(5)

    def wait_for(self, topic: str, timeout: float = 10.0) -> mqtt.MQTTMessage:
        while True:
            msg = self.received.get(timeout=timeout)
            if msg.topic == topic:
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
