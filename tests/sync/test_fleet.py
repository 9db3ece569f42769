"""The box's side of the fleet protocol: commands run once and answer signed, configs apply or roll back."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from linetap.firmware.clock import ManualClock
from linetap.firmware.config import Config
from linetap.firmware.errors import DeviceMissing, LinetapError
from linetap.sync import fleet, fleetcommands, fleetwire
from linetap.sync.fleet import FleetAgent
from linetap.sync.fleetwire import BirthInfo, SpoolFigures, Telemetry
from linetap.sync.pushpolicy import MIB, BoxFacts
from linetap.sync.signed import key_table, open_envelope, seal

DEV = "lt-desk-1"
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
TTL = 60_000
SPOOL = SpoolFigures(unsynced_recordings=3, unsynced_bytes=90_000, oldest_unsynced_age_s=120,
                     free_bytes=2_000_000_000)


class RecordedEffects:
    """Effects that note each call; ``fail`` names effects that raise as a failed driver would."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail = fail

    def _note(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            raise DeviceMissing(f"{name}: audio device 'hw:1' is missing; plug the codec in")

    def effects(self) -> dict[str, Callable[..., Any]]:
        return dict(
            ping=lambda: self._note("ping") or {"uptime_s": 42},
            identify=lambda seconds: self._note("identify", seconds),
            test_announcement=lambda: self._note("test_announcement"),
            sync_now=lambda: self._note("sync_now"),
            logs=lambda lines: self._note("logs", lines) or [f"line {i}" for i in range(1000)],
            purge_synced=lambda: self._note("purge_synced") or 4,
            restart=lambda: self._note("restart"),
            apply_config=lambda new, changed: self._note("apply_config", new, changed),
            rollback_config=lambda old: self._note("rollback_config", old),
        )

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


# Each command action: the effect it asks for, with its arguments.
EFFECT_OF: dict[type, Callable[[Any], tuple[str, tuple[Any, ...]]]] = {
    fleetcommands.Ping: lambda _a: ("ping", ()),
    fleetcommands.ShowIdentify: lambda a: ("identify", (a.seconds,)),
    fleetcommands.PlayTestAnnouncement: lambda _a: ("test_announcement", ()),
    fleetcommands.SyncNow: lambda _a: ("sync_now", ()),
    fleetcommands.ReadLogs: lambda a: ("logs", (a.lines,)),
    fleetcommands.PurgeSynced: lambda _a: ("purge_synced", ()),
    fleet.ApplyConfig: lambda a: ("apply_config", (a.config, a.sections)),
}


class Box:
    """One agent, the actions it returns run as the box runs them, its saved state, a clock the test moves."""

    def __init__(self, clock: ManualClock, state: dict[str, Any] | None = None,
                 fail: frozenset[str] = frozenset(), boot: int = 1, local: dict[str, Any] | None = None,
                 facts: BoxFacts | None = None, **replaced: Any) -> None:
        self.clock = clock
        self.recorded = RecordedEffects(fail)
        self.effects = {**self.recorded.effects(), **replaced}
        self.saved: list[dict[str, Any]] = []
        self.facts = facts
        config = Config.model_validate({"device": {"id": DEV}, **(local or {})})
        self.agent = FleetAgent(device_id=DEV, signing_key=DEVICE_KEY,
                                operator_keys=key_table([OPERATOR.public_key()]), clock=clock, config=config,
                                state=state, boot=boot, can_restart=True)

    @property
    def now_ms(self) -> int:
        return round(self.clock.wall() * 1000)

    def run(self, actions: list[Any]) -> Any:
        """Execute ``actions`` in order as the box's shell does; the Reply or ConfigReport published."""
        answer, todo = None, list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, fleet.SaveState):
                self.saved.append(json.loads(json.dumps(action.state)))
            elif isinstance(action, (fleet.Reply, fleet.ConfigReport)):
                answer = action
            elif isinstance(action, fleetcommands.Restart) and isinstance(answer, fleet.Reply):
                self.effects["restart"]()  # after a config report, restarting is part of applying it
            elif isinstance(action, fleet.RollbackConfig):
                self.effects["rollback_config"](action.config)
            elif type(action) in EFFECT_OF:
                todo[:0] = self._effect(action)
        return answer

    def _effect(self, action: Any) -> list[Any]:
        name, args = EFFECT_OF[type(action)](action)
        done = self.agent.config_done if isinstance(action, fleet.ApplyConfig) else self.agent.command_done
        try:
            outcome = self.effects[name](*args)
        except LinetapError as e:
            return done(action, error=e)
        return done(action) if isinstance(action, fleet.ApplyConfig) else done(action, outcome)

    def handle_config(self, payload: bytes) -> fleet.ConfigReport:
        return self.run(self.agent.handle_config(payload, self.facts))

    def command(self, name: str, seq: int | None = 1, *, topic_name: str | None = None,
                nonce: str | None = None, correlation: bytes | None = b"req-1",
                response_topic: str | None = None, **args: Any) -> tuple[fleet.Reply, dict[str, Any]]:
        payload = seal("cmd", DEV, fleetwire.command_body(name, **args), OPERATOR, seq=seq, nonce=nonce,
                       now_ms=self.now_ms, ttl_ms=TTL)
        return self.send(fleetwire.cmd_topic(DEV, topic_name or name), payload, correlation, response_topic)

    def send(self, topic: str, payload: bytes, correlation: bytes | None = b"req-1",
             response_topic: str | None = None) -> tuple[fleet.Reply, dict[str, Any]]:
        response = self.run(self.agent.handle_command(topic, payload, response_topic or fleetwire.resp_topic(DEV),
                                                      correlation))
        return response, verified(response.payload, response.status)

    def push(self, toml: str, version: int, device: str = DEV) -> tuple[fleet.ConfigReport, dict[str, Any]]:
        payload = seal("config", device, fleetwire.config_body(toml), OPERATOR, seq=version,
                       now_ms=self.now_ms, ttl_ms=TTL)
        report = self.handle_config(payload)
        return report, verified(report.payload, report.outcome)


def verified(payload: bytes, expected_status: str) -> dict[str, Any]:
    """The body of a box's answer, after checking it as the centre would: signed by the device key."""
    envelope = open_envelope(payload, trusted_keys=key_table([DEVICE_KEY.public_key()]), device_id=DEV,
                             kind="resp", now_ms=None, max_bytes=128 * 1024)
    assert envelope.body.get("status", envelope.body.get("outcome")) == expected_status
    return envelope.body | {"_seq": envelope.seq, "_nonce": envelope.nonce}


@pytest.fixture
def box(clock: ManualClock) -> Box:
    return Box(clock)


# --------------------------------------------------------------- commands --

@pytest.mark.parametrize("name, args, effect, result", [
    ("ping", {}, ("ping", ()), {"pong": True, "figures": {"uptime_s": 42}}),
    ("identify", {"seconds": 30}, ("identify", (30,)), {"seconds": 30}),
    ("identify", {}, ("identify", (15,)), {"seconds": 15}),
    ("test-announcement", {}, ("test_announcement", ()), {}),
    ("sync-now", {}, ("sync_now", ()), {}),
    ("purge-synced", {}, ("purge_synced", ()), {"purged": 4}),
    ("restart", {}, ("restart", ()), {"restarting": True}),
])
def test_each_command_calls_exactly_its_effect(box: Box, name: str, args: dict[str, int],
                                               effect: tuple[str, tuple[Any, ...]],
                                               result: dict[str, Any]) -> None:
    response, body = box.command(name, seq=12, correlation=b"\x00req-7", **args)
    assert box.recorded.calls == [effect]
    assert (response.status, response.command, response.code) == ("ok", name, None)
    assert response.topic == fleetwire.resp_topic(DEV) and response.correlation_data == b"\x00req-7"
    assert body["result"] == result and body["command"] == name
    assert body["_seq"] == 12 and base64.b64decode(body["correlation"]) == b"\x00req-7"
    assert body["clock_synced"] is True and body["time_checked"] is True


def test_logs_returns_the_last_lines_asked_for(box: Box) -> None:
    response, body = box.command("logs", lines=3)
    assert box.recorded.calls == [("logs", (3,))]
    assert body["result"] == {"lines": ["line 997", "line 998", "line 999"], "truncated": False}


def test_logs_stay_within_one_message(clock: ManualClock) -> None:
    box = Box(clock, logs=lambda lines: ["é" * 5000] * lines)
    response, body = box.command("logs", lines=fleetwire.MAX_LOG_LINES)
    assert body["result"]["truncated"] is True
    assert all(len(line) == fleetwire.MAX_LOG_LINE for line in body["result"]["lines"])
    assert len(response.payload) < 128 * 1024


def test_a_nonce_command_is_answered_with_its_nonce(box: Box) -> None:
    response, body = box.command("ping", seq=None, nonce="n0nce-0000000001")
    assert response.status == "ok" and body["_nonce"] == "n0nce-0000000001" and body["_seq"] is None


def test_a_failing_effect_is_a_failed_response_naming_it(clock: ManualClock) -> None:
    box = Box(clock, fail=frozenset({"test_announcement"}))
    response, body = box.command("test-announcement")
    assert (response.status, response.code) == ("failed", "effect-failed")
    assert "DeviceMissing" in body["reason"] and "hw:1" in body["reason"]


def refusals(box: Box) -> dict[str, tuple[str, bytes, bytes | None]]:
    """One command per refusal: (topic, payload, correlation)."""
    def sealed(name: str = "ping", seq: int = 50, device: str = DEV, now_ms: int | None = None,
               key: Ed25519PrivateKey = OPERATOR, **args: Any) -> bytes:
        return seal("cmd", device, fleetwire.command_body(name, **args), key, seq=seq,
                    now_ms=box.now_ms if now_ms is None else now_ms, ttl_ms=TTL)

    ping = fleetwire.cmd_topic(DEV, "ping")
    good = sealed()
    unsigned = json.loads(good)
    del unsigned["signature"]
    return {
        "replayed": (ping, sealed(seq=1), None),
        "expired": (ping, sealed(now_ms=box.now_ms - 2 * TTL), None),
        "unsigned": (ping, json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode(), None),
        "unknown-key": (ping, sealed(key=DEVICE_KEY), None),
        "bad-signature": (ping, good.replace(b'"seq":50', b'"seq":51'), None),
        "wrong-device": (ping, sealed(device="lt-desk-2"), None),
        "malformed": (ping, b"{not json", None),
        "oversized": (ping, good[:-1] + b" " * fleetwire.MAX_COMMAND_BYTES + b"}", None),
        "unknown-command": (fleetwire.cmd_topic(DEV, "self-destruct"), sealed("self-destruct"), None),
        "bad-args": (fleetwire.cmd_topic(DEV, "identify"), sealed("identify", seconds=0), None),
    }


@pytest.mark.parametrize("code", ["replayed", "expired", "unsigned", "unknown-key", "bad-signature",
                                  "wrong-device", "malformed", "oversized", "unknown-command", "bad-args"])
def test_every_refusal_is_a_signed_error_response_and_nothing_runs(box: Box, code: str) -> None:
    box.command("identify", seq=1)  # the replay guard has now seen seq 1
    box.recorded.calls.clear()
    topic, payload, _ = refusals(box)[code]
    response, body = box.send(topic, payload, correlation=b"req-9")
    assert (response.status, response.code, body["code"]) == ("refused", code, code)
    assert box.recorded.calls == []
    assert base64.b64decode(body["correlation"]) == b"req-9" and body["reason"]


@pytest.mark.parametrize("topic, code", [
    (f"linetap/v1/{DEV}/cmd/identify", "malformed"),  # signed as ping
    ("linetap/v1/lt-desk-2/cmd/ping", "wrong-device"),
    (f"linetap/v1/{DEV}/cmd", "malformed"),
    (f"linetap/v1/{DEV}/cmd/ping/extra", "malformed"),
])
def test_the_topic_must_name_this_box_and_the_signed_command(box: Box, topic: str, code: str) -> None:
    payload = seal("cmd", DEV, fleetwire.command_body("ping"), OPERATOR, seq=3, now_ms=box.now_ms, ttl_ms=TTL)
    response, _ = box.send(topic, payload)
    assert (response.status, response.code) == ("refused", code)
    assert box.recorded.calls == []


def test_a_refused_command_does_not_use_up_its_seq(box: Box) -> None:
    """Only a signed command whose topic matches is admitted; a misrouted copy does not burn the number."""
    payload = seal("cmd", DEV, fleetwire.command_body("ping"), OPERATOR, seq=3, now_ms=box.now_ms, ttl_ms=TTL)
    assert box.send(fleetwire.cmd_topic(DEV, "identify"), payload)[0].status == "refused"
    assert box.send(fleetwire.cmd_topic(DEV, "ping"), payload)[0].status == "ok"
    assert box.send(fleetwire.cmd_topic(DEV, "ping"), payload)[0].code == "replayed"
    assert box.recorded.names == ["ping"]


def test_correlation_data_too_long_is_refused_and_not_echoed(box: Box) -> None:
    response, body = box.command("ping", correlation=b"x" * (fleetcommands.MAX_CORRELATION + 1))
    assert (response.code, response.correlation_data) == ("malformed", None) and "correlation" not in body
    assert box.recorded.calls == []


@pytest.mark.parametrize("asked, used", [
    (f"linetap/v1/{DEV}/resp/central-1/77", f"linetap/v1/{DEV}/resp/central-1/77"),
    ("linetap/v1/lt-desk-2/resp", f"linetap/v1/{DEV}/resp"),
    (f"linetap/v1/{DEV}/resp/#", f"linetap/v1/{DEV}/resp"),
    ("central/inbox", f"linetap/v1/{DEV}/resp"),
])
def test_responses_go_only_where_the_box_may_publish(box: Box, asked: str, used: str) -> None:
    response, _ = box.command("ping", response_topic=asked)
    assert response.topic == used


def test_with_the_clock_unsynchronised_a_stale_sequenced_command_runs_and_says_so(clock: ManualClock) -> None:
    box = Box(clock)
    stale = seal("cmd", DEV, fleetwire.command_body("sync-now"), OPERATOR, seq=5,
                 now_ms=box.now_ms - 10 * TTL, ttl_ms=TTL)
    assert box.send(fleetwire.cmd_topic(DEV, "sync-now"), stale)[0].code == "expired"
    clock.set_synced(False)
    response, body = box.send(fleetwire.cmd_topic(DEV, "sync-now"), stale)
    assert response.status == "ok" and box.recorded.names == ["sync_now"]
    assert body["clock_synced"] is False and body["time_checked"] is False
    response, _ = box.command("ping", seq=None, nonce="n0nce-0000000002")
    assert response.code == "clock-unsynced"


def test_replay_protection_survives_a_restart(clock: ManualClock) -> None:
    box = Box(clock)
    payload = seal("cmd", DEV, fleetwire.command_body("restart"), OPERATOR, seq=8, now_ms=box.now_ms, ttl_ms=TTL)
    assert box.send(fleetwire.cmd_topic(DEV, "restart"), payload)[0].status == "ok"
    reborn = Box(clock, state=box.saved[-1])
    assert reborn.send(fleetwire.cmd_topic(DEV, "restart"), payload)[0].code == "replayed"
    assert reborn.recorded.calls == []


def test_the_command_is_saved_as_seen_before_it_runs(clock: ManualClock) -> None:
    seen_when_run: list[int] = []
    box = Box(clock, restart=lambda: seen_when_run.append(len(box.saved)))
    box.command("restart", seq=2)
    assert seen_when_run == [1]


command_names = st.sampled_from([*fleetcommands.COMMANDS, "bogus"])


@settings(max_examples=200, deadline=None)
@given(name=command_names, payload=st.binary(max_size=400), correlation=st.none() | st.binary(max_size=300))
def test_any_payload_is_refused_with_a_signed_response(name: str, payload: bytes,
                                                       correlation: bytes | None) -> None:
    box = Box(ManualClock())
    response, body = box.send(fleetwire.cmd_topic(DEV, name), payload, correlation)
    assert response.status == "refused" and body["code"] == response.code
    assert box.recorded.calls == []


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_mutation_of_a_valid_command_is_refused(data: st.DataObject) -> None:
    box = Box(ManualClock())
    valid = seal("cmd", DEV, fleetwire.command_body("identify", seconds=5), OPERATOR, seq=2, now_ms=box.now_ms,
                 ttl_ms=TTL)
    mutated = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] ^= data.draw(st.integers(1, 255))
    assume(mutated != valid)  # two changes at one place may cancel out
    response, _ = box.send(fleetwire.cmd_topic(DEV, "identify"), bytes(mutated))
    assert response.status == "refused"
    assert box.recorded.calls == []


# ----------------------------------------------------------------- config --

def test_a_valid_config_is_applied_with_the_sections_that_changed(box: Box) -> None:
    report, body = box.push('[audio]\nrate = 8000\n\n[controls]\nlong_press_s = 2.5\n', version=4)
    assert (report.outcome, report.version, report.applied_version, report.code) == ("applied", 4, 4, None)
    assert report.changed == ("audio", "controls") and body["changed"] == ["audio", "controls"]
    (name, (new, changed)), = box.recorded.calls
    assert name == "apply_config" and changed == {"audio", "controls"}
    assert new.audio.rate == 8000 and new.controls.long_press_s == 2.5 and new.device.id == DEV
    assert box.agent.config == new and box.agent.config_version == 4
    assert box.saved[-1]["config"]["applied_version"] == 4
    assert report.topic == fleetwire.config_reported_topic(DEV) and report.retain


def test_a_schema_error_is_rejected_naming_the_key(box: Box) -> None:
    report, body = box.push("[audio]\nrat = 8000\n", version=2)
    assert (report.outcome, report.code, report.applied_version) == ("rejected", "invalid-config", 0)
    assert "audio.rat" in body["reason"] and "did you mean 'rate'" in body["reason"]
    assert box.recorded.calls == []
    report, body = box.push('[audio]\nblock_ms = "20"\n', version=3)
    assert "audio.block_ms" in body["reason"] and "without quotes" in body["reason"]


@pytest.mark.parametrize("toml, why", [
    ('[device]\nid = "lt-evil"\n', "[device]"),
    ("[audio\n", "not valid TOML"),
])
def test_what_the_local_file_would_refuse_or_the_box_owns_is_rejected(box: Box, toml: str, why: str) -> None:
    report, _ = box.push(toml, version=2)
    assert report.outcome == "rejected" and why in report.reason
    assert box.recorded.calls == []


def test_a_driver_failure_rolls_back_and_is_reported(clock: ManualClock) -> None:
    box = Box(clock, fail=frozenset({"apply_config"}))
    old = box.agent.config
    report, body = box.push("[audio]\nrate = 48000\n", version=6)
    assert (report.outcome, report.code, report.applied_version) == ("rejected", "apply-failed", 0)
    assert box.recorded.calls[1] == ("rollback_config", (old,))
    assert box.recorded.names == ["apply_config", "rollback_config"]
    assert "DeviceMissing" in body["reason"] and "rolled back to version 0" in body["reason"]
    assert box.agent.config is old


def test_a_redelivered_version_is_reported_again_not_reapplied(box: Box) -> None:
    payload = seal("config", DEV, fleetwire.config_body("[audio]\nrate = 8000\n"), OPERATOR, seq=3,
                   now_ms=box.now_ms, ttl_ms=TTL)
    first = box.handle_config(payload)
    again = box.handle_config(payload)
    assert (first.outcome, again.outcome, again.version, again.changed) == ("applied", "applied", 3, ("audio",))
    assert box.recorded.names == ["apply_config"]
    box.clock.advance(5)
    resealed = seal("config", DEV, fleetwire.config_body("[audio]\nrate = 8000\n"), OPERATOR, seq=3,
                    now_ms=box.now_ms, ttl_ms=TTL)
    assert resealed != payload and box.handle_config(resealed).outcome == "applied"
    assert box.recorded.names == ["apply_config"]
    other = seal("config", DEV, fleetwire.config_body("[audio]\nrate = 48000\n"), OPERATOR, seq=3,
                 now_ms=box.now_ms, ttl_ms=TTL)
    assert box.handle_config(other).code == "older-version"


def test_older_versions_are_refused_even_after_a_restart(clock: ManualClock) -> None:
    box = Box(clock)
    box.push("[audio]\nrate = 8000\n", version=9)
    reborn = Box(clock, state=box.saved[-1])
    assert reborn.agent.config_version == 9
    report, body = reborn.push("[audio]\nrate = 48000\n", version=8)
    assert (report.outcome, report.code, report.applied_version) == ("rejected", "older-version", 9)
    assert "not above 9" in body["reason"] and reborn.recorded.calls == []


def test_a_config_with_nothing_new_is_applied_without_touching_drivers(box: Box) -> None:
    report, _ = box.push("", version=1)
    assert (report.outcome, report.changed) == ("applied", ()) and box.recorded.calls == []


def test_a_fleet_wide_config_applies_and_another_boxs_is_refused(box: Box) -> None:
    assert box.push("[log]\nlevel = \"debug\"\n", version=2, device="*")[0].outcome == "applied"
    report, _ = box.push("[log]\nlevel = \"info\"\n", version=3, device="lt-desk-2")
    assert (report.outcome, report.code, report.version) == ("rejected", "wrong-device", None)


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=400))
def test_any_config_payload_is_rejected_without_effects(payload: bytes) -> None:
    box = Box(ManualClock())
    report = box.handle_config(payload)
    assert report.outcome == "rejected" and report.applied_version == 0
    assert box.recorded.calls == [] and box.saved == []
    verified(report.payload, "rejected")


# ------------------------------------------------ status, birth, telemetry --

def test_each_session_pairs_its_will_with_its_online_status(clock: ManualClock) -> None:
    box = Box(clock, boot=7)
    first, second = box.agent.start_session(), box.agent.start_session()
    for session, number in ((first, 1), (second, 2)):
        online, will = json.loads(session.online.payload), json.loads(session.will.payload)
        assert (online["state"], will["state"]) == ("online", "offline")
        assert (online["boot"], online["session"]) == (will["boot"], will["session"]) == (7, number)
        assert session.online.topic == session.will.topic == fleetwire.status_topic(DEV)
        assert session.online.retain and session.will.retain and session.will.qos == 1
    assert fleetwire.fleet_filter("status") == "linetap/v1/+/status"


def test_a_late_will_is_answered_by_the_live_box_and_a_newer_session_is_not_fought(clock: ManualClock) -> None:
    old_boot = Box(clock, boot=3)
    late_will = old_boot.agent.start_session().will.payload
    box = Box(clock, boot=4)
    live = box.agent.start_session()
    assert box.agent.on_status(late_will).payload == live.online.payload
    assert box.agent.on_status(live.online.payload) is None
    assert box.agent.on_status(b"") is not None  # retained status cleared by someone
    newer = Box(clock, boot=5).agent.start_session().online.payload
    assert box.agent.on_status(newer) is None


def test_birth_telemetry_and_alarms_are_bounded_json_on_their_topics(box: Box) -> None:
    box.push("[audio]\nrate = 8000\n", version=5)
    box.agent.start_session()
    birth = box.agent.birth(BirthInfo("0.1.0", "pi4-usb-codec", tuple(f"cap-{i}" for i in range(100)), SPOOL))
    body = json.loads(birth.payload)
    assert (birth.topic, birth.retain) == (fleetwire.birth_topic(DEV), True)
    assert body["config_version"] == 5 and body["session"] == 1 and len(body["capabilities"]) == 32
    assert body["clock"] == {"synced": True, "wall_ms": box.now_ms}
    assert body["spool"]["unsynced_recordings"] == 3
    telemetry = box.agent.telemetry(Telemetry(uptime_s=3600, spool=SPOOL, last_sync_ms=None, recording=True,
                                              near_dbfs=-23.456, far_dbfs=None, overruns=0, cpu_temp_c=51.04))
    body = json.loads(telemetry.payload)
    assert (telemetry.topic, telemetry.qos, body["near_dbfs"], body["cpu_temp_c"]) == (
        fleetwire.telemetry_topic(DEV), 0, -23.5, 51.0)
    alarm = box.agent.alarm("spool-full", active=True, detail="x" * 10_000)
    body = json.loads(alarm.payload)
    assert alarm.topic == f"linetap/v1/{DEV}/alarm/spool-full" and body["active"] and len(body["detail"]) == 500
    assert max(len(m.payload) for m in (birth, telemetry, alarm)) <= fleetwire.MAX_FIGURES
    with pytest.raises(fleet.SyncError, match="not one of"):
        box.agent.alarm("on-fire", active=True)


# ------------------------------------------------------------ push policy --

SITE = {"sync": {"broker": "broker.example.net"},
        "consent": {"opt_out_key": "5", "warning_interval_s": 20.0, "far_speech_wait_s": 8.0}}


@pytest.mark.parametrize("toml, key, why", [
    ('[sync]\nca_file = "/tmp/attacker-ca.pem"\n', "sync.ca_file", "trust anchor"),
    ('[sync]\nbroker = "localhost"\ntls = false\n', "sync.tls", "TLS stays"),
    ('[sync]\ncert_file = "/tmp/other.crt"\n', "sync.cert_file", "its own"),
    ('[sync]\nkey_file = "/etc/shadow"\n', "sync.key_file", "its own"),
    ('[sync]\nbroker = ""\n', "sync.broker", "cut the box off"),
    ('[spool]\non_full = "overwrite-oldest"\n', "spool.on_full", "deletes unsynced"),
    ("[spool]\nmax_bytes = 1\n", "spool.max_bytes", "at least 67108864"),
    ("[spool]\nmin_free_mb = 100000\n", "spool.min_free_mb", "at most 4096"),
    ("[sync]\nbandwidth_bytes_s = 1\n", "sync.bandwidth_bytes_s", "at least 16384"),
    ("[consent]\nannounce = false\n", "consent.announce", "not off"),
    ("[consent]\nwarning_tone = false\n", "consent.warning_tone", "not off"),
    ("[consent]\nwarning_interval_s = 600.0\n", "consent.warning_interval_s", "not lengthen"),
    ("[consent]\nfar_speech_wait_s = 60.0\n", "consent.far_speech_wait_s", "not lengthen"),
    ('[consent]\nopt_out_key = ""\n', "consent.opt_out_key", "never remove or change"),
    ('[consent]\nopt_out_key = "9"\n', "consent.opt_out_key", "never remove or change"),
    ("[consent]\nopt_out_window_s = 1.0\n", "consent.opt_out_window_s", "not shorten"),
    ("[consent]\nprompt_level_dbfs = -40.0\n", "consent.prompt_level_dbfs", "quieter"),
    ("[consent]\nwarning_level_dbfs = -40.0\n", "consent.warning_level_dbfs", "quieter"),
    ('[consent.prompts]\nen = "/etc/shadow"\n', "consent.prompts", "not inside the prompt folders"),
    ('[consent.prompts]\nen = "prompts/en.ogg"\n', "consent.prompts", "not an absolute path"),
    ('[consent.prompts]\nen = "builtin:../../../etc/passwd"\n', "consent.prompts", "named by its language"),
])
def test_a_push_the_policy_refuses_is_rejected_naming_the_key_and_why(clock: ManualClock, toml: str, key: str,
                                                                      why: str) -> None:
    box = Box(clock, local=SITE)
    before = box.agent.config
    report, body = box.push(toml, version=2)
    assert (report.outcome, report.code, report.applied_version) == ("rejected", "policy-refused", 0)
    assert key in body["reason"] and why in body["reason"] and "push policy" in body["reason"]
    assert box.recorded.calls == [] and box.agent.config is before
    assert box.saved[-1]["config"]["last"]["code"] == "policy-refused"  # judged: not tried again


def test_a_prompt_path_with_dotdot_or_a_symlink_out_of_the_folder_is_refused(clock: ManualClock,
                                                                           tmp_path: Any) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "en.ogg").write_bytes(b"OggS")
    (prompts / "escape.ogg").symlink_to("/etc/passwd")
    box = Box(clock, facts=BoxFacts(data_dir=tmp_path, resolve=os.path.realpath))
    for version, (location, why) in enumerate([
            (f"{prompts}/../../etc/passwd", "'..'"),
            (f"{prompts}/escape.ogg", "symbolic link"),
            (str(tmp_path / "en.ogg"), "not inside the prompt folders")], start=2):
        report, body = box.push(f'[consent.prompts]\nen = "{location}"\n', version=version)
        assert report.code == "policy-refused" and why in body["reason"], body["reason"]
    report, _ = box.push(f'[consent.prompts]\nen = "{prompts}/en.ogg"\n', version=9)
    assert (report.outcome, report.consent) == ("applied", ("consent.prompts",))


def test_a_smaller_spool_than_the_unsynced_audio_is_refused_unless_the_local_file_overwrites(
        clock: ManualClock) -> None:
    held = BoxFacts(unsynced_bytes=500 * MIB)
    report, body = Box(clock, facts=held).push(f"[spool]\nmax_bytes = {100 * MIB}\n", version=2)
    assert report.code == "policy-refused" and "524288000 bytes not yet synced" in body["reason"]
    assert Box(clock, facts=held).push(f"[spool]\nmax_bytes = {600 * MIB}\n", version=2)[0].outcome == "applied"
    overwriting = Box(clock, facts=held, local={"spool": {"on_full": "overwrite-oldest"}})
    assert overwriting.push(f"[spool]\nmax_bytes = {100 * MIB}\n", version=2)[0].outcome == "applied"
    # Going back to stopping (never deleting) is always allowed.
    assert overwriting.push('[spool]\non_full = "stop-and-alarm"\n', version=3)[0].outcome == "applied"


@pytest.mark.parametrize("toml", [
    "[consent]\nwarning_interval_s = 10.0\n",
    '[consent]\nannounce_when = "far-speech"\n',
    "[consent]\nopt_out_window_s = 60.0\n",
    '[consent.prompts]\nen = "builtin:en"\nde = "builtin:en"\n',
])
def test_a_consent_change_the_policy_allows_is_applied_and_flagged(clock: ManualClock, toml: str) -> None:
    box = Box(clock, local=SITE)
    report, _ = box.push(toml, version=2)
    assert report.outcome == "applied" and len(report.consent) == 1 and report.consent[0].startswith("consent.")


def test_an_opt_out_key_may_be_added_where_the_site_has_none(box: Box) -> None:
    report, _ = box.push('[consent]\nopt_out_key = "5"\n', version=2)
    assert (report.outcome, report.consent) == ("applied", ("consent.opt_out_key",))
    report, _ = box.push("", version=3)  # the push no longer names it: the local file's value again
    assert (report.outcome, report.consent) == ("applied", ())


def test_each_changed_key_is_logged_with_old_and_new_values(clock: ManualClock,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    box = Box(clock, local=SITE)
    with caplog.at_level("INFO", logger="linetap.sync.fleet"):
        box.push('[consent]\nwarning_interval_s = 10.0\n[sync]\nbroker = "other.example.net"\n'
                 "window = 64\n", version=4)
    lines = {r.getMessage().rsplit(" ", 3)[0].split()[-1]: (r.levelname, r.getMessage())
             for r in caplog.records if "key changed" in r.getMessage()}
    assert lines["consent.warning_interval_s"][0] == "WARNING" and "20.0 -> 10.0" in lines[
        "consent.warning_interval_s"][1]
    assert lines["sync.broker"][0] == "WARNING" and "'broker.example.net' -> 'other.example.net'" in lines[
        "sync.broker"][1]
    assert lines["sync.window"] == ("INFO", lines["sync.window"][1]) and "32 -> 64" in lines["sync.window"][1]
    assert all("version=4" in message for _, message in lines.values())


@pytest.mark.parametrize("toml", [
    "a = " + "[" * 20_000 + "]" * 20_000 + "\n",
    "a = " + "9" * 60_000 + "\n",
    "a." * 5_000 + "b = 1\n",
])
def test_a_hostile_toml_document_is_rejected_not_a_crash(box: Box, toml: str) -> None:
    report, body = box.push(toml, version=2)
    assert (report.outcome, report.code) == ("rejected", "invalid-config") and body["reason"]
    assert box.recorded.calls == []


def sealed_command(box: Box, body: dict[str, Any], seq: int = 7) -> bytes:
    return seal("cmd", DEV, body, OPERATOR, seq=seq, now_ms=box.now_ms, ttl_ms=TTL)


@pytest.mark.parametrize("payload, code", [
    (b'{"body":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "oversized"),
    (b'{"body":{"args":{"seconds":' + b"9" * 100_000 + b'}}}', "oversized"),
    (b"[" * 8_000 + b"]" * 8_000, "malformed"),
    (b'{"body":{"args":{"seconds":' + b"9" * 4_000 + b'}}}', "malformed"),
])
def test_a_deep_or_huge_command_is_refused_with_a_signed_answer(box: Box, payload: bytes, code: str) -> None:
    response, body = box.send(fleetwire.cmd_topic(DEV, "identify"), payload)
    assert (response.status, response.code, body["code"]) == ("refused", code, code)
    assert box.recorded.calls == []


@pytest.mark.parametrize("args", [
    {"seconds": 10 ** 20},  # beyond what a JSON peer reads exactly
    {"seconds": [[[[[[[[[[5]]]]]]]]]]},  # deeper than an envelope may nest
])
def test_a_signed_command_out_of_json_bounds_is_malformed(box: Box, args: dict[str, Any]) -> None:
    response, body = box.send(fleetwire.cmd_topic(DEV, "identify"),
                              sealed_command(box, {"args": args, "name": "identify"}))
    assert (response.status, response.code) == ("refused", "malformed")
    assert box.recorded.calls == []
