"""Hook-off to announcement: how long from the hook-off event to the first prompt sample handed to the codec.

The box runs as in service: the simulated codec paced in real time by the
system clock, the audio reader thread posting blocks, the call loop on its own
thread. Each call posts a hook-off event (as the hook driver would) and times
until ``codec.play`` receives the prompt; target p99 <= 20 ms.

Peer, in the same run: the floor any threaded design pays, one hand-off
through a ``queue.SimpleQueue`` to a waiting thread.
"""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np

from linetap.drivers.events import HookChanged
from linetap.firmware.callloop import CallLoop
from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.devices import build_board
from linetap.firmware.recorder import MemorySink
from linetap.firmware.service import _AudioReader

CALLS = 200


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3)}


def _handoff_floor(n: int) -> list[float]:
    q: queue.SimpleQueue[float] = queue.SimpleQueue()
    got: list[float] = []
    done = threading.Event()

    def consumer() -> None:
        for _ in range(n):
            sent = q.get()
            got.append(time.perf_counter() - sent)
        done.set()

    threading.Thread(target=consumer, name="bench-handoff", daemon=True).start()
    for _ in range(n):
        q.put(time.perf_counter())
        threading.Event().wait(0.005)  # let the consumer go back to waiting, as the call loop does
    done.wait(10)
    return got


def run() -> dict:
    config = Config()
    config = config.model_copy(update={"calls": config.calls.model_copy(update={"hangup_grace_s": 0.0})})
    clock = SystemClock()
    rate = config.audio.rate
    silence = np.zeros(rate * 600, np.int16)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    board = build_board(config, clock, inbox.put, near=silence, far=silence)
    played = threading.Event()
    closed = threading.Event()
    play_times: list[float] = []
    real_play = board.codec.play

    def timed_play(samples: np.ndarray) -> None:
        play_times.append(time.perf_counter())
        real_play(samples)
        played.set()

    board.codec.play = timed_play  # type: ignore[method-assign]
    loop = CallLoop(config, board, MemorySink(), clock, inbox=inbox,
                    on_recording=lambda r: closed.set())
    stop = threading.Event()
    reader = _AudioReader(board.codec, loop.post, stop)
    worker = threading.Thread(target=loop.run, args=(stop,), name="bench-call-loop", daemon=True)
    board.codec.start()
    reader.start()
    worker.start()
    latencies: list[float] = []
    try:
        for _ in range(CALLS):
            played.clear()
            closed.clear()
            start = time.perf_counter()
            loop.post(HookChanged(off_hook=True, source="gpio"))
            if not played.wait(2.0):
                raise RuntimeError("no announcement within 2 s of hook-off")
            latencies.append(play_times[-1] - start)
            loop.post(HookChanged(off_hook=False, source="gpio"))
            if not closed.wait(2.0):
                raise RuntimeError("call did not close within 2 s of hook-on")
    finally:
        stop.set()
        reader.join()
        worker.join(5)
        board.close()
    ours = _percentiles(latencies)
    floor = _percentiles(_handoff_floor(CALLS))
    return {
        "calls": CALLS,
        "hook_off_to_first_prompt_sample": ours,
        "peer_queue_handoff": floor,
        "target_p99_ms": 20.0,
        "meets_target": ours["p99_ms"] <= 20.0,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
