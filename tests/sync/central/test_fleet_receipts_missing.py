"""The centre's alarm for boxes that keep synced recordings for want of a receipt, from their telemetry."""

from __future__ import annotations

from typing import Any

import pytest

from linetap.sync.central.observation import UNRECEIPTED_ALARM, DeviceView


def row(spool: dict[str, Any]) -> dict[str, Any]:
    body = {"clock": {"synced": True, "wall_ms": 1}, "config_version": 0, "recording": False, "overruns": 0,
            "uptime_s": 60, "spool": {"unsynced_recordings": 0, "unsynced_bytes": 0,
                                      "oldest_unsynced_age_s": None, "free_bytes": 10**9} | spool}
    return {"device_id": "box-a", "enrolled": True, "boot": 1, "session": 1, "last_seen_ms": 1,
            "subjects": {"telemetry": {"body": body, "received_ms": 1}}}


@pytest.mark.parametrize(("spool", "alarmed", "count"), [
    ({"synced_without_receipt": 3}, True, 3),
    ({"synced_without_receipt": 0}, False, 0),
    ({}, False, None),  # a box from before receipts says nothing: no alarm, no figure
])
def test_a_box_holding_unreceipted_recordings_is_alarmed(spool: dict[str, Any], alarmed: bool,
                                                          count: int | None) -> None:
    view = DeviceView.from_row(row(spool))
    assert (UNRECEIPTED_ALARM in view.alarms) is alarmed
    assert view.synced_without_receipt == count
