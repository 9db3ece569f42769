"""Rollouts at the centre, on both index backends: groups, push, the boxes' states, the self-halt, fleet list."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_hostile_ingest import serve_process, stop
from update_boxes import PahoBox, build_release

from central_boxes import add_config, central_index
from linetap.firmware.errors import ConfigError
from linetap.sync import release, updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central import cli
from linetap.sync.central.keys import operator_public_key
from linetap.sync.central.rollout import pick_percent
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.signed import key_table, open_envelope
from linetap.sync.updatewire import UpdateState, state_payload

pytestmark = pytest.mark.broker("session")
RELEASE_KEY = Ed25519PrivateKey.generate()
WAIT = 10.0
_boxes = iter(range(1, 1_000_000))


class Centre:
    def __init__(self, folder: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
        self.folder, self.broker, self._capsys = folder, broker, capsys
        add_config(folder, f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n')
        self.settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10,
                                       reconnect_min_s=0.2, reconnect_max_s=2.0)

    def enroll(self, count: int, prefix: str = "upd") -> list[str]:
        """``count`` boxes of fresh ids (the session's broker keeps earlier tests' retained offers)."""
        devices = [f"{prefix}-{next(_boxes)}" for _ in range(count)]
        with central_index(self.folder) as index:
            for device_id in devices:
                index.enroll(device_id, "C/yt8irMc4AU2zVSxl4X03qRGCt2XRfOoRSDnD+X+n4=", 1)
        return devices

    def run(self, *argv: str) -> tuple[int, str]:
        self._capsys.readouterr()
        code = cli.main([*argv, "--data-dir", str(self.folder)])
        captured = self._capsys.readouterr()
        self.err = captured.err
        return code, captured.out

    def run_json(self, *argv: str) -> dict:
        code, out = self.run(*argv, "--json")
        assert code == 0, self.err
        return json.loads(out)


@pytest.fixture
def centre(central: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> Centre:
    made = Centre(central, broker, capsys)
    build_release(central, RELEASE_KEY, "0.2.0")
    return made


@pytest.fixture
def tracker(centre: Centre) -> Iterator[FleetTracker]:
    with central_index(centre.folder) as index, \
            FleetTracker(index, centre.settings, client_id=f"test-tracker-{centre.folder.parent.name}") as running:
        running.wait_ready(WAIT)
        yield running


def retained(broker: LocalBroker, topics: list[str]) -> dict[str, bytes]:
    """The retained messages on ``topics`` now: subscribe, then wait for a marker published after."""
    got: queue.Queue = queue.Queue()
    box = PahoBox(broker, f"reader-{next(_boxes)}")
    try:
        box.received = got
        for topic in topics:
            box.client.subscribe(topic, qos=1)
        marker = f"linetap/v1/{box.device_id}/update/test-marker"
        box.client.publish(marker, b"end", qos=1)
        found = {}
        while True:
            msg = got.get(timeout=WAIT)
            if msg.topic == marker:
                return found
            found[msg.topic] = msg.payload
    finally:
        box.close()


def offer_of(centre: Centre, device_id: str, payload: bytes) -> tuple[int, updatewire.Offer]:
    envelope = open_envelope(payload, trusted_keys=key_table([operator_public_key(centre.folder)]),
                             device_id=device_id, kind="update", now_ms=None, max_bytes=updatewire.MAX_OFFER_BYTES)
    return envelope.seq, updatewire.read_offer(envelope.body)


# ------------------------------------------------------------------- groups --

def test_groups_are_listed_and_a_percent_is_a_stable_share(centre: Centre) -> None:
    devices = centre.enroll(10)
    assert centre.run("fleet", "group", "add", "canary", devices[0], devices[3])[0] == 0
    assert centre.run("fleet", "group", "add", "canary", devices[3], devices[5])[0] == 0
    code, out = centre.run("fleet", "group", "list")
    assert code == 0 and f"canary                       3  {devices[0]}, {devices[3]}, {devices[5]}" in out
    assert centre.run_json("fleet", "group", "list")["groups"] == {"canary": sorted([devices[0], devices[3],
                                                                                     devices[5]])}
    assert centre.run("fleet", "group", "add", "canary", "never-enrolled")[0] == 1
    assert "not enrolled: never-enrolled" in centre.err

    picked = pick_percent(devices, "0.2.0-abc", 30)
    assert len(picked) == 3 and picked == pick_percent(list(reversed(devices)), "0.2.0-abc", 30)
    others = {tuple(pick_percent(devices, f"0.2.0-{n}", 30)) for n in range(20)}
    assert len(others) > 1  # another rollout picks others
    assert len(pick_percent(devices, "x", 1)) == 1 and pick_percent(devices, "x", 100) == sorted(devices)


# --------------------------------------------------------------------- push --

@pytest.mark.parametrize("how", ["list", "group", "percent"])
def test_push_offers_the_signed_release_retained_to_each_target(centre: Centre, how: str) -> None:
    devices = centre.enroll(4)
    args = {"list": devices[:2], "group": ["--group", "first"], "percent": ["--percent", "50"]}[how]
    if how == "group":
        centre.run("fleet", "group", "add", "first", devices[1], devices[2])
    pushed = centre.run_json("fleet", "update", "push", "0.2.0", *args)
    targets = pushed["devices"]
    assert len(targets) == 2 and (how != "group" or targets == [devices[1], devices[2]])
    offers = retained(centre.broker, [updatewire.offer_topic(d) for d in devices])
    assert sorted(offers) == sorted(updatewire.offer_topic(d) for d in targets)
    for device_id in targets:
        seq, offer = offer_of(centre, device_id, offers[updatewire.offer_topic(device_id)])
        rel = release.verify(offer.manifest, offer.signature, [RELEASE_KEY.public_key()])
        assert (seq, offer.rollout, rel.release_id, offer.allow_downgrade) == (1, pushed["rollout"],
                                                                             pushed["release_id"], False)
    again = centre.run_json("fleet", "update", "push", "0.2.0", targets[0], "--allow-downgrade")
    seq, offer = offer_of(centre, targets[0], retained(centre.broker, [updatewire.offer_topic(targets[0])])[
        updatewire.offer_topic(targets[0])])
    assert (seq, offer.rollout, offer.allow_downgrade) == (2, again["rollout"], True)
    status = centre.run_json("fleet", "update", "status")["rollouts"]
    assert [(r["rollout_id"], r["state"], r["counts"]["targets"], r["counts"]["withdrawn"]) for r in status] == [
        (pushed["rollout"], "active", 2, 1), (again["rollout"], "active", 1, 0)]  # its offer to the box replaced


def test_push_refuses_an_unknown_version_and_unenrolled_boxes(centre: Centre) -> None:
    devices = centre.enroll(1)
    assert centre.run("fleet", "update", "push", "9.9", devices[0])[0] == 1
    assert "no release of version 9.9 is kept (kept: 0.2.0)" in centre.err
    assert centre.run("fleet", "update", "push", "0.2.0", "not-a-box")[0] == 1
    assert "not enrolled: not-a-box" in centre.err
    assert centre.run("fleet", "update", "push", "0.2.0")[0] == 1
    assert "exactly one of them" in centre.err


# --------------------------------------------------------- states and halting --

def report(box: PahoBox, rollout: str, state: str, *, outcome: str | None = None, code: str | None = None,
           at_ms: int, have: int = 0) -> None:
    payload = state_payload(UpdateState(state=state, current="0.1.0", version="0.2.0", rollout=rollout,
                                        have=have, total=301_000, outcome=outcome, code=code,
                                        reason=None if code is None else "the self-test failed", at_ms=at_ms))
    box.send("update/state", payload, retain=True)


def test_states_are_tracked_and_a_rollout_halts_itself_past_its_share(centre: Centre, tracker: FleetTracker,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    devices = centre.enroll(5)
    rollout = centre.run_json("fleet", "update", "push", "0.2.0", *devices, "--halt-at", "0.2")["rollout"]
    boxes = [PahoBox(centre.broker, d) for d in devices]
    try:
        report(boxes[0], rollout, "installed", outcome="installed", at_ms=10)
        report(boxes[1], rollout, "rolled-back", outcome="rolled-back", code="selftest-failed", at_ms=10)
        report(boxes[2], rollout, "fetching", have=150_500, at_ms=10)
        report(boxes[3], rollout, "trial", at_ms=10)
        tracker.flush(WAIT)
        assert centre.run_json("fleet", "update", "status", rollout)["state"] == "active"  # 1 of 5: not past 20%
        # A bad state is logged and dropped; the tracker goes on.
        boxes[4].send("update/state", b'{"state": "exploded", "current": "0.1.0"}')
        tracker.flush(WAIT)
        assert "update state ignored device_id=" + devices[4] in caplog.text
        with caplog.at_level(logging.WARNING):
            report(boxes[4], rollout, "failed", outcome="failed", code="prepare-failed", at_ms=11)
            tracker.flush(WAIT)
        assert tracker.failure is None
    finally:
        for box in boxes:
            box.close()
    status = centre.run_json("fleet", "update", "status", rollout)
    assert status["state"] == "halted" and "2 of 5 boxes rolled back or failed (40%)" in status["reason"]
    assert status["counts"] | {} == {"targets": 5, "installed": 1, "rolled-back": 1, "failed": 1, "refused": 0,
                                     "withdrawn": 1, "pending": 1}
    withdrawn = [t["device_id"] for t in status["targets"] if t["withdrawn_ms"]]
    assert withdrawn == [devices[2]]  # fetching: not started installing; the one on trial keeps its offer
    assert [r for r in caplog.records if "alarm=rollout-halted" in r.getMessage() and r.levelno == logging.WARNING]
    offers = retained(centre.broker, [updatewire.offer_topic(d) for d in devices])
    assert updatewire.offer_topic(devices[2]) not in offers and updatewire.offer_topic(devices[3]) in offers

    code, text = centre.run("fleet", "update", "status", rollout)
    assert code == 0 and f"{devices[1]:<24} rolled-back" in text and "selftest-failed" in text
    assert f"{devices[2]:<24} withdrawn" in text
    listing = {d["device_id"]: d for d in centre.run_json("fleet", "list")["devices"]}
    assert (listing[devices[1]]["update_state"], listing[devices[1]]["update_outcome"]) == (
        "rolled-back", "rolled-back (selftest-failed)")
    assert listing[devices[0]]["software_version"] == "0.1.0"
    code, text = centre.run("fleet", "list")
    assert "UPDATE" in text and "LAST OUTCOME" in text
    assert f"fetching 50%" in text and "trial 0.2.0" in text
    code, text = centre.run("fleet", "show", devices[2])
    assert code == 0 and '"have": 150500' in text


def test_halt_by_hand_withdraws_the_offers_not_started(centre: Centre) -> None:
    devices = centre.enroll(2)
    rollout = centre.run_json("fleet", "update", "push", "0.2.0", *devices)["rollout"]
    code, out = centre.run("fleet", "update", "halt", rollout)
    assert code == 0 and "offers withdrawn from 2 boxes" in out
    assert retained(centre.broker, [updatewire.offer_topic(d) for d in devices]) == {}
    assert centre.run("fleet", "update", "halt", rollout)[0] == 1 and "is halted, not active" in centre.err


# ------------------------------------------------------------ a real serve --

def wait_until(check, timeout: float = WAIT):
    """``check()``'s first truthy value, asked again each time the event times out (serve runs elsewhere)."""
    deadline, tick = time.monotonic() + timeout, threading.Event()
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        tick.wait(0.05)


def fetch(box: PahoBox, rel: release.Release, sha256: str, index: int) -> release.Chunk:
    """One chunk, asked again as a box does when none comes (serve's server may not have subscribed yet)."""
    deadline = time.monotonic() + 30
    while True:
        box.get(rel.release_id, sha256, index)
        try:
            chunk = release.unpack_chunk(box.wait_for(updatewire.chunk_topic(box.device_id), 1.0).payload)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise
            continue
        if chunk.index == index and chunk.file_sha256 == sha256:
            return chunk


def test_serve_hands_a_box_its_release_by_chunks_and_tracks_its_outcome(centre: Centre) -> None:
    name = f"upd-serve-{next(_boxes)}"
    add_config(centre.folder, f'[broker]\nhost = "{centre.broker.host}"\nport = {centre.broker.port}\n'
                              f'client_id = "{name}"\ngroup = "{name}"\n')
    (device,) = centre.enroll(1)
    box = PahoBox(centre.broker, device, updatewire.offer_topic(device), updatewire.chunk_topic(device))
    proc = serve_process(centre.folder)
    try:
        pushed = centre.run_json("fleet", "update", "push", "0.2.0", device)
        _seq, offer = offer_of(centre, device, box.wait_for(updatewire.offer_topic(device)).payload)
        rel = release.verify(offer.manifest, offer.signature, [RELEASE_KEY.public_key()])
        for file in rel.files:
            data = b""
            for index in range(len(file.chunks)):
                chunk = fetch(box, rel, file.sha256, index)
                assert release.check_chunk(rel, chunk) == file
                data += chunk.data
            assert release.describe_file(file.name, data) == file
        report(box, pushed["rollout"], "installed", outcome="installed", at_ms=20)
        done = wait_until(lambda: centre.run_json("fleet", "update", "status", pushed["rollout"])["state"] == "done")
        assert done, centre.run("fleet", "update", "status", pushed["rollout"])[1]
    finally:
        box.close()
        code, errors = stop(proc)
    assert code == 0, errors
    assert "Traceback" not in errors
