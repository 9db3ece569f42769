"""The fleet and retention pages' sans-IO parts: rows from the tracker's views, and hostile forms read."""

from __future__ import annotations

import pytest

from linetap.firmware.errors import ConfigError
from linetap.sync.central.config import DAY_MS, RetentionSection
from linetap.sync.central.observation import UNRECEIPTED_ALARM, DeviceView
from linetap.sync.central.web.fleetview import FormError, command_request, config_request, fleet_rows, size, span
from linetap.sync.central.web.retentionview import confirmed, due_rows, policy_text, target

NOW = 1_800_000_000_000
REC = "0f6c1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"


def view(device_id: str, state: str, *, alarm: str | None = None, unreceipted: int = 0) -> DeviceView:
    spool = {"unsynced_recordings": 3, "unsynced_bytes": 2_500_000, "oldest_unsynced_age_s": 7200,
             "free_bytes": 10**9, "synced_without_receipt": unreceipted}
    subjects = {"status": {"body": {"state": state, "boot": 1, "session": 1, "clock": {"synced": True}},
                           "received_ms": NOW - 90_000},
                "birth": {"body": {"software_version": "1.4.0", "board": "pi4-hat", "config_version": 3,
                                   "spool": spool, "clock": {"synced": True}}, "received_ms": NOW - 90_000}}
    if alarm:
        subjects[f"alarm/{alarm}"] = {"body": {"active": True, "alarm": alarm, "detail": "spool 95 % full"},
                                      "received_ms": NOW - 60_000}
    return DeviceView.from_row({"device_id": device_id, "enrolled": True, "last_seen_ms": NOW - 90_000,
                                "subjects": subjects})


def test_fleet_rows_show_state_backlog_versions_and_alarms_with_their_detail() -> None:
    rows = fleet_rows([view("desk-a", "online"), view("desk-b", "online", alarm="spool-full"),
                       view("desk-c", "offline", unreceipted=2)], NOW)
    assert [r.device_id for r in rows] == ["desk-b", "desk-c", "desk-a"]  # who needs a look comes first
    alarmed, offline, fine = rows
    assert alarmed.alarms == (("spool-full", "spool 95 % full"),)
    assert offline.state == "offline" and offline.synced_without_receipt == 2
    assert offline.alarms[0][0] == UNRECEIPTED_ALARM and "receipt" in offline.alarms[0][1]
    assert (fine.last_seen_ago, fine.software_version, fine.board, fine.config_version) == \
        ("1 min ago", "1.4.0", "pi4-hat", "3")
    assert (fine.backlog, fine.oldest_unsynced, fine.alarms) == ("3 (2.5 MB)", "2 h", ())


def test_spans_and_sizes_read_as_people_say_them() -> None:
    assert [span(ms) for ms in (0, 59_999, 60_000, 3_600_000, 2 * 86_400_000)] == ["0 s", "59 s", "1 min", "1 h", "2 d"]
    assert [size(n) for n in (None, 999, 1000, 5 * 10**9)] == ["?", "999 B", "1.0 kB", "5.0 GB"]


def test_a_command_form_is_read_within_the_boxes_own_bounds() -> None:
    wanted = command_request({"device": "desk-a", "command": "identify", "seconds": "30", "lines": "5"})
    assert (wanted.device_id, wanted.name, wanted.args) == ("desk-a", "identify", {"seconds": 30})
    assert wanted.describe() == "identify seconds=30 to desk-a"
    assert command_request({"device": "desk-a", "command": "ping"}).args == {}


@pytest.mark.parametrize(("form", "says"), [
    ({"command": "ping"}, "no device"),
    ({"device": "../etc", "command": "ping"}, "not a device id"),
    ({"device": "desk-a", "command": "format-disk"}, "not one of"),
    ({"device": "desk-a", "command": "identify", "seconds": "601"}, "from 1 to 600"),
    ({"device": "desk-a", "command": "identify", "seconds": "1e3"}, "whole number"),
    ({"device": "desk-a", "command": "identify", "seconds": "\uff13"}, "whole number"),  # a full-width digit
    ({"device": "desk-a", "command": "identify", "seconds": "-5"}, "whole number"),
    ({"device": "desk-a\x00", "command": "ping"}, "control characters"),
    ({"device": "d" * 5000, "command": "ping"}, "more than 64"),
])
def test_a_bad_command_form_is_refused_naming_the_field(form: dict[str, str], says: str) -> None:
    with pytest.raises(FormError, match=says):
        command_request(form)


def test_a_config_form_names_its_boxes_or_all_and_is_checked_as_the_boxes_check_it() -> None:
    wanted = config_request({"config": "[calls]\nring_timeout_s = 6.5\n"}, ["desk-a", "desk-b", "desk-a"])
    assert wanted.devices == ("desk-a", "desk-b") and "ring_timeout_s" in wanted.text
    assert config_request({"config": "[log]\nlevel = \"debug\"\n", "all": "1"}, []).devices is None
    with pytest.raises(FormError, match="not both"):
        config_request({"config": "[log]\nlevel = \"debug\"\n", "all": "1"}, ["desk-a"])
    with pytest.raises(FormError, match="not both"):
        config_request({"config": "[log]\nlevel = \"debug\"\n"}, [])
    with pytest.raises(ConfigError, match="ring_timeout"):
        config_request({"config": "[calls]\nring_timeout_s = -4\n"}, ["desk-a"])
    with pytest.raises(ConfigError):
        config_request({"config": "[" * 10_000}, ["desk-a"])
    with pytest.raises(FormError, match="more than 65536"):
        config_request({"config": "#" * 70_000}, ["desk-a"])


def test_a_hold_or_erase_form_names_a_real_recording_id_and_a_bounded_reason() -> None:
    wanted = target({"device": "desk-a", "recording": REC, "reason": " case 114 "}, reason_required=True)
    assert (wanted.device_id, wanted.recording_id, wanted.reason) == ("desk-a", REC, "case 114")
    with pytest.raises(FormError, match="not a recording id"):
        target({"device": "desk-a", "recording": "../../keys/operator.key", "reason": "x"}, reason_required=True)
    with pytest.raises(FormError, match="no reason"):
        target({"device": "desk-a", "recording": REC, "reason": "   "}, reason_required=True)
    with pytest.raises(FormError, match="more than 500"):
        target({"device": "desk-a", "recording": REC, "reason": "x" * 501}, reason_required=True)
    assert not confirmed({"confirm": "yes"}, wanted) and confirmed({"confirm": f" {REC} "}, wanted)


def test_the_preview_lists_what_is_due_oldest_first_and_what_a_hold_keeps() -> None:
    policy = RetentionSection(default_days=30, flagged_days=365)
    def row(n: int, started_days_ago: int, *, flagged: bool = False, hold_reason: str | None = None) -> dict:
        return {"device_id": "desk-a", "recording_id": f"r{n}", "seq": n, "flagged": flagged,
                "started_ms": NOW - started_days_ago * DAY_MS, "hold_reason": hold_reason}
    rows = due_rows([row(1, 40), row(2, 400, flagged=True)], [row(3, 50, hold_reason="case 114")], policy)
    assert [(r.recording_id, r.category, r.held) for r in rows] == \
        [("r2", "flagged", False), ("r3", "default", True), ("r1", "default", False)]
    assert rows[0].due_ms == NOW - 35 * DAY_MS and rows[1].hold_reason == "case 114"
    assert policy_text(RetentionSection()) == ("calls kept for ever, flagged calls kept for ever after they "
                                               "started; a legal hold keeps a call past its days")
