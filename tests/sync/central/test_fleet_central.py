"""The centre's fleet tools against a real Mosquitto and a few boxes running the real FleetAgent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_boxes import SimBox, device_key

from linetap.firmware.keys import public_key_b64
from linetap.sync import dynsec, fleet, fleetwire
from linetap.sync.broker import LocalBroker, free_port
from linetap.sync.central import cli
from linetap.sync.central.fleet import collect_live, parse_command_args, push_config, send_command
from linetap.sync.central.index import INDEX_FILE, FleetUpdate, SqliteIndex
from linetap.sync.central.keys import keys_init, operator_public_key
from linetap.sync.central.observation import parse_observation
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.pki import CENTRAL, CertificateAuthority
from linetap.sync.signed import seal

CONF_DIR = Path(__file__).resolve().parents[3] / "image" / "mosquitto"
CONFIG = '[log]\nlevel = "debug"\n\n[calls]\nring_timeout_s = 6.5\n'


pytestmark = pytest.mark.broker("session")


class Centre:
    """A central data dir with keys and a config naming the test broker; runs the CLI in-process."""

    def __init__(self, folder: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
        self.folder = folder
        self.broker = broker
        self._capsys = capsys
        keys_init(folder)
        self.config = folder / "central.toml"
        self.config.write_text(f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n')
        self.index = SqliteIndex(folder / INDEX_FILE)
        self.operator = operator_public_key(folder)
        self.settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10,
                                       reconnect_min_s=0.2, reconnect_max_s=2.0)

    def enroll(self, device_id: str, key: Ed25519PrivateKey | None = None) -> None:
        self.index.enroll(device_id, public_key_b64((key or device_key(device_id)).public_key()), 1)

    def box(self, device_id: str, **options: object) -> SimBox:
        self.enroll(device_id)
        box = SimBox(device_id, self.broker.host, self.broker.port, self.operator, **options).start()
        assert box.wait_online(1), f"{device_id} did not come online"
        return box

    def run(self, *argv: str) -> tuple[int, str]:
        """The exit code and stdout; stderr is kept in ``self.err``."""
        self._capsys.readouterr()
        code = cli.main([*argv, "--data-dir", str(self.folder), "--config", str(self.config)])
        captured = self._capsys.readouterr()
        self.err = captured.err
        return code, captured.out

    def run_json(self, *argv: str) -> tuple[int, dict]:
        code, out = self.run(*argv, "--json")
        return code, json.loads(out)


@pytest.fixture
def centre(tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> Iterator[Centre]:
    made = Centre(tmp_path / "central", broker, capsys)
    yield made
    made.index.close()


@pytest.fixture
def boxes() -> Iterator[list[SimBox]]:
    started: list[SimBox] = []
    yield started
    for box in started:
        box.close()


@pytest.fixture
def tracker(centre: Centre) -> Iterator[FleetTracker]:
    with FleetTracker(centre.index, centre.settings, client_id="test-tracker") as running:
        running.wait_ready(10)
        yield running


def publisher(broker: LocalBroker) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def status(boot: int, session: int, state: str) -> bytes:
    return json.dumps({"boot": boot, "session": session, "state": state,
                       "clock": {"synced": True, "wall_ms": 1_767_225_600_000}}).encode()


# ------------------------------------------------------------- status and list --

def test_list_and_show_report_what_the_tracker_saw(centre: Centre, boxes: list[SimBox],
                                                   tracker: FleetTracker) -> None:
    boxes += [centre.box(f"lt-list-{i}") for i in range(3)]
    boxes[1].publish(boxes[1].agent.alarm("spool-full", active=True, detail="free 1%"))
    tracker.flush(10)

    code, listing = centre.run_json("fleet", "list")
    assert code == 0 and listing["live"] is False
    seen = {d["device_id"]: d for d in listing["devices"]}
    assert set(seen) == {"lt-list-0", "lt-list-1", "lt-list-2"}
    assert all(d["state"] == "online" and d["software_version"] == "1.4.0" and d["backlog_recordings"] == 2
               and d["last_seen_ms"] for d in seen.values())
    assert seen["lt-list-1"]["alarms"] == ["spool-full"] and seen["lt-list-0"]["alarms"] == []

    boxes[2].vanish()  # the broker publishes its Will
    tracker.flush(10)
    code, shown = centre.run_json("fleet", "show", "lt-list-2")
    assert code == 0 and shown["state"] == "offline" and shown["session"] == 1
    assert shown["subjects"]["birth"]["body"]["capabilities"] == ["hook-gpio", "rec-led"]
    code, text = centre.run("fleet", "list")
    assert "2 of 3 online (as tracked by serve)" in text


def test_list_reads_the_broker_live_while_nothing_is_tracked(centre: Centre, boxes: list[SimBox]) -> None:
    boxes += [centre.box(f"lt-live-{i}") for i in range(2)]
    centre.enroll("lt-live-never")
    code, listing = centre.run_json("fleet", "list")
    assert code == 0 and listing["live"] is True
    states = {d["device_id"]: d["state"] for d in listing["devices"]}
    assert states["lt-live-0"] == states["lt-live-1"] == "online"
    assert states["lt-live-never"] == "unknown"


def test_a_late_will_from_an_older_session_does_not_mark_a_box_offline(centre: Centre, broker: LocalBroker,
                                                                      tracker: FleetTracker) -> None:
    client = publisher(broker)
    topic = fleetwire.status_topic("lt-order")
    try:
        for payload in (status(2, 1, "online"), status(1, 9, "offline"), status(2, 0, "offline")):
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
        tracker.flush(10)
        row = centre.index.fleet_device("lt-order")
        assert row["subjects"]["status"]["body"]["state"] == "online" and (row["boot"], row["session"]) == (2, 1)

        client.publish(topic, status(2, 1, "offline"), qos=1, retain=True).wait_for_publish(5)
        client.publish(topic, status(2, 1, "online"), qos=1, retain=True).wait_for_publish(5)  # a duplicate
        tracker.flush(10)
        assert centre.index.fleet_device("lt-order")["subjects"]["status"]["body"]["state"] == "offline"

        client.publish(topic, status(3, 1, "online"), qos=1, retain=True).wait_for_publish(5)
        tracker.flush(10)
        assert centre.index.fleet_device("lt-order")["subjects"]["status"]["body"]["state"] == "online"
    finally:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()


def test_status_order_in_the_index() -> None:
    with SqliteIndex(Path(":memory:")) as index:
        def update(order: tuple[int, int, int]) -> FleetUpdate:
            return FleetUpdate("lt-a", "status", json.dumps({"order": list(order)}), 1, None, order)

        kept = index.record_fleet([update((1, 2, 0)), update((1, 1, 1)), update((1, 2, 1)), update((1, 2, 0)),
                                   update((0, 9, 0)), update((2, 1, 0))])
        assert kept == [True, False, True, False, False, True]
        assert index.fleet_device("lt-a")["subjects"]["status"]["body"] == {"order": [2, 1, 0]}


def test_malformed_fleet_messages_are_logged_and_ignored(centre: Centre, broker: LocalBroker,
                                                        tracker: FleetTracker,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    centre.enroll("lt-bad")
    wrong_key = Ed25519PrivateKey.generate()
    bad = [
        ("linetap/v1/lt-bad/status", b"{not json"),
        ("linetap/v1/lt-bad/status", json.dumps({"boot": True, "session": 1, "state": "online",
                                                 "clock": {"synced": True, "wall_ms": 1}}).encode()),
        ("linetap/v1/lt-bad/status", json.dumps([1, 2]).encode()),
        ("linetap/v1/lt-bad/birth", json.dumps({"boot": 1}).encode()),
        ("linetap/v1/lt-bad/telemetry", b"{" + b" " * fleetwire.MAX_FIGURES + b"}"),
        ("linetap/v1/lt-bad/alarm/spool-full", json.dumps({"alarm": "modem-lost", "active": True, "boot": 1,
                                                           "detail": "", "clock": {"synced": False,
                                                                                   "wall_ms": 0}}).encode()),
        ("linetap/v1/lt-bad/config/reported", seal("resp", "lt-bad", {"report": "config"}, wrong_key, seq=1,
                                                   now_ms=1, ttl_ms=1000)),
        ("linetap/v1/Not_A_Device/status", status(1, 1, "online")),
    ]
    client = publisher(broker)
    caplog.set_level(logging.WARNING, logger="linetap.sync.central.tracker")
    try:
        for topic, payload in bad:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        client.publish("linetap/v1/lt-bad/status", status(1, 1, "online"), qos=1).wait_for_publish(5)
        tracker.flush(10)
    finally:
        client.disconnect()
        client.loop_stop()
    ignored = [r.getMessage() for r in caplog.records if "fleet message ignored" in r.getMessage()]
    assert len(ignored) == len(bad), ignored
    assert any("bad-signature" in line or "unknown-key" in line for line in ignored)
    row = centre.index.fleet_device("lt-bad")
    assert set(row["subjects"]) == {"status"} and row["subjects"]["status"]["body"]["state"] == "online"
    assert tracker.failure is None


def test_an_oversized_report_is_refused_before_its_signature_is_read() -> None:
    with pytest.raises(fleet.SyncError, match="more than"):
        parse_observation("linetap/v1/lt-x/config/reported", b"x" * 9000, retained=False, received_ms=1,
                          device_key=lambda _d: None)


@pytest.mark.parametrize("payload, words", [
    (b"[" * 50_000, "nests deeper"),
    (b'{"disk_free_mb":' + b"9" * 30 + b"}", "outside"),
    (b'{"a":1,"a":2}', "repeats the key"),
])
def test_hostile_telemetry_is_refused_by_name_before_it_reaches_the_index(payload: bytes, words: str) -> None:
    with pytest.raises(fleet.SyncError, match=words):
        parse_observation("linetap/v1/lt-x/telemetry", payload[:fleetwire.MAX_FIGURES], retained=False,
                          received_ms=1, device_key=lambda _d: None)


def test_command_arguments_are_numbers_only_in_ascii_digits() -> None:
    assert parse_command_args(["n=٣", "m=-5", "k=05", "s=30", "big=" + "9" * 30]) == {
        "n": "٣", "m": -5, "k": "05", "s": 30, "big": "9" * 30}


# ------------------------------------------------------------------- config --

def test_config_push_is_applied_and_versions_move_forward(centre: Centre, boxes: list[SimBox],
                                                         tmp_path: Path) -> None:
    boxes += [centre.box("lt-cfg-a"), centre.box("lt-cfg-b")]
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    code, pushed = centre.run_json("fleet", "config", "push", "lt-cfg-a", "lt-cfg-b", str(config))
    assert code == 0 and pushed["ok"] and pushed["counts"]["applied"] == 2
    assert {d["version"] for d in pushed["devices"]} == {1}
    assert pushed["devices"][0]["changed"] == ["calls", "log"]
    assert boxes[0].agent.config.log.level == "debug" and boxes[0].agent.config_version == 1

    config.write_text('[log]\nlevel = "warning"\n')
    code, text = centre.run("fleet", "config", "push", "lt-cfg-a", str(config))
    assert code == 0 and "lt-cfg-a" in text and "applied   version 2" in text
    assert boxes[0].agent.config_version == 2 and boxes[1].agent.config_version == 1


def test_config_push_reports_rejected_and_silent_boxes(centre: Centre, boxes: list[SimBox],
                                                       tmp_path: Path) -> None:
    boxes += [centre.box("lt-rej-ok"), centre.box("lt-rej-fail", fail_apply=True)]
    centre.enroll("lt-rej-away")
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    code, pushed = centre.run_json("fleet", "config", "push", "lt-rej-ok", "lt-rej-fail", "lt-rej-away",
                                   str(config), "--timeout", "2")
    assert code == 1 and not pushed["ok"]
    outcome = {d["device_id"]: d for d in pushed["devices"]}
    assert outcome["lt-rej-ok"]["outcome"] == "applied"
    assert outcome["lt-rej-fail"]["outcome"] == "rejected" and outcome["lt-rej-fail"]["code"] == "apply-failed"
    assert "DeviceMissing" in outcome["lt-rej-fail"]["reason"]
    assert outcome["lt-rej-away"]["outcome"] == "timeout" and outcome["lt-rej-away"]["version"] == 1
    assert "rollback_config" in boxes[1].calls


def test_config_push_refuses_an_invalid_file_before_sending(centre: Centre, boxes: list[SimBox],
                                                            tmp_path: Path) -> None:
    boxes.append(centre.box("lt-inv"))
    config = tmp_path / "site.toml"
    config.write_text('[device]\nid = "lt-other"\n')
    code, _ = centre.run("fleet", "config", "push", "lt-inv", str(config))
    assert code == 1 and "[device]" in centre.err
    config.write_text('[log]\nlevel = "loud"\n')
    code, _ = centre.run("fleet", "config", "push", "lt-inv", str(config))
    assert code == 1 and "log.level" in centre.err
    assert boxes[0].agent.config_version == 0 and centre.index.fleet_device("lt-inv")["subjects"] == {}


# ----------------------------------------------------------------- commands --

def test_command_answer_is_verified_and_printed(centre: Centre, boxes: list[SimBox]) -> None:
    boxes.append(centre.box("lt-cmd"))
    code, answer = centre.run_json("fleet", "cmd", "lt-cmd", "ping")
    assert code == 0 and answer["status"] == "ok" and answer["result"]["pong"] is True
    assert answer["seq"] == 1 and answer["time_checked"] is True
    code, text = centre.run("fleet", "cmd", "lt-cmd", "identify", "seconds=20")
    assert code == 0 and "(seq 2): ok" in text
    assert boxes[0].calls == ["ping", "identify"]


def test_a_refused_command_is_reported_and_not_run(centre: Centre, boxes: list[SimBox]) -> None:
    boxes.append(centre.box("lt-cmd-refuse"))
    code, answer = centre.run_json("fleet", "cmd", "lt-cmd-refuse", "identify", "seconds=9999")
    assert code == 1 and answer["status"] == "refused" and answer["code"] == "bad-args"
    code, answer = centre.run_json("fleet", "cmd", "lt-cmd-refuse", "self-destruct")
    assert code == 1 and answer["code"] == "unknown-command"
    assert boxes[0].calls == []


def test_an_answer_not_signed_by_the_enrolled_key_is_not_believed(centre: Centre, boxes: list[SimBox],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    impostor = SimBox("lt-cmd-impostor", centre.broker.host, centre.broker.port, centre.operator,
                      signing_key=Ed25519PrivateKey.generate()).start()
    boxes.append(impostor)
    centre.enroll("lt-cmd-impostor")
    assert impostor.wait_online(1)
    with pytest.raises(fleet.SyncError, match="no verified answer"):
        send_command(centre.settings, centre.folder, "lt-cmd-impostor", "ping", {}, timeout=1.5)
    assert impostor.calls == ["ping"]  # it ran (the operator's signature is good); its answer is refused
    assert any("command response ignored" in r.getMessage() for r in caplog.records)


def test_live_view_uses_the_enrolment(centre: Centre, boxes: list[SimBox]) -> None:
    boxes.append(centre.box("lt-live-enrolled"))
    views = {v.device_id: v for v in collect_live(centre.settings, centre.index, timeout=10)}
    assert views["lt-live-enrolled"].enrolled and views["lt-live-enrolled"].state == "online"


# ---------------------------------------------------------------------- TLS --

def test_the_tools_work_through_the_shipped_tls_listener_and_acl(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server, central, box_cert = ca.issue_server(), ca.issue_client(CENTRAL), ca.issue_client("lt-tls")
    port = free_port()
    roles = dynsec.write_initial_config(tmp_path / "dynsec.json", [], boxes=["lt-tls"])
    listener = dynsec.shipped_listener_lines(port=port, ca_file=ca.cert_file, cert_file=server.cert_file,
                                             key_file=server.key_file, dynsec_file=roles)
    with LocalBroker(tmp_path / "broker", port=port, listener_lines=listener, persistence=False) as broker:
        centre = Centre(tmp_path / "central", broker, capsys)
        centre.settings = BrokerSettings(host=broker.host, port=port, tls=True, ca_file=ca.cert_file,
                                         cert_file=central.cert_file, key_file=central.key_file, keepalive=10)
        centre.enroll("lt-tls")
        box = SimBox("lt-tls", broker.host, port, centre.operator,
                     tls=(ca.cert_file, box_cert.cert_file, box_cert.key_file)).start()
        try:
            assert box.wait_online(1)
            with FleetTracker(centre.index, centre.settings, client_id="tls-tracker") as tracker:
                tracker.wait_ready(10)
                tracker.flush(10)
                assert centre.index.fleet_device("lt-tls")["subjects"]["status"]["body"]["state"] == "online"
            assert send_command(centre.settings, centre.folder, "lt-tls", "ping", {}, timeout=10).ok
            pushed = push_config(centre.settings, centre.folder, ["lt-tls"], CONFIG, source="site.toml", timeout=10)
            assert pushed.ok and box.agent.config_version == 1
        finally:
            box.close()
            centre.index.close()
