"""The simulated board's control socket: the service's board lifts its handset for another process, and
refuses what is not a command; off unless LINETAP_SIM_CONTROL names a path."""

from __future__ import annotations

import queue
import socket
from pathlib import Path

import pytest

from linetap.drivers.events import HookChanged
from linetap.drivers.simcontrol import CONTROL_ENV, MAX_DATAGRAM, SimControl
from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.devices import build_board


def _ask(path: Path, me: Path, data: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(me))
        client.settimeout(5)
        client.sendto(data, str(path))
        return client.recv(256).decode()


def test_the_service_board_lifts_and_puts_down_its_handset_for_another_process(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ctl"
    monkeypatch.setenv(CONTROL_ENV, str(path))
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    board = build_board(Config(), SystemClock(), events.put, live=True)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert _ask(path, tmp_path / "a", b"hook-off") == "ok hook-off"
        assert _hook(events) is True
        assert _ask(path, tmp_path / "b", b"hook-on\n") == "ok hook-on"
        assert _hook(events) is False
    finally:
        board.close()
    assert not path.exists()


def test_without_the_setting_or_off_the_service_there_is_no_socket(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CONTROL_ENV, str(tmp_path / "ctl"))
    board = build_board(Config(), SystemClock(), lambda _e: None)  # replay and the demo: not live
    board.close()
    monkeypatch.delenv(CONTROL_ENV)
    board = build_board(Config(), SystemClock(), lambda _e: None, live=True)
    try:
        assert board.control is None and not (tmp_path / "ctl").exists()
    finally:
        board.close()


def test_bad_datagrams_are_refused_named_and_the_socket_keeps_serving(tmp_path) -> None:
    done: list[str] = []
    control = SimControl(tmp_path / "ctl", {"hook-off": lambda: done.append("off")})
    try:
        assert _ask(control.path, tmp_path / "a", b"x" * (MAX_DATAGRAM + 1)).startswith("error a command is at most")
        assert _ask(control.path, tmp_path / "b", b"\xff\xfe") == "error a command is ASCII text"
        assert "unknown command 'reboot'; send one of hook-off" in _ask(control.path, tmp_path / "c", b"reboot")
        assert _ask(control.path, tmp_path / "d", b"hook-off") == "ok hook-off" and done == ["off"]
    finally:
        control.close()


def test_a_stale_socket_is_replaced_and_a_file_in_the_way_is_refused(tmp_path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / "ctl"))
    stale.close()  # left behind by a killed run
    SimControl(tmp_path / "ctl", {}).close()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="something other than a socket"):
        SimControl(tmp_path / "file", {})
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(ValueError, match="at most"):
        SimControl(tmp_path / ("x" * 120), {})


def _hook(events: queue.SimpleQueue[object]) -> bool:
    while True:
        event = events.get(timeout=5)
        if isinstance(event, HookChanged):
            return event.off_hook
