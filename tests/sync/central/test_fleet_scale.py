"""200 boxes, one Mosquitto: the fleet list is right, a fleet-wide push reaches every box, a broker
restart leaves no status wrong.

The boxes are the real FleetAgent on one paho client each, spread over box
processes (spawned: never fork a process that runs threads). Each reports
(device, session) once the broker has its birth, so the test waits on those
reports, never on the clock.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_boxes import device_key, run_boxes

from linetap.firmware.keys import public_key_b64, public_key_raw
from linetap.sync.broker import LocalBroker
from linetap.sync.central import cli
from linetap.sync.central.index import INDEX_FILE, SqliteIndex
from linetap.sync.central.keys import keys_init, operator_public_key
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.mqtt import BrokerSettings

BOXES = 200
PROCESSES = 4
DEVICES = [f"lt-scale-{i:03d}" for i in range(BOXES)]


def wait_sessions(events: multiprocessing.Queue, session: int, timeout: float) -> set[str]:
    """The boxes that reported ``session`` online before ``timeout`` ran out (all of them, normally)."""
    online: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(online) < BOXES:
        try:
            device_id, reported = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if reported == session:
            online.add(device_id)
    return online


@pytest.fixture
def fleet_of_boxes(central: Path, tmp_path: Path) -> Iterator[tuple[LocalBroker, multiprocessing.Queue]]:
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    stop = context.Event()
    with LocalBroker(tmp_path / "broker", persistence=True) as broker:
        operator_raw = public_key_raw(operator_public_key(central))
        processes = [context.Process(target=run_boxes, name=f"boxes-{n}",
                                     args=(DEVICES[n::PROCESSES], broker.host, broker.port, operator_raw,
                                           events, stop))
                     for n in range(PROCESSES)]
        for process in processes:
            process.start()
        try:
            yield broker, events
        finally:
            stop.set()
            for process in processes:
                process.join(20)
                if process.is_alive():
                    process.terminate()
                    process.join(5)


@pytest.fixture
def central(tmp_path: Path) -> Path:
    folder = tmp_path / "central"
    keys_init(folder)
    with SqliteIndex(folder / INDEX_FILE) as index:
        for device_id in DEVICES:
            index.enroll(device_id, public_key_b64(device_key(device_id).public_key()), 1)
    return folder


def fleet_cli(folder: Path, config: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.main([*argv, "--json", "--data-dir", str(folder), "--config", str(config)])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_hundred_boxes(central: Path, fleet_of_boxes: tuple[LocalBroker, multiprocessing.Queue],
                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broker, events = fleet_of_boxes
    config = central / "central.toml"
    config.write_text(f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n')
    settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10, reconnect_min_s=0.2,
                              reconnect_max_s=1.0)
    assert len(wait_sessions(events, 1, 40)) == BOXES

    # Live, from the retained messages alone (nothing tracked yet).
    code, listing = fleet_cli(central, config, capsys, "fleet", "list")
    assert code == 0 and listing["live"] is True
    assert [(d["device_id"], d["state"], d["software_version"]) for d in listing["devices"]] == \
        [(d, "online", "1.4.0") for d in DEVICES]

    with SqliteIndex(central / INDEX_FILE) as index, \
            FleetTracker(index, settings, client_id="scale-tracker") as tracker:
        tracker.wait_ready(10)
        tracker.flush(20)
        code, listing = fleet_cli(central, config, capsys, "fleet", "list")
        assert listing["live"] is False and sum(d["state"] == "online" for d in listing["devices"]) == BOXES

        site = tmp_path / "site.toml"
        site.write_text('[log]\nlevel = "debug"\n')
        code, pushed = fleet_cli(central, config, capsys, "fleet", "config", "push", "--all", str(site),
                                 "--timeout", "30")
        with capsys.disabled():
            print(f"\nfleet-wide config push: {BOXES} boxes applied, last report {pushed['seconds']:.2f} s "
                  "after the push")
        assert code == 0 and pushed["counts"] == {"applied": BOXES, "rejected": 0, "timeout": 0, "not-sent": 0}

        broker.restart()
        assert len(wait_sessions(events, 2, 40)) == BOXES
        tracker.wait_ready(20, sessions=2)
        tracker.flush(20)
        rows = {row["device_id"]: row for row in index.fleet_devices()}
        assert {(row["subjects"]["status"]["body"]["state"], row["session"]) for row in rows.values()} == \
            {("online", 2)}
        assert all(row["subjects"]["config/reported"]["body"]["applied_version"] == 1 for row in rows.values())

    code, listing = fleet_cli(central, config, capsys, "fleet", "list", "--live")
    assert {(d["state"], d["session"], d["config_version"]) for d in listing["devices"]} == {("online", 2, 1)}
