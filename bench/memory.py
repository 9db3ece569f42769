"""Memory of the box: peak RSS of the daemon over a one-hour call with sync, against a bare interpreter.

Ours: one process wired as ``linetap run`` wires the box on the simulated
board: the call loop (:class:`~linetap.firmware.callloop.CallLoop`) with the
simulated codec, panel and modem, the consent prompt, the real spool (Opus
segments encrypted to the central recipient, durable writes, signed
manifest) and :class:`~linetap.sync.boxsync.BoxSync` uploading to a real
central store (two ingest workers) through a real Mosquitto on loopback.
The call loop runs on a ManualClock, so the hour passes as fast as the
machine allows; the hook goes off and on as the hook driver's events. Both
sides of the call are the bundled conversation, streamed from its Ogg files
over and over, so the input costs a decoder's buffers and nothing more. The
recording uploads when it closes; the process ends once the centre has
acknowledged its manifest. Its peak RSS is the kernel's high-water mark of
the process's own memory (``VmHWM``), read by the process itself at its end:
``ru_maxrss`` from ``wait4`` is no good here, because Linux carries the
parent's resident size at fork into the child's figure, and the parent is the
bench (which may have run every other benchmark first).

Peer, in the same run: a bare interpreter that imports the libraries the
box loads (numpy, av, paho, pyrage) and does nothing; the difference is our
own share: our modules and the rest of what they import (pydantic,
cryptography, gpiozero, sqlite, libsndfile), the buffers and the per-call state.

What dominates: RSS by phase inside our process (interpreter, imports,
set-up, during the call, while syncing) and the growth over the call, whose
slope per hour is what a longer call would add. A second, shorter call runs
under tracemalloc to name the Python allocations alive at its end, by site
(tracemalloc slows the process and adds its own memory, so it is not used
for the headline figure).

Target: <= 80 MB on x86-64. The machine may be busy; memory does not depend
on that, only the wall time does.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CALL_S = 3600.0
TRACED_CALL_S = 300.0
TARGET_MB = 80.0
SAMPLE_EVERY_S = 10.0  # stream seconds between RSS samples during the call
SYNC_WAIT_S = 600.0
ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "firmware" / "data"  # the bundled two-sided conversation
PEER_IMPORTS = "import numpy, av, paho.mqtt.client, pyrage"
PEER_CODE = PEER_IMPORTS + ("; import json, re; print(json.dumps({'peak_mb': round(int(re.search("
                            "r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 1024, 1)}))")
# What the box imports, in steps: first the peer's libraries, then the rest of ours.
IMPORT_STEPS = ("numpy", "av", "paho.mqtt.client", "pyrage", "pydantic", "linetap.firmware.config",
                "cryptography.hazmat.primitives.asymmetric.ed25519", "sqlite3", "soundfile + soxr",
                "gpiozero + serial", "linetap.firmware.service", "linetap.sync.boxsync", "linetap.firmware.encoder")
MB = 2**20


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    """Peak resident bytes of this process so far."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _mb(n: float) -> float:
    return round(n / MB, 1)


def _by_mapping(n: int = 12) -> dict[str, Any]:
    """Where the resident pages are: anonymous (heap, arenas, stacks) or which shared library, top ``n``."""
    rss: dict[str, int] = {}
    name = "?"
    with open("/proc/self/smaps") as smaps:  # line by line: reading it whole would raise the peak we measure
        for line in smaps:
            if line.startswith("Rss:"):
                rss[name] = rss.get(name, 0) + int(line.split()[1]) * 1024
            elif not line.split(maxsplit=1)[0].endswith(":"):  # a mapping: address perms offset dev inode [path]
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
                name = Path(path).name if path.startswith("/") else (path or "[anonymous]")
                if name.startswith(("[stack", "[anon")):
                    name = "[anonymous]"
    rollup = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in
              Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])}
    top = sorted(rss.items(), key=lambda kv: -kv[1])[:n]
    return {"rss_mb": _mb(rollup["Rss"]), "anonymous_mb": _mb(rollup["Anonymous"]),
            "file_backed_mb": _mb(rollup["Rss"] - rollup["Anonymous"]),
            "top_mappings_mb": {name: _mb(size) for name, size in top}}


# ---------------------------------------------------------------- the box --

def _box(data_dir: Path, host: str, port: int, seconds: float, trace: bool) -> dict[str, Any]:
    """The box process: one call of ``seconds`` through the real wiring, then wait for sync."""
    phases: dict[str, float] = {"interpreter": _mb(_rss())}
    import importlib
    import tracemalloc

    imports: dict[str, float] = {}
    for step in IMPORT_STEPS:  # in this order, each step's growth of the resident set
        before = _rss()
        for module in step.split(" + "):
            importlib.import_module(module)
        imports[step] = _mb(_rss() - before)

    import numpy as np

    from linetap.drivers.audio import AudioFileSource
    from linetap.drivers.events import HookChanged
    from linetap.firmware.callloop import CallLoop, load_prompts, open_spool
    from linetap.firmware.clock import ManualClock, SystemClock
    from linetap.firmware.config import load_config
    from linetap.firmware.devices import build_board
    from linetap.firmware.spool import list_recordings
    from linetap.sync.boxsync import BoxSync

    phases["imports"] = _mb(_rss())

    class Conversation:
        """The bundled conversation (one side), repeated for ``seconds``, streamed from its Ogg file."""

        def __init__(self, path: Path, rate: int) -> None:
            self._path, self._rate = path, rate
            self._left = int(seconds * rate)
            self._file = AudioFileSource(path, rate)

        def read(self, frames: int) -> np.ndarray:
            frames = min(frames, self._left)
            out = self._file.read(frames)
            if len(out) < frames:  # the file ended: from the start again
                self._file.close()
                self._file = AudioFileSource(self._path, self._rate)
                out = np.concatenate([out, self._file.read(frames - len(out))])
            self._left -= len(out)
            return out

        def close(self) -> None:
            self._file.close()

    config = load_config(None)
    config = config.model_copy(update={"sync": config.sync.model_copy(
        update={"broker": host, "port": port, "tls": False})})
    rate = config.audio.rate
    clock = ManualClock()
    prompts = load_prompts(config)
    sink = open_spool(config, data_dir, clock)
    sync = BoxSync(config, sink.spool, data_dir, clock=SystemClock()).start()
    near = Conversation(SPEECH / "speech-near.ogg", rate)
    far = Conversation(SPEECH / "speech-far.ogg", rate)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    board = build_board(config, clock, inbox.put, near=near, far=far, keep_played=False)
    recordings: list[str] = []

    def recorded(recording: Any) -> None:
        recordings.append(recording.call.call_id)
        sync.notify()

    loop = CallLoop(config, board, sink, clock, inbox=inbox, prompts=prompts, on_recording=recorded)
    phases["set-up"] = _mb(_rss())
    if trace:
        tracemalloc.start()
    samples: list[tuple[float, float]] = []
    every = int(SAMPLE_EVERY_S * rate / config.audio.block_frames)
    started = time.perf_counter()
    top: dict[str, Any] = {}
    try:
        board.codec.start()
        loop.process(HookChanged(off_hook=True, source="gpio"))
        blocks = 0
        while (block := board.codec.read(timeout=10.0)) is not None:
            loop.drain()
            loop.process(block)
            blocks += 1
            if blocks % every == 0:
                samples.append((block.t, _mb(_rss())))
        if trace:
            top = _top_allocations(tracemalloc.take_snapshot())
        loop.finish()
        call_wall = time.perf_counter() - started
        phases["call-end"] = _mb(_rss())
        where = _by_mapping()
        phases["peak-by-call-end"] = _mb(_hwm())
        deadline = time.monotonic() + SYNC_WAIT_S
        pause = threading.Event()  # never set: a bounded wait between looks at the catalogue
        synced = False
        sync_peak = 0
        while time.monotonic() < deadline:
            sync_peak = max(sync_peak, _rss())
            states = {row["id"]: row["state"] for row in list_recordings(data_dir)}
            if recordings and all(states.get(r) == "synced" for r in recordings):
                synced = True
                break
            pause.wait(0.05)
        phases["syncing"] = _mb(sync_peak)
        rows = {row["id"]: row for row in list_recordings(data_dir)}
    finally:
        board.close()
        sync.close()
        sink.spool.close()
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else 0
    during = [mb for _, mb in samples]
    first_t, first_mb = samples[min(len(samples) - 1, len(samples) // 10)] if samples else (0.0, 0.0)
    last_t, last_mb = samples[-1] if samples else (0.0, 0.0)
    return {
        "call_s": seconds,
        "call_wall_s": round(call_wall, 1),
        "sync_wall_s": round(time.perf_counter() - started - call_wall, 1),
        "synced": synced,
        "segments": sum(rows[r]["segments"] for r in recordings if r in rows),
        "stored_mb": _mb(sum(rows[r]["bytes"] for r in recordings if r in rows)),
        "rss_mb_by_phase": {**phases, "during-call-max": max(during, default=0.0)},
        "rss_mb_by_import": imports,
        # From a tenth of the call (buffers warmed up) to its end, scaled to an hour.
        "growth_mb_per_call_hour": round((last_mb - first_mb) * 3600 / (last_t - first_t), 2)
        if last_t > first_t else None,
        "peak_mb": _mb(_hwm()),
        "resident_at_call_end": where,
        **({"python_heap_peak_mb": _mb(traced_peak), "python_heap_at_call_end": top} if trace else {}),
    }


def _top_allocations(snapshot: Any, n: int = 8) -> dict[str, Any]:
    """Python allocations made since set-up and alive in ``snapshot``: the total and the top ``n`` sites."""
    import tracemalloc

    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("lineno")
    top = {}
    for stat in stats[:n]:
        frame = stat.traceback[0]
        where = frame.filename.replace(str(ROOT) + os.sep, "").split("site-packages" + os.sep)[-1]
        top[f"{where}:{frame.lineno}"] = round(stat.size / 1024, 1)
    return {"total_kb": round(sum(s.size for s in stats) / 1024, 1), "top_sites_kb": top}


# ------------------------------------------------------------- the bench --

def _child(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` from the repository root; the JSON it prints (with its own ``peak_mb``)."""
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[1:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _keys(box_dir: Path, central_dir: Path, device_id: str) -> None:
    from linetap.firmware.keys import keys_init
    from linetap.sync.central.keys import keys_init as central_keys_init
    from linetap.sync.central.tools import StoreTools

    central = central_keys_init(central_dir)
    info = keys_init(box_dir, central.recipient, operator_key=central.operator_public_key_b64)
    with StoreTools(central_dir) as tools:
        tools.enroll(device_id, info.public_key_b64)


def run(call_s: float = CALL_S, traced_call_s: float = TRACED_CALL_S) -> dict[str, Any]:
    from linetap.firmware.config import load_config
    from linetap.sync.broker import LocalBroker
    from linetap.sync.central.ingest import Ingest
    from linetap.sync.central.tools import StoreTools
    from linetap.sync.central.worker import BrokerSettings, run_workers

    with tempfile.TemporaryDirectory(prefix="linetap-bench-memory-") as tmp:
        work = Path(tmp)
        box_dir, central_dir = work / "box", work / "central"
        _keys(box_dir, central_dir, load_config(None).device.id)
        with LocalBroker(work / "broker", persistence=False) as broker, \
                run_workers(2, functools.partial(Ingest, central_dir),
                            BrokerSettings(host=broker.host, port=broker.port, tls=False),
                            client_id_prefix="bench-memory-central"):
            def box(seconds: float, trace: bool) -> dict[str, Any]:
                return _child([sys.executable, "-m", "bench.memory", "--box", str(box_dir), "--broker",
                               f"{broker.host}:{broker.port}", "--seconds", str(seconds)]
                              + (["--trace"] if trace else []))

            peer_peak_mb = _child([sys.executable, "-c", PEER_CODE])["peak_mb"]
            ours = box(call_s, trace=False)
            traced = box(traced_call_s, trace=True)
        with StoreTools(central_dir) as tools:
            verified = tools.verify()
    return {
        "call_s": call_s,
        "ours_peak_rss_mb": ours["peak_mb"],
        "peer_peak_rss_mb": peer_peak_mb,
        "peer": f"python -c '{PEER_IMPORTS}'",
        "ours_minus_peer_mb": round(ours["peak_mb"] - peer_peak_mb, 1),
        "target_mb": TARGET_MB,
        "within_target": ours["peak_mb"] <= TARGET_MB,
        "ours": ours,
        "central_verify_ok": bool(verified) and all(device.ok for device in verified),
        "traced_call": {k: traced[k] for k in ("call_s", "python_heap_peak_mb", "python_heap_at_call_end")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--box", type=Path, metavar="DATA_DIR", help="run as the box process (internal)")
    parser.add_argument("--broker", default="", metavar="HOST:PORT")
    parser.add_argument("--seconds", type=float, default=CALL_S, help="length of the call")
    parser.add_argument("--trace", action="store_true", help="name the Python allocations (slower)")
    args = parser.parse_args(argv)
    if args.box is None:
        print(json.dumps(run(args.seconds, min(args.seconds, TRACED_CALL_S)), indent=2))
        return 0
    host, _, port = args.broker.rpartition(":")
    print(json.dumps(_box(args.box, host, int(port), args.seconds, args.trace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
