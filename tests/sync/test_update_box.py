"""The box's update thread against a real Mosquitto and the centre's real chunk server.

The centre keeps small signed releases (made-up wheels; the release format
checks names and hashes, not contents) in a :class:`ReleaseStore`, served by
one :class:`ChunkServer` for the module. An operator's paho client publishes
the offers (retained) and watches ``update/state``; root's side is played by
writing its files (``prepared.json``, ``outcome.json``) with
:mod:`linetap.sync.appslots`.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import keys_init, public_key_b64
from linetap.firmware.spool import Spool
from linetap.sync import appslots, release, updatewire
from linetap.sync.boxsync import AppHooks, BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.chunkserver import ChunkServer
from linetap.sync.central.releases import KeptRelease, ReleaseStore
from linetap.sync.link import Link
from linetap.sync.mqtt import BrokerSettings
from linetap.sync.signed import seal
from linetap.sync.updatefiles import UpdateFiles
from linetap.sync.updater import Updater, python_tag
from update_site import subscriber
from updatekit import OPERATOR, RELEASE_KEY, TTL_MS

WAIT = 20.0


def now_ms() -> int:
    return int(SystemClock().wall() * 1000)


class Watcher:
    """The operator's paho client: publishes offers, keeps every update/state by device."""

    def __init__(self, broker: LocalBroker) -> None:
        self.states: list[tuple[str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self.client = subscriber(broker, "update-watcher", self._received, [(updatewire.state_filter(), 1)])

    def _received(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[2]
        with self._changed:
            self.states.append((device, json.loads(message.payload)))
            self._changed.notify_all()

    def wait_state(self, device: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [s for d, s in self.states if d == device and predicate(s)]
            return bool(found)

        with self._changed:
            assert self._changed.wait_for(seen, WAIT), [s for d, s in self.states if d == device]
        return found[-1]

    def offer(self, device: str, kept: KeptRelease | None, seq: int, *, allow_downgrade: bool = False) -> None:
        payload = b"" if kept is None else seal(
            "update", device, updatewire.offer_body(kept.release.data, kept.signature, rollout="r-test",
                                                    allow_downgrade=allow_downgrade),
            OPERATOR, seq=seq, now_ms=now_ms(), ttl_ms=TTL_MS)
        self.client.publish(updatewire.offer_topic(device), payload, qos=1, retain=True).wait_for_publish(WAIT)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory, shared_broker: LocalBroker) -> Iterator[dict[str, Any]]:
    """Kept releases 0.2.0 and 0.3.0 for this machine, a chunk server, and the operator's watcher."""
    root = tmp_path_factory.mktemp("centre")
    store = ReleaseStore(root / "central")
    kept = {}
    for version, size in (("0.2.0", 300_000), ("0.3.0", 140_000)):
        wheels = root / f"wheels-{version}"
        wheels.mkdir()
        (wheels / f"linetap-{version}-py3-none-any.whl").write_bytes(os.urandom(size))
        (wheels / "numpy-2.0.0-cp311-cp311-manylinux_2_36_aarch64.whl").write_bytes(os.urandom(5000))
        kept[version], _ = store.build(RELEASE_KEY, wheels, now_ms=now_ms(), machine=platform.machine(),
                                       python=python_tag())
    settings = BrokerSettings(host=shared_broker.host, port=shared_broker.port, tls=False, keepalive=10,
                              reconnect_min_s=0.2, reconnect_max_s=2.0)
    watcher = Watcher(shared_broker)
    with ChunkServer(store, settings, client_id="update-box-test-chunks") as server:
        server.wait_ready(WAIT)
        yield {"kept": kept, "server": server, "watcher": watcher}
    watcher.close()


class Box:
    """One box's update thread on its own link, with root's app folder and the conditions in the test's hands."""

    def __init__(self, broker: LocalBroker, folder: Path, device: str, *, current: str = "0.1.0",
                 release_key: Ed25519PrivateKey | None = RELEASE_KEY) -> None:
        self.device, self.data, self.app = device, folder / "box", folder / "app"
        keys = self.data / "keys"
        keys.mkdir(parents=True)
        (keys / "operator.pub").write_text(public_key_b64(OPERATOR.public_key()) + "\n")
        if release_key is not None:
            (keys / "release.pub").write_text(public_key_b64(release_key.public_key()) + "\n")
        self.app.mkdir()
        self.config = Config().model_copy(update={
            "device": Config().device.model_copy(update={"id": device}),
            "sync": Config().sync.model_copy(update={"broker": broker.host, "port": broker.port, "tls": False,
                                                     "reconnect_max_s": 1.0}),
            "spool": Config().spool.model_copy(update={"min_free_mb": 16})})
        self.busy = False
        self.pending = False
        self.stopped = threading.Event()
        self.current = current
        self.link: Link | None = None
        self.updater: Updater | None = None
        self.stop_if_idle: Callable[[str], bool] | None = None  # the call loop's judgement, when a test gives one

    def start(self) -> Box:
        self.link = Link(self.config.sync, client_id=self.device, data_dir=self.data, clock=SystemClock(),
                         on_connected=lambda: self.updater.on_connected(),
                         on_message=lambda message: self.updater.on_message(message))
        self.updater = Updater(self.config, self.link, self.data, clock=SystemClock(), app_root=self.app,
                               uploads_pending=lambda: self.pending, line_busy=lambda: self.busy,
                               stop_service=lambda _reason: self.stopped.set(), stop_if_idle=self.stop_if_idle,
                               current=self.current, factory_wheels=self.data / "no-factory")
        self.updater.start()
        self.link.start()
        return self

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.close()
        if self.link is not None:
            self.link.close()

    @property
    def files(self) -> UpdateFiles:
        return UpdateFiles(self.data, app_root=self.app)


@pytest.fixture
def make_box(shared_broker: LocalBroker, tmp_path: Path, request: pytest.FixtureRequest):
    boxes: list[Box] = []

    def make(device: str | None = None, **kw: Any) -> Box:
        name = device or f"upd-{request.node.name[5:30].replace('_', '-').strip('-')}"
        box = Box(shared_broker, tmp_path / f"b{len(boxes)}", name, **kw)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.stop()


def test_an_offer_is_fetched_staged_and_switched_to_once_prepared_and_the_line_idle(centre, make_box) -> None:
    kept, watcher = centre["kept"]["0.2.0"], centre["watcher"]
    box = make_box().start()
    watcher.offer(box.device, kept, seq=1)
    state = watcher.wait_state(box.device, lambda s: s["state"] == "preparing")
    assert (state["version"], state["release"], state["have"], state["total"]) == (
        "0.2.0", kept.release_id, kept.release.size, kept.release.size)
    staged = appslots.staged_dir(box.data, kept.release_id)
    for f in kept.release.files:
        assert (staged / f.sha256).read_bytes() == (kept.folder / "files" / f.sha256).read_bytes()
    assert release.verify((staged / "release.json").read_bytes(), (staged / "release.sig").read_bytes(),
                          [RELEASE_KEY.public_key()]).release_id == kept.release_id
    request = appslots.read_request(box.data)
    assert (request.release_id, request.version, request.allow_downgrade) == (kept.release_id, "0.2.0", False)
    box.busy = True  # a call is up when root has prepared the version
    appslots.write_prepared(box.app, appslots.Named(release_id=kept.release_id, version="0.2.0"))
    watcher.wait_state(box.device, lambda s: s["state"] == "waiting-idle")
    assert not box.stopped.is_set() and appslots.read_switch(box.data) is None
    box.busy = False
    watcher.wait_state(box.device, lambda s: s["state"] == "switching")
    assert box.stopped.wait(WAIT)
    assert appslots.read_switch(box.data) == appslots.Named(release_id=kept.release_id, version="0.2.0")


def test_a_call_the_loop_sees_as_the_switch_comes_keeps_the_old_version_and_the_box_waits(centre,
                                                                                        make_box) -> None:
    kept, watcher = centre["kept"]["0.2.0"], centre["watcher"]
    box = make_box()
    answers = iter([False, True])  # the call loop: a call came up between the tick and the switch; then idle
    asked: list[appslots.Named | None] = []

    def stop_if_idle(_reason: str) -> bool:
        asked.append(appslots.read_switch(box.data))
        return next(answers)

    box.stop_if_idle = stop_if_idle
    box.start()
    watcher.offer(box.device, kept, seq=1)
    watcher.wait_state(box.device, lambda s: s["state"] == "preparing")
    appslots.write_prepared(box.app, appslots.Named(release_id=kept.release_id, version="0.2.0"))
    watcher.wait_state(box.device, lambda s: s["state"] == "waiting-idle")
    assert box.updater.switched.wait(WAIT) and len(asked) == 2
    assert asked[0] == asked[1] == appslots.Named(release_id=kept.release_id, version="0.2.0")  # written first
    assert not box.stopped.is_set()  # the loop stopped the service itself


def test_a_restart_resumes_the_fetch_and_root_s_outcome_is_reported(centre, make_box) -> None:
    kept, watcher, server = centre["kept"]["0.2.0"], centre["watcher"], centre["server"]
    own = next(f for f in kept.release.files if f.name.startswith("linetap-"))
    first = make_box()
    files = first.files  # a fetch cut short: chunk 0 of the big file written, then the power went
    data = (kept.folder / "files" / own.sha256).read_bytes()
    files.write_chunk(own.sha256, 0, 0, data[:kept.release.chunk_size])
    offer = seal("update", first.device, updatewire.offer_body(kept.release.data, kept.signature, rollout="r"),
                 OPERATOR, seq=3, now_ms=now_ms(), ttl_ms=TTL_MS)
    files.save_offer(offer, 3)
    served = server.counts.served
    first.start()
    watcher.wait_state(first.device, lambda s: s["state"] == "preparing" and s["release"] == kept.release_id)
    assert server.counts.served - served == sum(len(f.chunks) for f in kept.release.files) - 1
    assert (appslots.staged_dir(first.data, kept.release_id) / own.sha256).read_bytes() == data
    appslots.write_outcome(first.app, appslots.Outcome(version="0.2.0", release_id=kept.release_id,
                                                       outcome="rolled-back", code="selftest-failed",
                                                       reason="spool folder not writable", at_ms=now_ms()))
    state = watcher.wait_state(first.device, lambda s: s["state"] == "rolled-back")
    assert (state["outcome"], state["code"], state["reason"]) == ("rolled-back", "selftest-failed",
                                                                  "spool folder not writable")
    assert not appslots.staged_dir(first.data, kept.release_id).exists()  # cleaned after the outcome


def test_without_a_release_key_the_offer_is_refused_saying_how_to_provision_one(centre, make_box) -> None:
    watcher = centre["watcher"]
    box = make_box(release_key=None).start()
    watcher.offer(box.device, centre["kept"]["0.2.0"], seq=1)
    state = watcher.wait_state(box.device, lambda s: s["state"] == "refused")
    assert state["code"] == "bad-signature" and "--release-key" in state["reason"]


def test_a_newer_offer_supersedes_and_an_empty_one_withdraws(centre, make_box) -> None:
    watcher, kept = centre["watcher"], centre["kept"]
    box = make_box()
    box.pending = True  # recordings first: nothing is fetched while they wait
    box.start()
    watcher.offer(box.device, kept["0.2.0"], seq=1)
    watcher.wait_state(box.device, lambda s: s["state"] == "fetching" and s["version"] == "0.2.0")
    watcher.offer(box.device, kept["0.3.0"], seq=2)
    watcher.wait_state(box.device, lambda s: s.get("code") == "superseded" and s["version"] == "0.2.0")
    watcher.wait_state(box.device, lambda s: s["state"] == "fetching" and s["version"] == "0.3.0")
    box.pending = False
    watcher.wait_state(box.device, lambda s: s["state"] == "preparing" and s["version"] == "0.3.0")
    watcher.offer(box.device, None, seq=0)
    watcher.wait_state(box.device, lambda s: s["state"] == "idle" and s.get("code") == "withdrawn")
    assert appslots.read_request(box.data) is None


def test_the_state_is_published_again_on_every_connect(centre, make_box, shared_broker) -> None:
    watcher = centre["watcher"]
    box = make_box().start()
    # Two: the state at start, and again when the link first came up.
    watcher.wait_state(box.device, lambda s: sum(1 for d, _ in watcher.states if d == box.device) >= 2)
    connects = threading.Event()
    box.link._on_connected = lambda: (box.updater.on_connected(), connects.set())
    count = sum(1 for d, _ in watcher.states if d == box.device)
    intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=box.device, protocol=mqtt.MQTTv5)
    intruder.connect(shared_broker.host, shared_broker.port)  # takes the box's session: the broker drops it
    intruder.disconnect()
    assert connects.wait(WAIT)
    watcher.wait_state(box.device, lambda s: sum(1 for d, _ in watcher.states if d == box.device) > count)


# ----------------------------------------------------------- the box's sync --

def test_boxsync_routes_updates_fetches_after_recordings_and_switches_by_the_app_s_hooks(centre, tmp_path,
                                                                                       shared_broker):
    kept, watcher = centre["kept"]["0.2.0"], centre["watcher"]
    device, data, app = "upd-boxsync-1", tmp_path / "box", tmp_path / "app"
    keys_init(data, str(pyrage.x25519.Identity.generate().to_public()), public_key_b64(OPERATOR.public_key()),
              release_key=public_key_b64(RELEASE_KEY.public_key()))
    defaults = Config()
    config = defaults.model_copy(update={
        "device": defaults.device.model_copy(update={"id": device}),
        "sync": defaults.sync.model_copy(update={"broker": shared_broker.host, "port": shared_broker.port,
                                                 "tls": False})})
    busy, restarted = [False], threading.Event()
    spool = Spool(data, device_id=device, clock=SystemClock())
    hooks = AppHooks(restart=lambda _reason: restarted.set(), line_busy=lambda: busy[0])
    with BoxSync(config, spool, data, clock=SystemClock(), hooks=hooks, app_root=app) as sync:
        watcher.wait_state(device, lambda s: s["state"] == "idle")
        watcher.offer(device, kept, seq=1)
        watcher.wait_state(device, lambda s: s["state"] == "preparing")
        busy[0] = True
        appslots.write_prepared(app, appslots.Named(release_id=kept.release_id, version="0.2.0"))
        watcher.wait_state(device, lambda s: s["state"] == "waiting-idle")
        busy[0] = False
        assert restarted.wait(WAIT)
        assert appslots.read_switch(data) == appslots.Named(release_id=kept.release_id, version="0.2.0")
        assert sync.updater.switched.is_set()
    spool.close()
