"""The real box (BoxSync) and the real central store (``linetap-central serve`` and ``fleet``), one broker.

The box and the centre each have their own tests; this one proves they speak
the same language: the tracker started by ``serve`` sees the box, a signed
command is answered and verified, a pushed config is applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import keys_init
from linetap.firmware.spool import Spool
from linetap.sync.boxsync import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools

DEVICE = "lt-e2e-fleet"


def central(folder: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linetap.sync.central.cli", *args, "--data-dir", str(folder),
                           "--config", str(config)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path, BoxSync]]:
    centre, box = tmp_path / "central", tmp_path / "box"
    keys = central_keys_init(centre)
    info = keys_init(box, keys.recipient, operator_key=keys.operator_public_key_b64)
    with StoreTools(centre) as tools:
        tools.enroll(DEVICE, info.public_key_b64)
    with LocalBroker(tmp_path / "broker") as broker:
        config_file = tmp_path / "central.toml"
        config_file.write_text(f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nworkers = 1\n')
        serve = subprocess.Popen([sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(centre),
                                  "serve", "--config", str(config_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        defaults = Config()
        config = defaults.model_copy(update={
            "device": defaults.device.model_copy(update={"id": DEVICE}),
            "sync": defaults.sync.model_copy(update={"broker": broker.host, "port": broker.port, "tls": False})})
        spool = Spool(box, device_id=DEVICE, clock=SystemClock())
        sync = BoxSync(config, spool, box, clock=SystemClock()).start()
        try:
            yield centre, config_file, sync
        finally:
            sync.close()
            spool.close()
            serve.send_signal(signal.SIGTERM)
            _, err = serve.communicate(timeout=30)
            assert serve.returncode == 0, err.decode()[-2000:]


def test_serve_tracks_the_box_and_fleet_commands_reach_it(site, tmp_path: Path) -> None:
    centre, config, sync = site
    # A signed command makes a round trip: the box verified the operator, the centre the box.
    ping = central(centre, config, "fleet", "cmd", DEVICE, "ping", "--json", "--timeout", "20")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert json.loads(ping.stdout)["status"] == "ok"

    listed = central(centre, config, "fleet", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [device] = [d for d in json.loads(listed.stdout)["devices"] if d["device_id"] == DEVICE]
    assert device["state"] == "online" and device["boot"] == sync.boot

    site_config = tmp_path / "site.toml"
    site_config.write_text('[log]\nlevel = "warning"\n')
    pushed = central(centre, config, "fleet", "config", "push", DEVICE, str(site_config), "--json",
                     "--timeout", "20")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert json.loads(pushed.stdout)["counts"]["applied"] == 1
    assert sync.agent.config.log.level == "warning"
    # Keys the push leaves out keep the box's own values: its broker is not blanked.
    assert sync.agent.config.sync.broker == "127.0.0.1" and sync.agent.config.device.id == DEVICE
    assert (centre / "index.db").exists() and os.path.getsize(centre / "index.db") > 0
