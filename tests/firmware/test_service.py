"""The service watchdog: pets only while audio flows and the call loop keeps up."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from linetap.firmware.callloop import MAX_BACKLOG_BLOCKS
from linetap.firmware.clock import ManualClock
from linetap.firmware.config import load_config
from linetap.firmware.recorder import MemorySink
from linetap.firmware.scripted import SimulatedCalls
from linetap.firmware.service import Notifier

RATE = 16000


@pytest.fixture
def notify_socket(tmp_path: Path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(0)
    yield str(tmp_path / "notify"), server
    server.close()


def received(server: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(server.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_status_and_stopping_reach_the_manager(notify_socket) -> None:
    address, server = notify_socket
    notifier = Notifier(ManualClock(), address=address, watchdog_usec="")
    notifier.ready()
    notifier.status("2 calls")
    notifier.stopping()
    notifier.pipeline_alive()  # no watchdog configured: no pets
    assert received(server) == ["READY=1\nSTATUS=recording", "STATUS=2 calls", "STOPPING=1"]
    notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier(ManualClock(), address="", watchdog_usec="")
    assert not notifier.enabled
    notifier.ready()
    notifier.pipeline_alive()


def test_watchdog_is_petted_while_blocks_flow_and_stops_when_the_pipeline_stalls(
        notify_socket, tmp_path: Path) -> None:
    address, server = notify_socket
    clock = ManualClock()
    notifier = Notifier(clock, address=address, watchdog_usec="2000000")  # WatchdogSec=2
    assert notifier.pet_interval == 1.0
    config = load_config(None)
    silence = np.zeros(20 * RATE, np.int16)
    calls = SimulatedCalls(config, silence, silence, sink=MemorySink(), clock=clock)
    calls.loop._heartbeat = notifier.pipeline_alive
    codec = calls.board.codec
    codec.start()
    try:
        for _ in range(5 * 50):  # 5 s of audio processed as it comes
            calls.loop.process(codec.read())
        flowing = received(server)
        assert flowing.count("WATCHDOG=1") == 5

        # The loop stalls: blocks pile up in its queue while it does not keep up.
        for _ in range(MAX_BACKLOG_BLOCKS + 5):
            calls.loop.post(codec.read())
        for _ in range(4):  # 3 s pass; what it manages to process is behind
            clock.advance(1.0)
            calls.loop.process(codec.read())
        assert received(server) == []
    finally:
        calls.board.close()
        notifier.close()


def test_an_update_s_switch_stops_the_service_only_while_no_call_is_up() -> None:
    """The call loop judges the line between two of its items: a call up means no stop."""
    import threading

    from linetap.drivers.events import HookChanged
    from linetap.firmware.service import fleet_hooks

    config = load_config(None)
    silence = np.zeros(20 * RATE, np.int16)
    clock = ManualClock()
    calls = SimulatedCalls(config, silence, silence, sink=MemorySink(), clock=clock)
    calls.board.codec.start()
    stop = threading.Event()
    notifier = Notifier(ManualClock(), address="", watchdog_usec="")
    hooks = fleet_hooks(calls.loop, calls.board, stop, notifier)
    source = calls.loop._hook_sources[0]
    loop = threading.Thread(target=calls.loop.run, args=(stop,), name="test-call-loop")
    loop.start()
    try:
        calls.loop.post(HookChanged(off_hook=True, source=source))  # a call comes up first
        assert hooks.stop_if_idle("update to 0.2.0") is False and not stop.is_set()
        assert hooks.line_busy()
        calls.loop.post(HookChanged(off_hook=False, source=source))
        assert hooks.stop_if_idle("update to 0.2.0") is False  # hung up, within the grace: still a call
        for _ in range(20):  # hang-up grace passes on the loop's clock, a block at a time
            clock.advance(1.0)
            calls.loop.post(calls.board.codec.read())
        assert hooks.stop_if_idle("update to 0.2.0") is True and stop.is_set()
    finally:
        stop.set()
        loop.join(10)
        calls.board.close()
