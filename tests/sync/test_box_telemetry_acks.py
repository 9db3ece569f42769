"""The running box's telemetry carries its overdue acks (BoxSync on a real broker, as in test_fleet_box)."""

from __future__ import annotations

import pytest
from test_fleet_box import DEV, Hooks, Operator, Site, boxes, online, operator, site  # noqa: F401 (fixtures)

from linetap.firmware.clock import ManualClock
from linetap.sync import fleet, fleetwire


def test_telemetry_says_how_many_uploads_are_unacknowledged(site: Site, operator: Operator, boxes,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    box = boxes(site, Hooks(), clock=clock)
    online(operator, 1)
    figures = box.sync.uploader.status() | {"overdue_acks": 7, "oldest_overdue_s": 125.9}
    monkeypatch.setattr(box.sync.uploader, "status", lambda: dict(figures))  # what its thread would report
    clock.advance(60)
    box.sync.tick()
    body = operator.latest(fleetwire.telemetry_topic(DEV))
    assert body["upload"] == {"overdue_acks": 7, "oldest_overdue_s": 125}


def test_telemetry_says_how_many_synced_recordings_wait_for_a_receipt(site: Site, operator: Operator, boxes,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    box = boxes(site, Hooks(), clock=clock)
    online(operator, 1)
    real = box.spool.status
    monkeypatch.setattr(box.spool, "status", lambda: real() | {"synced_without_receipt": 2})  # as the spool counts
    clock.advance(60)
    box.sync.tick()
    assert operator.latest(fleetwire.telemetry_topic(DEV))["spool"]["synced_without_receipt"] == 2
