"""The capture path at 16 kHz stereo, 20 ms blocks, against sounddevice's recipe.

The peer is the recording example of the sounddevice documentation: the
callback does ``q.put(indata.copy())`` into a ``queue.Queue`` and the
consumer does ``q.get()``. Figures:

- ``callback``: time of one callback (ring push vs. copy + put), in
  microseconds, with a consumer thread draining. The producer thread fires a
  callback every CALLBACK_PERIOD (80 times real time), so the ring never
  fills and every push takes the full path: copy, publish, wake the reader.
- ``allocated_bytes_per_callback``: memory the callback allocates, as
  tracemalloc sees it (the recipe's copy is what the allocator and garbage
  collector must keep up with on the audio thread).
- ``consumer``: blocks and frames per second one consumer thread gets through
  when each block is handed over and taken back (push then pop, or put then
  get) and turned into a Block, flat out: the transport's cost per block.
- ``sim_codec``: SimCodec -> CaptureRing -> a consumer thread calling read()
  on a ManualClock, so it runs flat out; besides the transport it slices the
  source and plays a block of the line per read, as a duplex stream does.

Ratios are recipe / ring for times and ring / recipe for rates: above 1
means the ring is better.
"""

from __future__ import annotations

import queue
import threading
import time
import tracemalloc

import numpy as np

from linetap.drivers.audio import Block, CaptureRing, SimCodec
from linetap.firmware.clock import ManualClock

RATE = 16000
BLOCK_FRAMES = 320
CALLBACKS = 10_000
CALLBACK_PERIOD = 0.00025  # seconds; blocks are 20 ms apart on a real device
SECONDS = 600  # of audio through the consumer figures
QUEUE_BLOCKS = 100  # the codecs' default ring size
JOIN_TIMEOUT = 120.0


def _source() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-3000, 3000, size=(SECONDS * RATE, 2), dtype=np.int16)


def _percentiles(durations_ns: np.ndarray) -> dict:
    p50, p99 = np.percentile(durations_ns, [50, 99]) / 1000
    return {"p50_us": round(float(p50), 2), "p99_us": round(float(p99), 2),
            "max_us": round(float(durations_ns.max()) / 1000, 1)}


def _callback_times(callback, take, name: str) -> dict:
    """Time ``callback`` on a paced producer thread while a consumer thread ``take``s until None."""
    indata = _source()[:BLOCK_FRAMES]
    durations = np.zeros(CALLBACKS, dtype=np.int64)
    received = [0]

    def produce() -> None:
        for i in range(CALLBACKS):
            started = time.perf_counter_ns()
            callback(indata)
            durations[i] = time.perf_counter_ns() - started
            time.sleep(CALLBACK_PERIOD)
        callback(None)

    def consume() -> None:
        while take() is not None:
            received[0] += 1

    threads = [threading.Thread(target=consume, name=f"bench-{name}-consumer"),
               threading.Thread(target=produce, name=f"bench-{name}-producer")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    return {**_percentiles(durations), "received": received[0]}


def _ring_callback() -> dict:
    ring = CaptureRing(QUEUE_BLOCKS, BLOCK_FRAMES)

    def callback(indata: np.ndarray | None) -> None:
        if indata is None:  # the end of the run, not part of the figures
            ring.close()
        else:
            ring.push(indata)

    def take() -> np.ndarray | None:
        item = ring.pop(JOIN_TIMEOUT)
        return None if item is None else item[1]

    figures = _callback_times(callback, take, "ring")
    figures["dropped"] = ring.dropped
    return figures


def _recipe_callback() -> dict:
    q: queue.Queue[np.ndarray | None] = queue.Queue()

    def callback(indata: np.ndarray | None) -> None:
        q.put(None if indata is None else indata.copy())

    return _callback_times(callback, lambda: q.get(timeout=JOIN_TIMEOUT), "recipe")


def _allocated_per_callback(callback) -> float:
    indata = _source()[:BLOCK_FRAMES]
    callback(indata)  # warm-up: first calls fill numpy's caches
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(QUEUE_BLOCKS // 2):
            callback(indata)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return round((peak - before) / (QUEUE_BLOCKS // 2), 1)


def _in_consumer_thread(work, name: str) -> float:
    """Seconds ``work`` took on a thread of its own."""
    elapsed = [float("nan")]

    def timed() -> None:
        started = time.perf_counter()
        work()
        elapsed[0] = time.perf_counter() - started

    thread = threading.Thread(target=timed, name=f"bench-{name}-consumer")
    thread.start()
    thread.join(JOIN_TIMEOUT)
    return elapsed[0]


def _rates(blocks: int, elapsed: float) -> dict:
    return {"blocks": blocks, "blocks_per_s": round(blocks / elapsed),
            "frames_per_s": round(blocks * BLOCK_FRAMES / elapsed),
            "realtime_factor": round(blocks * BLOCK_FRAMES / RATE / elapsed)}


def _consumer(source: np.ndarray) -> dict:
    blocks = len(source) // BLOCK_FRAMES
    ring = CaptureRing(QUEUE_BLOCKS, BLOCK_FRAMES)
    q: queue.Queue[np.ndarray] = queue.Queue()

    def through_ring() -> None:
        for k in range(blocks):
            ring.push(source[k * BLOCK_FRAMES:(k + 1) * BLOCK_FRAMES])
            seq, frames = ring.pop(0)
            Block(seq=seq, t=seq * BLOCK_FRAMES / RATE, frames=frames)

    def through_queue() -> None:
        for k in range(blocks):
            q.put(source[k * BLOCK_FRAMES:(k + 1) * BLOCK_FRAMES].copy())
            Block(seq=k, t=k * BLOCK_FRAMES / RATE, frames=q.get())

    return {"ring": _rates(blocks, _in_consumer_thread(through_ring, "ring")),
            "queue_recipe": _rates(blocks, _in_consumer_thread(through_queue, "recipe"))}


def _sim_codec(source: np.ndarray) -> dict:
    codec = SimCodec(source[:, 0].copy(), source[:, 1].copy(), rate=RATE, block_frames=BLOCK_FRAMES,
                     clock=ManualClock())
    blocks = [0]

    def read_all() -> None:
        while codec.read() is not None:
            blocks[0] += 1

    codec.start()
    elapsed = _in_consumer_thread(read_all, "sim")
    codec.close()
    return _rates(blocks[0], elapsed)


def run() -> dict:
    ring, recipe = _ring_callback(), _recipe_callback()
    source = _source()
    consumer = _consumer(source)
    return {
        "setup": {"rate": RATE, "channels": 2, "block_frames": BLOCK_FRAMES, "callbacks": CALLBACKS,
                  "callback_period_s": CALLBACK_PERIOD, "consumer_audio_s": SECONDS,
                  "ring_blocks": QUEUE_BLOCKS},
        "callback": {"ring": ring, "queue_recipe": recipe,
                     "ratio_p50": round(recipe["p50_us"] / ring["p50_us"], 2),
                     "ratio_p99": round(recipe["p99_us"] / ring["p99_us"], 2)},
        "allocated_bytes_per_callback": {
            "ring": _allocated_per_callback(CaptureRing(QUEUE_BLOCKS, BLOCK_FRAMES).push),
            "queue_recipe": _allocated_per_callback(lambda indata, q=queue.Queue(): q.put(indata.copy())),
        },
        "consumer": {**consumer, "ratio": round(consumer["ring"]["blocks_per_s"]
                                                / consumer["queue_recipe"]["blocks_per_s"], 2)},
        "sim_codec": _sim_codec(source),
    }
