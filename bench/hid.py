"""HID telephony: what reading a headset's buttons and forwarding them to the PC costs.

Figures, on the simulated headset (numbered reports, hook absolute, mute a
button) and the box's own gadget descriptor:

- ``parse_us``: parsing the headset's report descriptor (once per plug-in);
- ``forward_us``: one headset report decoded from its descriptor and
  re-encoded as the box's input report (``Forwarder.from_headset``);
  peer ``hardcoded_us``: the same decision hard-coded for this one model
  (test bit 0, build the byte), the least any forwarder does;
- ``latency_us`` p50/p99: a hook report written by the simulated headset
  until the simulated PC reads the box's report, through ``HidTelephony``'s
  reader thread on real file descriptors; peer ``relay_us``: a bare thread
  copying reports between the same kind of socket pairs with the same poll.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any

import numpy as np

from linetap.drivers.hid import Forwarder, HidTelephony, SimHeadset, SimHidNodes, SimHost, parse_descriptor
from linetap.drivers.hid.sim import SIM_HEADSET_DESCRIPTOR
from linetap.firmware.clock import SystemClock

ROUNDS = 2000
TRIPS = 400


def _per_call_us(fn: Any, args: list[Any]) -> float:
    start = time.perf_counter()
    for arg in args:
        fn(arg)
    return (time.perf_counter() - start) / len(args) * 1e6


def _percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(samples, 50)), 1), "p99": round(float(np.percentile(samples, 99)), 1)}


def _driver_latency() -> list[float]:
    nodes = SimHidNodes()
    headset, host = SimHeadset(nodes), SimHost(nodes)
    driver = HidTelephony("/dev/hidraw0", "/dev/hidg0", lambda event: None, clock=SystemClock(), nodes=nodes)
    samples = []
    try:
        for i in range(TRIPS):
            start = time.perf_counter()
            headset.set(hook=i % 2 == 0)
            host.receive()
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        driver.close()
        headset.close()
        host.close()
    return samples


def _relay_latency() -> list[float]:
    device, box_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    box_out, pc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wake_r, wake_w = os.pipe()

    def relay() -> None:
        poller = select.poll()
        poller.register(box_in.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while wake_r not in dict(poller.poll()):
            box_out.send(box_in.recv(4097))

    thread = threading.Thread(target=relay, name="bench-relay", daemon=True)
    thread.start()
    samples = []
    for i in range(TRIPS):
        start = time.perf_counter()
        device.send(bytes((2, i % 2)))
        pc.recv(4097)
        samples.append((time.perf_counter() - start) * 1e6)
    os.write(wake_w, b"x")
    thread.join(2)
    for s in (device, box_in, box_out, pc):
        s.close()
    os.close(wake_r)
    os.close(wake_w)
    return samples


def run() -> dict[str, Any]:
    parse_us = _per_call_us(parse_descriptor, [SIM_HEADSET_DESCRIPTOR] * 200)
    forward = Forwarder(parse_descriptor(SIM_HEADSET_DESCRIPTOR))
    reports = [bytes((2, i % 2)) for i in range(ROUNDS)]
    forward_us = _per_call_us(forward.from_headset, reports)
    hardcoded_us = _per_call_us(lambda r: bytes((r[1] & 1,)), reports)
    return {
        "parse_us": round(parse_us, 1),
        "forward_us": round(forward_us, 2),
        "hardcoded_us": round(hardcoded_us, 3),
        "latency_us": _percentiles(_driver_latency()),
        "relay_us": _percentiles(_relay_latency()),
    }
