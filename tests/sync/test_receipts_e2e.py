"""Delivery receipts end to end: the real box (BoxSync), a real Mosquitto and the real central ingest.

A box given the store's key keeps the receipt the store logged, byte for byte, and retention may then
delete the recording. A box given another store key refuses the receipts: it raises the upload alarm,
keeps every recording unsynced and asks again; given the right key, it finishes.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_sync_faults import DEVICE, central_worker, record_calls

from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import keys_init
from linetap.firmware.spool import Spool, SpoolSettings, list_recordings
from linetap.firmware.spool.layout import RECEIPT_FILE
from linetap.sync.boxsync import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools

WAIT = 60.0
CHANGED = threading.Condition()  # notified when the catalogue marks a recording synced or an alarm is raised


class WatchedSpool(Spool):
    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        super().mark_synced(recording_id, index)
        with CHANGED:
            CHANGED.notify_all()


def wait_for(predicate, timeout: float = WAIT) -> bool:
    with CHANGED:
        return CHANGED.wait_for(predicate, timeout)


def states(box: Path) -> dict[str, str]:
    return {r["id"]: r["state"] for r in list_recordings(box)}


def site(tmp_path: Path, store_key: str | None) -> tuple[Path, Path, str, list[str]]:
    central, box = tmp_path / "central", tmp_path / "box"
    made = central_keys_init(central)
    info = keys_init(box, made.recipient, store_key=store_key or made.store_public_key_b64)
    with StoreTools(central) as tools:
        tools.enroll(DEVICE, info.public_key_b64)
    return central, box, made.store_public_key_b64, record_calls(box, seconds=2.0)


def box_sync(box: Path, port: int, alarms: list[tuple[str, str]]) -> tuple[BoxSync, Spool]:
    config = Config().model_copy(update={
        "device": Config().device.model_copy(update={"id": DEVICE}),
        "sync": Config().sync.model_copy(update={"broker": "127.0.0.1", "port": port, "tls": False,
                                                  "reconnect_max_s": 1.0, "ack_timeout_s": 2.0})})
    spool = WatchedSpool(box, device_id=DEVICE, clock=SystemClock(), disk_free=lambda _p: 10 ** 12,
                         settings=SpoolSettings(keep_synced_days=0))

    def alarm(kind: str, detail: str) -> None:
        with CHANGED:
            alarms.append((kind, detail))
            CHANGED.notify_all()

    return BoxSync(config, spool, box, clock=SystemClock(), on_alarm=alarm), spool


@pytest.fixture
def broker(tmp_path: Path):
    started = LocalBroker(tmp_path / "broker").start()
    yield started
    started.stop()


def test_the_box_keeps_the_stores_logged_receipt_and_retention_may_then_delete(tmp_path: Path, broker) -> None:
    central, box, _, ids = site(tmp_path, None)
    alarms: list[tuple[str, str]] = []
    sync, spool = box_sync(box, broker.port, alarms)
    try:
        with central_worker(central, broker.port), sync:
            assert wait_for(lambda: all(s == "synced" for s in states(box).values())), sync.status()
        with StoreTools(central) as tools:
            logged = {rid: tools.index.receipt(DEVICE, rid)["data"] for rid in ids}
        for rid in ids:
            assert (box / "spool" / rid / RECEIPT_FILE).read_bytes() == logged[rid]
        assert all(r["receipt_stored_ms"] is not None for r in list_recordings(box)) and not alarms
        assert sorted(spool.enforce_retention()) == sorted(ids)  # keep_synced_days = 0: all receipted, all go
    finally:
        spool.close()


def test_a_box_that_trusts_another_store_key_keeps_everything_and_asks_again(tmp_path: Path, broker) -> None:
    other = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    central, box, right, ids = site(tmp_path, other)
    alarms: list[tuple[str, str]] = []
    sync, spool = box_sync(box, broker.port, alarms)
    try:
        with central_worker(central, broker.port), sync:
            assert wait_for(lambda: len({d.split()[0] for _, d in alarms}) == len(ids)), (alarms, sync.status())
            assert wait_for(lambda: len(alarms) > len(ids))  # each manifest went again after its back-off
            assert set(states(box).values()) == {"closed"}
            assert spool.enforce_retention() == []
    finally:
        spool.close()
    kind, detail = alarms[0]
    assert kind == "upload-rejected" and "code=receipt-invalid" in detail and "does not trust" in detail
    assert not any((box / "spool" / rid / RECEIPT_FILE).exists() for rid in ids)
    # Given the right key, the same box finishes: the centre answers each repeat with its logged receipt.
    keys_init(box, (box / "keys" / "central.recipient").read_text().strip(), store_key=right)
    sync, spool = box_sync(box, broker.port, alarms)
    try:
        with central_worker(central, broker.port), sync:
            assert wait_for(lambda: all(s == "synced" for s in states(box).values())), sync.status()
    finally:
        spool.close()
    with StoreTools(central) as tools:
        for rid in ids:
            assert (box / "spool" / rid / RECEIPT_FILE).read_bytes() == tools.index.receipt(DEVICE, rid)["data"]
