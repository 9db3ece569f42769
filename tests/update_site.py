"""A whole site for the remote update, every part a real process: broker, ``serve``, a box under a supervisor.

:class:`Site` starts, on a :class:`~linetap.sync.broker.LocalBroker` it is
given, a central store (its keys, a release key made with ``linetap-central
release keygen``, the box enrolled) served by a ``linetap-central serve``
subprocess (ingest, fleet tracker, chunk server), and a box: ``linetap run``
under :class:`update_supervisor.Supervisor` (gate, launcher, restarts, path
unit), its config pointing at the broker, keys for the central recipient, the
operator and the release key, and the simulated board's control socket
(``LINETAP_SIM_CONTROL``) so a test can lift the handset.

The operator's side goes through the command line as an admin's would
(``release build``, ``fleet update push``, ``fleet update status``, ``fleet
list``, ``fleet cmd``). A paho client (:class:`Watcher`) keeps every
``update/state`` the box publishes and counts the chunk bytes sent to it, so
tests wait on messages and the benchmark counts what the box received.
Used by ``tests/e2e/test_update_e2e.py`` and ``bench/update.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import update_helpers as uh
from update_supervisor import Supervisor

from linetap.drivers.simcontrol import CONTROL_ENV
from linetap.firmware.keys import keys_init
from linetap.sync import appslots, updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools

WAIT = 240.0


def subscriber(broker: LocalBroker, client_id: str, on_message: Callable[..., None],
               topics: list[tuple[str, int]]) -> mqtt.Client:
    """A paho MQTT v5 client on ``broker``, its loop started, once the broker acknowledged ``topics``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topics)
    assert subscribed.wait(30), f"{client_id}: the subscription was not acknowledged"
    return client


class Watcher:
    """Every ``update/state`` of one box, and the bytes of every chunk sent to it, as they arrive."""

    def __init__(self, broker: LocalBroker, device: str) -> None:
        self.device = device
        self.states: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), state)
        self.chunk_bytes = 0
        self._changed = threading.Condition()
        self.client = subscriber(broker, f"watch-{device}", self._received,
                                 [(updatewire.state_topic(device), 1), (updatewire.chunk_topic(device), 1)])

    def _received(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            if message.topic == updatewire.chunk_topic(self.device):
                self.chunk_bytes += len(message.payload)
            else:
                self.states.append((time.monotonic(), json.loads(message.payload)))
            self._changed.notify_all()

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0,
                   timeout: float = WAIT) -> tuple[float, dict[str, Any]]:
        """The first state from index ``after`` on that ``predicate`` accepts (its arrival time and body)."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((s for s in self.states[after:] if predicate(s[1])), None), timeout=timeout)
        assert found is not None, f"no such update/state within {timeout} s: {[s for _, s in self.states]}"
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Site:
    """The centre, a box and an operator around one broker (a context manager)."""

    def __init__(self, folder: Path, broker: LocalBroker, kit: uh.Kit, device: str) -> None:
        self.folder, self.broker, self.kit, self.device = folder, broker, kit, device
        self.centre, self.data, self.app = folder / "central", folder / "box", folder / "app"
        self.central_config = folder / "central.toml"
        self.box_config = folder / "box.toml"
        self.release_key = folder / "release.key"
        self.control = folder / "sim.sock"
        self._serve: subprocess.Popen | None = None
        self.box: Supervisor | None = None
        self.watcher: Watcher | None = None

    # ---------------------------------------------------------------- start --

    def __enter__(self) -> Site:
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = central_keys_init(self.centre)
        made = subprocess.run([sys.executable, "-m", "linetap.sync.central.cli", "release", "keygen",
                               "--out", str(self.release_key)], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        release_public = made.stdout.strip()
        info = keys_init(self.data, keys.recipient, operator_key=keys.operator_public_key_b64,
                         release_key=release_public)
        with StoreTools(self.centre) as tools:
            tools.enroll(self.device, info.public_key_b64)
        self.app.mkdir()
        (self.app / appslots.RELEASE_KEY).write_text(release_public + "\n")  # root's copy, as provisioning makes
        self.central_config.write_text(f'[broker]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
                                       'workers = 1\n')
        self.box_config.write_text(f'[device]\nid = "{self.device}"\n\n[sync]\nbroker = "{self.broker.host}"\n'
                                   f'port = {self.broker.port}\ntls = false\n')
        self.watcher = Watcher(self.broker, self.device)
        self._serve = subprocess.Popen([sys.executable, "-m", "linetap.sync.central.cli", "--data-dir",
                                        str(self.centre), "serve", "--config", str(self.central_config)],
                                       stdout=subprocess.DEVNULL, stderr=open(self.folder / "serve.log", "wb"))
        self.box = Supervisor(self.app, self.data, ["run", "--config", str(self.box_config)],
                              config=self.box_config, env={CONTROL_ENV: str(self.control)}).start()
        self.box.wait_for(lambda e: e[:2] == ("ready", "factory"))
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.box is not None:
            self.box.stop()
        if self.watcher is not None:
            self.watcher.close()
        if self._serve is not None:
            self._serve.send_signal(signal.SIGTERM)
            self._serve.wait(timeout=60)

    # ------------------------------------------------------------- operator --

    def central(self, *args: str, timeout: float = 120, config: bool = True) -> str:
        """``linetap-central ARGS`` on the centre (``--config`` the broker's unless ``config`` is false); its
        stdout (AssertionError with its output on failure)."""
        extra = ["--config", str(self.central_config)] if config else []
        done = subprocess.run([sys.executable, "-m", "linetap.sync.central.cli", *args, "--data-dir",
                               str(self.centre), *extra],
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"linetap-central {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def build_release(self, version: str, patch: Callable[[Path], None] | None = None) -> dict[str, Any]:
        """The working tree at ``version`` (``patch``ed) with the box's dependencies, kept by ``release
        build``; its summary."""
        wheels = self.folder / f"wheels-{version}"
        uh.tree_wheel(wheels, version, patch)
        for dep in uh.dependency_wheels():
            os.link(dep, wheels / dep.name)
        return json.loads(self.central("release", "build", "--release-key", str(self.release_key), "--wheels",
                                       str(wheels), "--machine", os.uname().machine, "--python", uh.PYTHON_TAG,
                                       "--json", config=False))

    def push(self, version: str) -> str:
        """``fleet update push VERSION DEVICE``: the rollout's id."""
        return json.loads(self.central("fleet", "update", "push", version, self.device, "--json"))["rollout"]

    def target(self, rollout: str, predicate: Callable[[dict[str, Any]], bool], *,
               timeout: float = 60) -> dict[str, Any]:
        """The box's row in ``fleet update status ROLLOUT --json`` once ``predicate`` accepts it (polled)."""
        deadline = time.monotonic() + timeout
        while True:
            [row] = json.loads(self.central("fleet", "update", "status", rollout, "--json", config=False))["targets"]
            if predicate(row):
                return row
            assert time.monotonic() < deadline, f"the centre's view did not come within {timeout} s: {row}"
            threading.Event().wait(0.3)  # a poll's pace, not a timing assumption: the deadline bounds it

    def listed(self) -> dict[str, Any]:
        """The box's entry in ``fleet list --json``."""
        devices = json.loads(self.central("fleet", "list", "--json", config=False))["devices"]
        return next(d for d in devices if d["device_id"] == self.device)

    # ------------------------------------------------------------------ box --

    def handset(self, off_hook: bool) -> None:
        """Lift (or put down) the simulated handset through the box's control socket; waits for its answer."""
        command = b"hook-off" if off_hook else b"hook-on"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            me = self.folder / f"ctl-{os.getpid()}-{threading.get_ident()}"
            me.unlink(missing_ok=True)
            client.bind(str(me))
            client.settimeout(10)
            client.sendto(command, str(self.control))
            assert client.recv(256) == b"ok " + command
            me.unlink()

    def current(self) -> str | None:
        """The version root's ``current`` link names (None: the factory)."""
        return appslots.read_link(self.app, appslots.CURRENT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
