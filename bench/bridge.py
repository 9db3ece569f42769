"""The USB handset bridge: CPU per second of call, added one-way latency, rate-matching error.

The bridge core runs between a simulated headset (+300 ppm) and a simulated
PC (-300 ppm), both at 48 kHz with 10 ms periods whose callbacks are late by
up to 0.5 ms and whose input the pump takes up to 2 ms later, recording at
16 kHz, as on the ``pi4-usb-inline`` board, with the default 5 ms margin.

Peer, in the same run: a **bare copy** between the same two simulated
devices on one clock (no drift, so no resampling and no control), each
direction a plain FIFO the consumer empties as soon as a block is there.
That is the least any bridge pays: the devices' own periods. Latency is
measured end to end with clicks: a click every 0.25 s in what each side
sends, found in what the other side receives, each sample timed from its
device period's callback (captured: before the callback, played: after it).
The bridge's figures are after convergence (the first 30 s left out).

Rate-matching error: the resampler's step correction against the true
mismatch of the two clocks (600.18 ppm), averaged over the last minute.
CPU is the whole simulation's (devices included, the same in both), on
this machine: a Pi 4 is about 4-6 times slower per core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from linetap.drivers.usbbridge import BridgeCore, BridgeSettings, SampleRing, SimEndpoint, SimRig

RATE, DEVICE_RATE, PERIOD = 16000, 48000, 480
SECONDS = 150.0
SETTLE_S = 30.0
CLICK_EVERY = DEVICE_RATE // 4
HEADSET_PPM, HOST_PPM = 300.0, -300.0
PUMP_DELAY_S = 0.002  # the reader thread takes each period's input up to 2 ms late


def _clicks(offset: int) -> Callable[[int, int], np.ndarray]:
    def signal(first: int, count: int) -> np.ndarray:
        n = first + np.arange(count)
        return np.where((n - offset) % CLICK_EVERY == 0, 20000, 0).astype(np.int16)
    return signal


def _devices(headset_ppm: float, host_ppm: float) -> tuple[SimEndpoint, SimEndpoint]:
    headset = SimEndpoint("headset", rate=DEVICE_RATE, block=PERIOD, ppm=headset_ppm, jitter_s=0.0005,
                          seed=1, signal=_clicks(1000))
    host = SimEndpoint("host", rate=DEVICE_RATE, block=PERIOD, ppm=host_ppm, jitter_s=0.0005, seed=2,
                       start_s=0.0037, signal=_clicks(7000))
    headset.log_times = host.log_times = True
    return headset, host


class _BareCopy:
    """The peer: what each side sends goes into a FIFO the other side empties, block for block."""

    def __init__(self) -> None:
        self.uplink, self.downlink = SampleRing(16 * PERIOD), SampleRing(16 * PERIOD)
        self.settings = BridgeSettings(rate=RATE, block_frames=RATE // 50)

    def pull_speaker(self, out: np.ndarray, far: np.ndarray, now: float) -> None:
        self.downlink.read_into(out)
        far[:] = out

    def headset_in(self, mic: np.ndarray, far: np.ndarray, now: float) -> None:
        self.uplink.write(mic)

    def pull_uplink(self, out: np.ndarray, now: float) -> None:
        self.uplink.read_into(out)

    def gadget_in(self, pc: np.ndarray, now: float) -> None:
        self.downlink.write(pc)

    def take_block(self) -> None:
        return None


def _times(device: SimEndpoint, captured: bool) -> np.ndarray:
    """Each sample's time: captured ones during the period before its callback, played ones after."""
    ticks = np.asarray(device.ticks)
    within = np.arange(PERIOD) / DEVICE_RATE
    return (ticks[:, None] + (within - PERIOD / DEVICE_RATE if captured else within)).ravel()


def _latencies(sender: SimEndpoint, receiver: SimEndpoint, offset: int, after_s: float) -> np.ndarray:
    """Click by click: when it was captured at ``sender`` and when ``receiver`` played it."""
    sent_t = _times(sender, captured=True)
    got = receiver.received.astype(np.float64)
    got_t = _times(receiver, captured=False)[:len(got)]
    found = []
    for index in range(offset, len(sent_t), CLICK_EVERY):
        start = np.searchsorted(got_t, sent_t[index])  # a click cannot come out before it went in
        window = np.abs(got[start:start + DEVICE_RATE // 8])
        if sent_t[index] < after_s or len(window) < DEVICE_RATE // 8 or window.max() < 5000:
            continue
        peak = start + int(np.argmax(window))
        found.append(got_t[peak] - sent_t[index])
    return np.array(found)


def _run(core: Any, headset: SimEndpoint, host: SimEndpoint, on_step: Any = None) -> float:
    rig = SimRig(core, headset, host, pump_delay_s=PUMP_DELAY_S)  # the bare copy offers the core's four calls
    started = time.process_time()
    rig.run(SECONDS, on_step)
    return (time.process_time() - started) * 1000 / SECONDS


def _summary(latencies: np.ndarray) -> dict[str, float]:
    ms = latencies * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "clicks": len(ms)}


def run() -> dict[str, Any]:
    settings = BridgeSettings(rate=RATE, block_frames=RATE // 50, headset_rate=DEVICE_RATE,
                              gadget_rate=DEVICE_RATE, device_block_ms=10.0)
    core = BridgeCore(settings)
    headset, host = _devices(HEADSET_PPM, HOST_PPM)
    corrections: list[float] = []

    def sample(rig: SimRig) -> None:
        while core.take_block() is not None:
            pass
        if rig.now > SECONDS - 60:
            corrections.append(core.uplink.controller.correction)

    bridge_ms = _run(core, headset, host, sample)
    bare_headset, bare_host = _devices(0.0, 0.0)
    bare_ms = _run(_BareCopy(), bare_headset, bare_host)
    true_ppm = ((1 + HEADSET_PPM * 1e-6) / (1 + HOST_PPM * 1e-6) - 1) * 1e6
    learnt = float(np.mean(corrections)) * 1e6
    stats = core.stats()
    figures: dict[str, Any] = {
        "setup": f"headset {HEADSET_PPM:+g} ppm, PC {HOST_PPM:+g} ppm, both {DEVICE_RATE} Hz in {PERIOD}-frame "
                 f"periods with 0.5 ms callback jitter, the pump up to {PUMP_DELAY_S * 1000:g} ms late; "
                 f"recording {RATE} Hz; {SECONDS:g} s simulated",
        "unit": "CPU ms per second of call (whole simulation, devices included); latency one way",
        "bridge_cpu_ms_per_s": round(bridge_ms, 3),
        "peer": "bare copy between the same simulated devices on one clock (FIFO per direction, no resampling)",
        "peer_cpu_ms_per_s": round(bare_ms, 3),
        "bridge_minus_peer_cpu_ms_per_s": round(bridge_ms - bare_ms, 3),
        "underruns": stats.uplink.underruns + stats.downlink.underruns,
        "overruns": stats.uplink.overruns + stats.downlink.overruns,
        "true_mismatch_ppm": round(true_ppm, 2),
        "learnt_mismatch_ppm": round(learnt, 2),
        "rate_error_ppm": round(learnt - true_ppm, 3),
        "rate_error_ppm_p99_abs": round(float(np.percentile(np.abs(np.array(corrections) * 1e6 - true_ppm), 99)), 3),
    }
    for name, (sender, receiver, offset, bare_sender, bare_receiver) in {
            "uplink": (headset, host, 1000, bare_headset, bare_host),
            "downlink": (host, headset, 7000, bare_host, bare_headset)}.items():
        bridge = _latencies(sender, receiver, offset, SETTLE_S)
        bare = _latencies(bare_sender, bare_receiver, offset, SETTLE_S)
        figures[f"{name}_latency"] = _summary(bridge)
        figures[f"{name}_peer_latency"] = _summary(bare)
        figures[f"{name}_added_p50_ms"] = round(float(np.percentile(bridge, 50) - np.percentile(bare, 50)) * 1000, 3)
        figures[f"{name}_added_p99_ms"] = round(float(np.percentile(bridge, 99) - np.percentile(bare, 99)) * 1000, 3)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
