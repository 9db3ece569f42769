"""The box's fleet connection end to end: a real Mosquitto, the real BoxSync, an operator's plain paho client.

Commands and configs are sealed with a test operator key and published with
MQTT v5 response topic and correlation data; every answer is verified with
the device's public key.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.drivers.events import HookChanged
from linetap.firmware.callflow import CallEvent, CallFlow, CallRecord, uuid7
from linetap.firmware.callloop import load_prompts, policy_from
from linetap.firmware.clock import Clock, ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.errors import ConfigError, DeviceMissing
from linetap.firmware.keys import keys_init, load_signing_key, public_key_b64
from linetap.firmware.manifest import canonical
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink
from linetap.sync import fleetwire
from linetap.sync.boxsync import AppHooks, AudioFigures, BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.pushedconfig import PushedConfig
from linetap.sync.pushpolicy import consent_note
from linetap.sync.signed import key_table, open_envelope, seal
from netproxy import Proxy

DEV = "lt-fleet-1"
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
WAIT = 15.0
TTL_MS = 60_000


# ------------------------------------------------------------------ helpers --

class SyncedClock(SystemClock):
    """The machine's time, said to be synchronised (a test machine may not run NTP), so expiry is judged."""

    def synced(self) -> bool:
        return True


class Operator:
    """A plain paho client on the box's whole subtree, keeping every message it receives."""

    def __init__(self, port: int, client_id: str = "operator") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._received
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{fleetwire.ROOT}/{DEV}/#", qos=1)
        assert subscribed.wait(WAIT)
        self._seq = 0

    def _received(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[mqtt.MQTTMessage], bool]) -> mqtt.MQTTMessage:
        with self._changed:
            found: list[mqtt.MQTTMessage] = []

            def seen() -> bool:
                found[:] = [m for m in self.messages if predicate(m)]
                return bool(found)

            assert self._changed.wait_for(seen, WAIT), [m.topic for m in self.messages]
            return found[-1]

    def latest(self, topic: str, predicate: Callable[[dict[str, Any]], bool] = lambda _body: True) -> dict:
        return json.loads(self.wait_for(lambda m: m.topic == topic and predicate(json.loads(m.payload))).payload)

    def publish(self, topic: str, payload: bytes, *, correlation: bytes | None = None,
                retain: bool = False) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            properties.ResponseTopic = fleetwire.resp_topic(DEV) + "/operator"
            properties.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, retain=retain, properties=properties).wait_for_publish(WAIT)

    def command(self, name: str, *, seq: int | None = None, device: str = DEV, **args: int) -> bytes:
        if seq is None:
            self._seq += 1
            seq = self._seq
        return seal("cmd", device, fleetwire.command_body(name, **args), OPERATOR, seq=seq, now_ms=now_ms(),
                    ttl_ms=TTL_MS)

    def send(self, name: str, payload: bytes) -> dict[str, Any]:
        """Publish a command and return its verified response body."""
        correlation = f"corr-{len(self.messages)}-{name}".encode()
        self.publish(fleetwire.cmd_topic(DEV, name), payload, correlation=correlation)
        expected = base64.b64encode(correlation).decode()
        reply = self.wait_for(lambda m: m.topic.startswith(fleetwire.resp_topic(DEV))
                              and json.loads(m.payload)["body"].get("correlation") == expected)
        assert reply.properties.CorrelationData == correlation  # the MQTT v5 property, echoed
        return verified(reply.payload)

    def push_config(self, toml_text: str, version: int) -> dict[str, Any]:
        payload = seal("config", DEV, fleetwire.config_body(toml_text), OPERATOR, seq=version, now_ms=now_ms(),
                       ttl_ms=TTL_MS)
        self.publish(fleetwire.config_desired_topic(DEV), payload, retain=True)
        return self.report(version)

    def report(self, version: int) -> dict[str, Any]:
        reply = self.wait_for(lambda m: m.topic == fleetwire.config_reported_topic(DEV)
                              and json.loads(m.payload)["body"]["version"] == version)
        return verified(reply.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def now_ms() -> int:
    return round(SystemClock().wall() * 1000)


DEVICE_KEYS: dict[str, Any] = {}


def verified(payload: bytes) -> dict[str, Any]:
    envelope = open_envelope(payload, trusted_keys=DEVICE_KEYS["table"], device_id=DEV, kind="resp",
                             now_ms=None, max_bytes=256 * 1024)
    return envelope.body


@dataclass
class Hooks:
    """App hooks that note what they were asked to do."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    done: threading.Condition = field(default_factory=threading.Condition)
    check: Callable[[Config], None] | None = None

    def note(self, name: str, value: Any = None) -> None:
        with self.done:
            self.calls.append((name, value))
            self.done.notify_all()

    def wait(self, name: str) -> bool:
        with self.done:
            return self.done.wait_for(lambda: any(n == name for n, _ in self.calls), WAIT)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def hooks(self) -> AppHooks:
        return AppHooks(identify=lambda seconds: self.note("identify", seconds),
                        test_announcement=lambda: self.note("test-announcement"),
                        restart=lambda reason: self.note("restart", reason),
                        audio=lambda: AudioFigures(recording=True, near_dbfs=-20.04, far_dbfs=None, overruns=3),
                        check_config=self.check)


@dataclass
class Site:
    box: Path
    broker: LocalBroker
    port: int  # where the box connects (the broker, or a proxy in front of it)

    def config(self) -> Config:
        return Config().model_copy(update={
            "device": Config().device.model_copy(update={"id": DEV}),
            "sync": Config().sync.model_copy(update={"broker": "127.0.0.1", "port": self.port, "tls": False,
                                                      "reconnect_max_s": 1.0})})

    def sync_toml(self, extra: str = "") -> str:
        """A pushed document that keeps this site's [sync] section, plus ``extra``."""
        return (f'[sync]\nbroker = "127.0.0.1"\nport = {self.port}\ntls = false\nreconnect_max_s = 1.0\n'
                + extra)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    box = tmp_path / "box"
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    keys_init(box, recipient, public_key_b64(OPERATOR.public_key()))
    DEVICE_KEYS["table"] = key_table([load_signing_key(box).public_key()])
    broker = LocalBroker(tmp_path / "broker").start()
    try:
        yield Site(box, broker, broker.port)
    finally:
        broker.stop()


@pytest.fixture
def operator(site: Site) -> Iterator[Operator]:
    op = Operator(site.broker.port)
    yield op
    op.close()


class Box:
    """A running BoxSync on a site, with its spool; closed by the fixture."""

    def __init__(self, site: Site, hooks: Hooks, clock: Clock, config: Config | None = None,
                 local: Config | None = None) -> None:
        self.spool = Spool(site.box, device_id=DEV, clock=clock, disk_free=lambda _p: 10 ** 12)
        self.sync = BoxSync(config or site.config(), self.spool, site.box, clock=clock, hooks=hooks.hooks(),
                            thermal_path=site.box / "thermal", local_config=local)
        self.sync.start()

    def close(self) -> None:
        try:
            self.sync.close()
        finally:
            self.spool.close()


@pytest.fixture
def boxes() -> Iterator[Callable[..., Box]]:
    started: list[Box] = []

    def start(site: Site, hooks: Hooks, clock: Clock | None = None, config: Config | None = None,
              local: Config | None = None) -> Box:
        box = Box(site, hooks, clock or SyncedClock(), config, local)
        started.append(box)
        return box

    yield start
    for box in started:
        box.close()


def online(operator: Operator, boot: int) -> dict[str, Any]:
    return operator.latest(fleetwire.status_topic(DEV), lambda b: b["state"] == "online" and b["boot"] == boot)


def synced_recording(spool: Spool) -> str:
    """One short recording, closed and marked synced, as the uploader would leave it."""
    sink = SpoolSink(spool, CodecParams(rate=8000, segment_s=1.0))
    call = CallRecord(uuid7(), 0.0, SystemClock().wall(), True)
    frames = (np.random.default_rng(1).standard_normal((8000, 2)) * 1000).astype(np.int16)
    sink.open(call)
    sink.write(frames)
    ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up", "ended_mono": 1.0,
                          "events": (CallEvent(0.0, "announcement-start", {}),)})
    sink.close(Recording(ended, len(frames), 0.0, (), {}))
    spool.mark_synced(call.call_id)
    return call.call_id


# --------------------------------------------------------- status and birth --

def test_status_and_birth_are_retained_after_connect(site: Site, boxes) -> None:
    box = boxes(site, Hooks())
    first = Operator(site.broker.port, "first")
    online(first, 1)
    first.close()
    late = Operator(site.broker.port, "late")  # subscribes after the fact: sees only retained messages
    try:
        status = online(late, 1)
        birth = late.latest(fleetwire.birth_topic(DEV))
    finally:
        late.close()
    assert status["session"] == 1 and box.sync.boot == 1
    assert birth["boot"] == 1 and birth["config_version"] == 0 and birth["board"] == "sim"
    assert birth["spool"]["unsynced_recordings"] == 0 and birth["spool"]["free_bytes"] == 10 ** 12
    assert {"identify", "restart", "test-announcement"} <= set(birth["capabilities"])
    assert birth["clock"]["synced"] in (True, False)


def test_the_boot_counter_rises_with_each_start(site: Site, operator: Operator, boxes) -> None:
    boxes(site, Hooks()).close()
    boxes(site, Hooks())
    assert online(operator, 2)["boot"] == 2
    assert (site.box / "fleet" / "boot").read_text() == "2\n"


# ----------------------------------------------------------------- commands --

@pytest.mark.parametrize(("name", "args", "effect", "result"), [
    ("ping", {}, None, {"pong": True}),
    ("identify", {"seconds": 7}, ("identify", 7), {"seconds": 7}),
    ("test-announcement", {}, ("test-announcement", None), {}),
    ("sync-now", {}, None, {}),
])
def test_each_command_runs_and_answers_signed(site: Site, operator: Operator, boxes, name: str,
                                              args: dict[str, int], effect: tuple | None,
                                              result: dict[str, Any]) -> None:
    hooks = Hooks()
    boxes(site, hooks)
    online(operator, 1)
    body = operator.send(name, operator.command(name, **args))
    assert body["status"] == "ok" and body["command"] == name and body["boot"] == 1
    assert {k: body["result"][k] for k in result} == result
    assert hooks.calls == ([effect] if effect else [])
    if name == "ping":
        assert body["result"]["figures"]["recording"] is True


def test_logs_returns_the_boxs_recent_log_lines(site: Site, operator: Operator, boxes) -> None:
    boxes(site, Hooks())
    online(operator, 1)
    logging.getLogger("linetap.test").warning("fleet test marker key=value")
    body = operator.send("logs", operator.command("logs", lines=50))
    lines = body["result"]["lines"]
    assert 0 < len(lines) <= 50
    assert any("fleet test marker key=value" in line for line in lines)


def test_purge_synced_deletes_synced_recordings_now(site: Site, operator: Operator, boxes) -> None:
    box = boxes(site, Hooks())
    recording = synced_recording(box.spool)
    online(operator, 1)
    body = operator.send("purge-synced", operator.command("purge-synced"))
    assert body["status"] == "ok" and body["result"] == {"purged": 1}
    assert not (site.box / "spool" / recording).exists()


def test_restart_is_asked_of_the_app_after_the_response_is_published(site: Site, operator: Operator,
                                                                      boxes) -> None:
    hooks = Hooks()
    boxes(site, hooks)
    online(operator, 1)
    body = operator.send("restart", operator.command("restart"))
    assert body["status"] == "ok" and body["result"] == {"restarting": True}
    assert hooks.wait("restart")
    assert hooks.calls == [("restart", "restart requested by the fleet")]


def test_a_command_the_app_cannot_do_fails_naming_it(site: Site, operator: Operator) -> None:
    spool = Spool(site.box, device_id=DEV, clock=SystemClock(), disk_free=lambda _p: 10 ** 12)
    with spool, BoxSync(site.config(), spool, site.box, clock=SystemClock()):
        online(operator, 1)
        body = operator.send("identify", operator.command("identify", seconds=3))
    assert body["status"] == "failed" and "identify" in body["reason"]


def refusals(operator: Operator) -> dict[str, bytes]:
    good = operator.command("identify", seconds=5)
    members = json.loads(good)
    del members["signature"]
    stale = seal("cmd", DEV, fleetwire.command_body("identify", seconds=5), OPERATOR, seq=900,
                 now_ms=now_ms() - 3_600_000, ttl_ms=TTL_MS)
    return {
        "unsigned": canonical(members),
        "expired": stale,
        "wrong-device": operator.command("identify", device="lt-other-box", seconds=5),
        "oversized": seal("cmd", DEV, {"args": {"pad": 1}, "name": "identify", "x": "y" * 20_000}, OPERATOR,
                          seq=901, now_ms=now_ms(), ttl_ms=TTL_MS),
        "bad-signature": good.replace(b'"seconds":5', b'"seconds":6'),
    }


@pytest.mark.parametrize("code", ["unsigned", "expired", "wrong-device", "oversized", "bad-signature"])
def test_a_refused_command_gets_a_signed_error_and_does_nothing(site: Site, operator: Operator, boxes,
                                                                code: str) -> None:
    hooks = Hooks()
    boxes(site, hooks)
    online(operator, 1)
    body = operator.send("identify", refusals(operator)[code])
    assert body["status"] == "refused" and body["code"] == code
    assert hooks.calls == []


def test_a_replayed_command_is_refused_and_runs_once(site: Site, operator: Operator, boxes) -> None:
    hooks = Hooks()
    boxes(site, hooks)
    online(operator, 1)
    command = operator.command("identify", seconds=4)
    assert operator.send("identify", command)["status"] == "ok"
    again = operator.send("identify", command)
    assert again["status"] == "refused" and again["code"] == "replayed"
    assert hooks.calls == [("identify", 4)]


def test_without_an_operator_key_every_command_is_refused(site: Site, operator: Operator, boxes,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    (site.box / "keys" / "operator.pub").unlink()
    hooks = Hooks()
    with caplog.at_level(logging.WARNING, logger="linetap.sync.boxsync"):
        boxes(site, hooks)
    online(operator, 1)
    body = operator.send("identify", operator.command("identify", seconds=5))
    assert body["status"] == "refused" and body["code"] == "unknown-key" and hooks.calls == []
    warnings = [r.getMessage() for r in caplog.records if "no operator key" in r.getMessage()]
    assert len(warnings) == 1 and "--operator-key" in warnings[0]


# ------------------------------------------------------------------- config --

def test_a_live_config_is_applied_at_once(site: Site, operator: Operator, boxes) -> None:
    boxes(site, Hooks())
    online(operator, 1)
    try:
        report = operator.push_config(site.sync_toml('[log]\nlevel = "debug"\n'), version=3)
        assert report["outcome"] == "applied" and report["changed"] == ["log"]
        assert report["applied_version"] == 3
        assert logging.getLogger("linetap").level == logging.DEBUG
    finally:
        logging.getLogger("linetap").setLevel(logging.NOTSET)
    assert 'level = "debug"' in (site.box / "config" / "pushed.toml").read_text()
    assert PushedConfig(site.box).on_trial is False


def test_a_config_for_the_drivers_asks_for_a_restart_and_is_on_trial(site: Site, operator: Operator,
                                                                     boxes) -> None:
    hooks = Hooks()
    boxes(site, hooks)
    online(operator, 1)
    report = operator.push_config(site.sync_toml("[consent]\nwarning_interval_s = 10.0\n"), version=5)
    assert report["outcome"] == "applied" and report["changed"] == ["consent"]
    assert hooks.wait("restart") and "config version 5 changes consent" in hooks.calls[-1][1]
    pushed = PushedConfig(site.box)
    assert pushed.on_trial
    assert pushed.overlay(site.config()).consent.warning_interval_s == 10.0
    pushed.confirm()
    assert not pushed.on_trial


def test_a_config_with_a_schema_error_is_rejected_naming_the_key(site: Site, operator: Operator,
                                                                  boxes) -> None:
    hooks = Hooks()
    box = boxes(site, hooks)
    online(operator, 1)
    report = operator.push_config(site.sync_toml("[calls]\nring_timout_s = 5.0\n"), version=2)
    assert report["outcome"] == "rejected" and report["code"] == "invalid-config"
    assert "ring_timout_s" in report["reason"]
    assert hooks.calls == [] and box.sync.agent.config_version == 0
    assert not (site.box / "config" / "pushed.toml").exists()


def test_a_config_that_fails_to_apply_is_rejected_and_the_old_one_kept(site: Site, operator: Operator,
                                                                       boxes) -> None:
    hooks = Hooks(check=load_prompts)
    box = boxes(site, hooks)
    online(operator, 1)
    missing = site.box / "prompts" / "no-such-prompt.ogg"
    report = operator.push_config(site.sync_toml(f'[consent.prompts]\nen = "{missing}"\n'), version=4)
    assert report["outcome"] == "rejected" and report["code"] == "apply-failed"
    assert "no-such-prompt.ogg" in report["reason"] and report["applied_version"] == 0
    assert box.sync.agent.config.consent.prompts == {"en": "builtin:en"}
    assert hooks.calls == [] and not (site.box / "config" / "pushed.toml").exists()


def test_a_config_the_drivers_fail_with_after_restart_is_rolled_back_and_reported(
        site: Site, operator: Operator, boxes) -> None:
    hooks = Hooks()
    first = boxes(site, hooks)
    online(operator, 1)
    report = operator.push_config(site.sync_toml("[audio]\nblock_ms = 40\n"), version=6)
    assert report["outcome"] == "applied" and hooks.wait("restart")
    first.close()

    # The next start, as app.run does it: the drivers fail with the pushed config on trial.
    local = site.config()
    pushed = PushedConfig(site.box)
    assert pushed.overlay(local).audio.block_ms == 40 and pushed.on_trial
    failure = DeviceMissing("audio device 'hw:2' is missing; plug the codec in")
    config = pushed.roll_back(local, f"{type(failure).__name__}: {failure}")
    assert config.audio.block_ms == 20 and not (site.box / "config" / "pushed.toml").exists()

    second = boxes(site, Hooks(), config=config)
    online(operator, 2)
    # The retained desired config comes back on subscribe; the box answers with its new judgement.
    rejected = operator.wait_for(lambda m: m.topic == fleetwire.config_reported_topic(DEV)
                                 and verified(m.payload)["outcome"] == "rejected")
    body = verified(rejected.payload)
    assert body["version"] == 6 and body["code"] == "apply-failed" and body["applied_version"] == 0
    assert "hw:2" in body["reason"] and second.sync.agent.config_version == 0


# -------------------------------------------------------- telemetry, alarms --

def test_telemetry_follows_the_injected_clock(site: Site, operator: Operator, boxes) -> None:
    clock = ManualClock()
    (site.box / "thermal").write_text("48250\n")
    box = boxes(site, Hooks(), clock=clock)
    online(operator, 1)
    box.sync.tick()
    assert not any(m.topic == fleetwire.telemetry_topic(DEV) for m in operator.messages)
    clock.advance(60)
    box.sync.tick()
    body = operator.latest(fleetwire.telemetry_topic(DEV))
    assert body["uptime_s"] == 60 and body["cpu_temp_c"] == 48.2 and body["near_dbfs"] == -20.0
    assert body["overruns"] == 3 and body["recording"] is True and body["spool"]["free_bytes"] == 10 ** 12


def test_alarms_are_retained_raised_and_cleared(site: Site, operator: Operator, boxes) -> None:
    clock = ManualClock(synced=False)
    box = boxes(site, Hooks(), clock=clock)
    online(operator, 1)
    box.sync.tick()
    raised = operator.latest(fleetwire.alarm_topic(DEV, "clock-unsynced"), lambda b: b["active"])
    clock.set_synced(True)
    box.sync.tick()
    cleared = operator.latest(fleetwire.alarm_topic(DEV, "clock-unsynced"), lambda b: not b["active"])
    box.sync.alarm("modem-lost", True, "serial port /dev/ttyACM0 gone")
    modem = operator.latest(fleetwire.alarm_topic(DEV, "modem-lost"))
    assert raised["alarm"] == cleared["alarm"] == "clock-unsynced"
    assert modem["active"] and "ttyACM0" in modem["detail"]
    retained = [m for m in operator.messages if m.topic.startswith(fleetwire.alarm_topic(DEV, ""))]
    assert all(m.qos == 1 for m in retained)


# ----------------------------------------------------------- the connection --

def test_the_will_marks_a_cut_box_offline_and_reconnecting_marks_it_online(site: Site, operator: Operator,
                                                                           boxes) -> None:
    proxy = Proxy(site.broker.port)
    try:
        cut_site = Site(site.box, site.broker, proxy.port)
        boxes(cut_site, Hooks())
        online(operator, 1)
        proxy.cut()
        offline = operator.latest(fleetwire.status_topic(DEV), lambda b: b["state"] == "offline")
        assert (offline["boot"], offline["session"]) == (1, 1)
        count = len(operator.messages)
        back = operator.wait_for(lambda m: m.topic == fleetwire.status_topic(DEV)
                                 and operator.messages.index(m) >= count and json.loads(m.payload)["state"] == "online")
        assert json.loads(back.payload)["boot"] == 1
    finally:
        proxy.close()


def test_after_a_broker_restart_the_retained_status_is_online(site: Site, boxes) -> None:
    boxes(site, Hooks())
    first = Operator(site.broker.port, "before")
    online(first, 1)
    first.close()
    site.broker.restart()
    after = Operator(site.broker.port, "after")
    try:
        # Whatever the broker kept, the box's reconnection leaves it online.
        status = after.wait_for(lambda m: m.topic == fleetwire.status_topic(DEV)
                                and json.loads(m.payload)["state"] == "online" and not m.retain)
        assert json.loads(status.payload)["boot"] == 1
    finally:
        after.close()
    late = Operator(site.broker.port, "late")
    try:
        assert online(late, 1)["state"] == "online"
        assert late.latest(fleetwire.birth_topic(DEV))["boot"] == 1
    finally:
        late.close()


# -------------------------------------------------------------- push policy --

@pytest.mark.parametrize("extra, key", [
    ("[consent]\nannounce = false\nwarning_tone = false\n", "consent.announce"),
    ('[spool]\non_full = "overwrite-oldest"\nmax_bytes = 1\n', "spool.on_full"),
    ('[consent.prompts]\nen = "/etc/shadow"\n', "consent.prompts"),
])
def test_a_push_the_policy_refuses_is_reported_rejected_and_changes_nothing(site: Site, operator: Operator,
                                                                           boxes, extra: str, key: str) -> None:
    hooks = Hooks(check=load_prompts)
    box = boxes(site, hooks)
    online(operator, 1)
    report = operator.push_config(site.sync_toml(extra), version=3)
    assert (report["outcome"], report["code"], report["applied_version"]) == ("rejected", "policy-refused", 0)
    assert key in report["reason"] and "push policy" in report["reason"]
    assert hooks.calls == [] and box.sync.agent.config == site.config()
    assert not (site.box / "config" / "pushed.toml").exists()


def test_a_symlink_out_of_the_prompt_folder_is_refused(site: Site, operator: Operator, boxes) -> None:
    (site.box / "prompts").mkdir()
    (site.box / "prompts" / "en.ogg").symlink_to("/etc/passwd")
    boxes(site, Hooks(check=load_prompts))
    online(operator, 1)
    report = operator.push_config(site.sync_toml(f'[consent.prompts]\nen = "{site.box}/prompts/en.ogg"\n'),
                                  version=2)
    assert report["code"] == "policy-refused" and "symbolic link" in report["reason"]


def test_pushed_consent_raises_the_alarm_and_is_noted_in_every_recording_until_undone(
        site: Site, operator: Operator, boxes) -> None:
    hooks = Hooks()
    first = boxes(site, hooks)
    online(operator, 1)
    report = operator.push_config(site.sync_toml("[consent]\nwarning_interval_s = 10.0\n"), version=5)
    assert report["outcome"] == "applied" and hooks.wait("restart")
    alarm = operator.latest(fleetwire.alarm_topic(DEV, "consent-changed"), lambda b: b["active"])
    assert "consent.warning_interval_s" in alarm["detail"] and "version 5" in alarm["detail"]
    first.close()

    # The restart, as app.run does it: the pushed document over the local file, then the call loop.
    local = site.config()
    pushed = PushedConfig(site.box)
    config = pushed.overlay(local)
    note = consent_note(local, config, pushed.version)
    assert note == {"source": "fleet", "changed": ["consent.warning_interval_s"], "config_version": 5}
    count = len(operator.messages)
    second = boxes(site, Hooks(), config=config, local=local)
    online(operator, 2)
    again = operator.wait_for(lambda m: m.topic == fleetwire.alarm_topic(DEV, "consent-changed")
                              and operator.messages.index(m) >= count)
    assert json.loads(again.payload)["active"] is True

    for n in range(2):  # every recording while it is in force
        clock = ManualClock()
        flow = CallFlow(policy_from(config, None, note), clock)
        flow.handle(HookChanged(off_hook=True, source="gpio"))
        manifest = recorded_manifest(second.spool, site.box, flow.call)
        policy = [e for e in manifest["events"] if e["kind"] == "policy"]
        assert policy == [{"t_ms": 0, "kind": "policy", "detail": note}]

    # A push that no longer changes consent clears the alarm.
    report = operator.push_config(site.sync_toml(), version=6)
    assert report["outcome"] == "applied"
    cleared = operator.latest(fleetwire.alarm_topic(DEV, "consent-changed"), lambda b: not b["active"])
    assert cleared["alarm"] == "consent-changed"


def recorded_manifest(spool: Spool, box: Path, call: CallRecord) -> dict[str, Any]:
    """Close ``call`` as a one-second recording in ``spool``; its manifest as written."""
    sink = SpoolSink(spool, CodecParams(rate=8000, segment_s=1.0))
    sink.open(call)
    sink.write(np.zeros((8000, 2), dtype=np.int16))
    ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                          "ended_mono": call.started_mono + 1})
    sink.close(Recording(ended, 8000, 0.0, (), {}))
    return json.loads((box / "spool" / call.call_id / "manifest.json").read_bytes())


def test_a_kept_push_the_policy_now_refuses_is_rolled_back_at_start(site: Site) -> None:
    pushed = PushedConfig(site.box)
    pushed.save(4, "[consent]\nannounce = false\n", trial=False)  # kept before this policy, or forged
    local = site.config()
    with pytest.raises(ConfigError, match="push policy"):
        pushed.overlay(local)
    assert pushed.on_trial  # so app.run rolls back instead of stopping
    assert pushed.roll_back(local, "refused by the push policy") == local
    assert pushed.take_rejection() == {"reason": "refused by the push policy", "version": 4}


@pytest.mark.parametrize("name, data", [
    ("config/pushed.json", b"[" * 50_000 + b"]" * 50_000),
    ("config/pushed.json", b'{"version": ' + b"9" * 100_000 + b"}"),
    ("config/pushed.json", b'{"version": 3}'),
    ("fleet/state.json", b"[" * 50_000 + b"]" * 50_000),
    ("fleet/state.json", b'{"config": ' + b"9" * 100_000 + b"}"),
])
def test_a_damaged_agent_file_is_a_config_error_not_a_crash(site: Site, name: str, data: bytes) -> None:
    (site.box / name).parent.mkdir(parents=True, exist_ok=True)
    (site.box / name).write_bytes(data)
    spool = Spool(site.box, device_id=DEV, clock=SystemClock(), disk_free=lambda _p: 10 ** 12)
    with spool, pytest.raises(ConfigError, match=name.split("/")[-1]):
        BoxSync(site.config(), spool, site.box, clock=SystemClock())
