"""The self-test a new version must pass: ``linetap selftest`` and the trial check the service runs.

The broker check uses the session's real Mosquitto; the spool is made
unwritable by putting a file where its folder goes (the tests may run as
root, whom file modes do not stop).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from linetap.firmware import __version__, selftest
from linetap.firmware.clock import SystemClock
from linetap.firmware.config import load_config
from linetap.sync import appslots
from linetap.sync.broker import LocalBroker

pytestmark = pytest.mark.broker("session")


def config_file(folder: Path, broker: LocalBroker) -> Path:
    path = folder / "linetap.toml"
    path.write_text(f'[device]\nid = "lt-selftest-1"\n\n[sync]\nbroker = "127.0.0.1"\nport = {broker.port}\n'
                    "tls = false\n")
    return path


def selftest_cli(config: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "selftest", "--config", str(config),
                           "--data-dir", str(data), "--json", "--broker-timeout", "20"],
                          capture_output=True, text=True, timeout=120)


def test_selftest_passes_on_the_simulated_board(tmp_path: Path, broker: LocalBroker) -> None:
    done = selftest_cli(config_file(tmp_path, broker), tmp_path / "data")
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(checks) == ["drivers", "pipeline", "spool", "broker"] and all(c["ok"] for c in checks.values())
    assert "dBFS" in checks["pipeline"]["detail"] and not (tmp_path / "data/spool" / selftest.PROBE).exists()


def test_selftest_fails_naming_an_unwritable_spool(tmp_path: Path, broker: LocalBroker) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "spool").write_text("not a folder\n")
    done = selftest_cli(config_file(tmp_path, broker), data)
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 1
    assert not checks["spool"]["ok"] and "spool" in checks["spool"]["detail"]
    assert all(checks[name]["ok"] for name in ("drivers", "pipeline", "broker"))


def test_selftest_without_a_broker_configured_says_it_has_none_to_reach(tmp_path: Path) -> None:
    checks = selftest.run_checks(load_config(None), tmp_path, drivers=lambda: "open", broker=None)
    assert all(c.ok for c in checks) and "not checked" in checks[-1].detail


def test_a_check_that_crashes_fails_named_so_the_trial_still_gets_a_verdict(tmp_path: Path) -> None:
    def crash() -> str:
        raise RuntimeError("driver bug")

    checks = selftest.run_checks(load_config(None), tmp_path, drivers=crash, broker=None)
    assert selftest.failure(checks) == "drivers: RuntimeError: driver bug"
    assert all(c.ok for c in checks[1:])


def test_selftest_fails_naming_a_broker_it_cannot_reach(tmp_path: Path, broker: LocalBroker) -> None:
    config = load_config(config_file(tmp_path, broker))
    checks = selftest.run_checks(config, tmp_path, drivers=lambda: "open", broker=lambda _deadline: False,
                                 deadline_s=2)
    assert [c.name for c in checks if not c.ok] == ["broker"]
    assert checks[-1].detail == f"not connected to 127.0.0.1:{broker.port} within 2 s"


@pytest.mark.parametrize("spool_ok", [True, False])
def test_a_version_on_trial_writes_healthy_or_unhealthy_and_a_failure_stops_it(tmp_path: Path, broker: LocalBroker,
                                                                                spool_ok) -> None:
    data, app = tmp_path / "data", tmp_path / "app"
    data.mkdir()
    if not spool_ok:
        (data / "spool").write_text("not a folder\n")
    appslots.write_trial(app, appslots.Trial(version=__version__, release_id="a" * 64, previous="0.0.1",
                                             deadline_ms=int(SystemClock().wall() * 1000) + 300_000, starts=1))
    failed: list[str] = []
    config = load_config(config_file(tmp_path, broker))
    thread = selftest.start_trial_check(config, data, app, __version__, drivers=lambda: "open",
                                        broker=lambda _deadline: True, on_failed=failed.append,
                                        clock=SystemClock())
    thread.join(60)
    healthy, unhealthy = appslots.read_health(data)
    if spool_ok:
        assert healthy == appslots.Health(__version__, healthy=True) and unhealthy is None and not failed
    else:
        assert healthy is None and unhealthy.code == "selftest-failed" and unhealthy.reason.startswith("spool:")
        assert failed == [unhealthy.reason]


def test_no_trial_of_this_version_means_no_self_test(tmp_path: Path) -> None:
    started = selftest.start_trial_check(load_config(None), tmp_path, tmp_path / "app", __version__,
                                         drivers=lambda: "open", broker=None, on_failed=lambda _r: None,
                                         clock=SystemClock())
    assert started is None and appslots.read_health(tmp_path) == (None, None)


def test_the_service_checks_its_trial_and_stops_when_the_check_fails(tmp_path: Path, monkeypatch) -> None:
    from linetap.firmware import service
    from linetap.firmware.devices import build_board

    app, data = tmp_path / "app", tmp_path / "data"
    monkeypatch.setenv(appslots.APP_ROOT_ENV, str(app))
    appslots.write_trial(app, appslots.Trial(version=__version__, release_id="b" * 64, previous=None,
                                             deadline_ms=int(SystemClock().wall() * 1000) + 300_000, starts=1))
    data.mkdir()
    (data / "spool").write_text("not a folder\n")
    config, stop = load_config(None), threading.Event()
    board = build_board(config, SystemClock(), lambda _event: None)
    try:
        failed = service._check_trial(config, data, board, None, stop, SystemClock())
        assert stop.wait(60)
    finally:
        board.close()
    unhealthy = appslots.read_health(data)[1]
    assert failed == [unhealthy.reason] and unhealthy.reason.startswith("spool:")
