"""The centre's alarm for boxes whose uploads go unacknowledged, from their telemetry, over a real broker."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from linetap.sync import fleetwire
from linetap.sync.broker import LocalBroker
from linetap.sync.central import cli
from linetap.sync.central.fleet import fleet_views
from linetap.sync.central.index import INDEX_FILE, SqliteIndex
from linetap.sync.central.observation import UNACKED_ALARM
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.uploader import with_overdue_acks

WAIT = 10.0
CLOCK = {"synced": True, "wall_ms": 1_800_000_000_000}


def telemetry(device_id: str, overdue: int, oldest: float | None) -> fleetwire.Outbound:
    body = {"clock": CLOCK, "config_version": 0, "recording": False, "overruns": 0, "uptime_s": 60,
            "spool": {"unsynced_recordings": overdue, "unsynced_bytes": 0, "oldest_unsynced_age_s": None,
                      "free_bytes": 10**9}}
    message = fleetwire.Outbound(fleetwire.telemetry_topic(device_id), json.dumps(body).encode(), qos=0)
    return with_overdue_acks(message, {"overdue_acks": overdue, "oldest_overdue_s": oldest})


def status(device_id: str) -> fleetwire.Outbound:
    body = {"boot": 1, "session": 1, "state": "online", "clock": CLOCK}
    return fleetwire.Outbound(fleetwire.status_topic(device_id), json.dumps(body).encode(), qos=1, retain=True)


pytestmark = pytest.mark.broker("test", persistence=False)


@pytest.fixture
def boxes(broker: LocalBroker) -> Iterator[mqtt.Client]:
    """One connection speaking for several boxes (the loopback broker has no roles): order is kept."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="boxes", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def named(caplog: pytest.LogCaptureFixture) -> dict[str, tuple[str, str]]:
    """Device → (overdue acks, oldest s) from every "uploads unacknowledged" WARNING logged."""
    found = {}
    for record in caplog.records:
        match = re.match(r"uploads unacknowledged device_ids=(\S+) overdue_acks=(\S+) oldest_overdue_s=([^;]+);",
                         record.getMessage())
        if record.levelno == logging.WARNING and match:
            found.update(zip(match[1].split(","), zip(match[2].split(","), match[3].split(","))))
    return found


def send(client: mqtt.Client, *messages: fleetwire.Outbound) -> None:
    for m in messages:
        client.publish(m.topic, m.payload, qos=1, retain=m.retain).wait_for_publish(WAIT)


def test_the_tracker_names_the_boxes_whose_uploads_go_unacknowledged(
        broker: LocalBroker, boxes: mqtt.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "central"
    folder.mkdir()
    (folder / "central.toml").write_text(f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n')
    settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10)
    index = SqliteIndex(folder / INDEX_FILE)
    caplog.set_level(logging.INFO, logger="linetap.sync.central.tracker")
    with FleetTracker(index, settings, client_id="tracker", owns_index=True) as tracker:
        tracker.wait_ready(WAIT)
        send(boxes, status("lt-a"), status("lt-b"), status("lt-c"),
             telemetry("lt-a", 12, 140.4), telemetry("lt-b", 0, None), telemetry("lt-c", 3, 61.0))
        tracker.flush(WAIT)
        # One WARNING per batch the tracker writes: the telemetry may come in one batch or several.
        assert named(caplog) == {"lt-a": ("12", "140"), "lt-c": ("3", "61")}
        assert tracker.unacknowledged == {"lt-a": (12, 140), "lt-c": (3, 61)}
        views = {v.device_id: v for v in fleet_views(index)}
        assert UNACKED_ALARM in views["lt-a"].alarms and UNACKED_ALARM not in views["lt-b"].alarms
        assert (views["lt-c"].overdue_acks, views["lt-c"].oldest_overdue_s) == (3, 61)

        assert cli.main(["fleet", "list", "--data-dir", str(folder), "--config", str(folder / "central.toml")]) == 0
        rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
        assert UNACKED_ALARM in rows["lt-a"] and UNACKED_ALARM in rows["lt-c"] and UNACKED_ALARM not in rows["lt-b"]
        assert cli.main(["fleet", "show", "lt-a", "--data-dir", str(folder),
                         "--config", str(folder / "central.toml"), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["overdue_acks"], shown["oldest_overdue_s"], UNACKED_ALARM in shown["alarms"]) == (12, 140, True)

        # lt-a's acks come through again: its alarm clears, lt-c's stays.
        caplog.clear()
        send(boxes, telemetry("lt-a", 0, None))
        tracker.flush(WAIT)
        assert tracker.unacknowledged == {"lt-c": (3, 61)}
        assert any("uploads acknowledged again device_id=lt-a" in r.getMessage() for r in caplog.records)
        assert UNACKED_ALARM not in {v.device_id: v for v in fleet_views(tracker.index)}["lt-a"].alarms


def test_telemetry_from_a_box_that_reports_no_acks_is_still_accepted(
        broker: LocalBroker, boxes: mqtt.Client, tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / INDEX_FILE)
    settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10)
    older = json.loads(telemetry("lt-old", 0, None).payload)
    del older["upload"]
    with FleetTracker(index, settings, client_id="tracker", owns_index=True) as tracker:
        tracker.wait_ready(WAIT)
        send(boxes, status("lt-old"), fleetwire.Outbound(fleetwire.telemetry_topic("lt-old"), json.dumps(older).encode()))
        tracker.flush(WAIT)
        [view] = fleet_views(index)
        assert view.alarms == () and view.overdue_acks is None and "telemetry" in view.subjects
