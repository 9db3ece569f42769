"""Ingest parts/s through 1 and through 2 ``linetap-central serve`` processes on PostgreSQL + S3.

The real command, as a site runs it: each ``serve`` its own process with its
own data dir (keys copied, nothing else shared on disk), one ingest worker
(``[broker] workers = 1``) on the shared subscription of one group, the index
in one PostgreSQL database and the objects in one SeaweedFS bucket
(``bench/scaleenv.py``), a loopback Mosquitto between them and the boxes.
Once every ``serve`` has connected, the backlog (single-part 30 KB segments
of 10 devices) is published and the clock runs until an observer has seen
every object-level ``stored`` ack.

Comparison in the same run: the same backlog size through 1 and through 2
processes (``speedup_2_vs_1``). On a 2-core machine the broker, PostgreSQL,
SeaweedFS, the publisher and the observer share the cores with the serves,
so ``cpus`` is reported beside the figure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.ingest import AckCounter, _publish
from bench.scaleenv import SEGMENT_BYTES, backends, backlog, enroll, rate
from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import keys_init
from linetap.sync.central.pgindex import PgIndex

DEVICES, RECORDINGS, SEGMENTS = 10, 4, 10  # 400 parts
READY_S = 60.0
WAIT_S = 300.0


class Serve:
    """One ``linetap-central -v serve`` process; ``ready`` once its worker has connected to the broker."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.ready = threading.Event()
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(data_dir),
                                      "-v", "serve"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=env)
        threading.Thread(target=self._read, name="bench-serve-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            del self.lines[:-50]
            if "ingest worker connected" in line:
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _config(n: int, i: int, broker: LocalBroker, pg_url: str, bucket: str, endpoint: str) -> str:
    return (f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nworkers = 1\ngroup = "scale{n}"\n'
            f'client_id = "srv{n}x{i}"\n\n[index]\nurl = "{pg_url}"\n\n[store]\nurl = "s3://{bucket}/site"\n'
            f'endpoint_url = "{endpoint}"\n')


def _run_once(n: int, work: Path, pg, s3) -> dict:
    parts = backlog(DEVICES, RECORDINGS, SEGMENTS, tag=f"serve{n}")
    url, bucket = pg.create_database(f"serves_{n}"), s3.create_bucket(f"serves-{n}")
    with PgIndex(url) as index:
        enroll(index, parts)
    folders = [work / f"serve-{n}-{i}" for i in range(n)]
    keys_init(folders[0])
    for folder in folders[1:]:
        shutil.copytree(folders[0] / "keys", folder / "keys")
    with LocalBroker(work / f"broker-{n}", persistence=False) as broker:
        serves = []
        try:
            for i, folder in enumerate(folders):
                (folder / "central.toml").write_text(_config(n, i, broker, url, bucket, s3.endpoint))
                serves.append(Serve(folder, os.environ | s3.environ()))
            for serve in serves:
                if not serve.ready.wait(READY_S):
                    raise RuntimeError("serve did not connect:\n" + "\n".join(serve.lines[-20:]))
            counter = AckCounter(broker, len(parts))
            try:
                start = time.perf_counter()
                _publish(broker, parts)
                finished = counter.done.wait(WAIT_S)
                seconds = time.perf_counter() - start
            finally:
                counter.close()
        finally:
            for serve in serves:
                serve.stop()
    if not finished or counter.other:
        raise RuntimeError(f"{n} serve(s): {counter.stored} of {len(parts)} stored; other acks: {counter.other[:5]}")
    return rate(len(parts), len(parts) * SEGMENT_BYTES, seconds)


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="linetap-bench-serves-") as tmp, backends(Path(tmp)) as (pg, s3):
        one = _run_once(1, Path(tmp), pg, s3)
        two = _run_once(2, Path(tmp), pg, s3)
    return {"backends": "PostgreSQL + SeaweedFS S3 + Mosquitto, loopback; each serve one worker, own data dir",
            "parts": DEVICES * RECORDINGS * SEGMENTS, "part_bytes": SEGMENT_BYTES, "cpus": os.cpu_count(),
            "serve_1": one, "serve_2": two, "speedup_2_vs_1": round(two["parts_per_s"] / one["parts_per_s"], 2)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
