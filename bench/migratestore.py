"""``migrate-store`` throughput (MB/s, objects/s) into PostgreSQL + S3, against a bare copy of the same files.

Setup: an embedded store (SQLite index, file objects) filled through the real
ingest with single-part 30 KB segments of 10 devices, and a throwaway
PostgreSQL and SeaweedFS on loopback (``bench/scaleenv.py``). Measured in the
same run, each into a fresh database and bucket:

- ``migrate_jobs_1`` / ``migrate_jobs_4``:
  :class:`~linetap.sync.central.migratestore.StoreMigration` with 1 and 4
  objects at once: every object read, hashed, put, read back and hashed
  again, every page of rows read back, the chains walked on both sides;
- ``bare_copy_4`` (the peer): 4 threads reading each object file and
  ``put_object``-ing it under the same key; no index, no check.

``ratio_vs_bare`` is ``migrate_jobs_4`` over ``bare_copy_4``: the price of
the checks (a read-back doubles the S3 traffic) and of the index rows.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.scaleenv import SEGMENT_BYTES, backends, backlog
from linetap.firmware.clock import ManualClock
from linetap.sync.central.index import INDEX_FILE, SqliteIndex
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init
from linetap.sync.central.migratestore import StoreMigration
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.progress import Progress
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import OBJECTS_DIR, FileStore

DEVICES, RECORDINGS, SEGMENTS = 10, 10, 10  # 1000 objects, 30 MB


def _embedded(folder: Path) -> int:
    parts = backlog(DEVICES, RECORDINGS, SEGMENTS, tag="migrate")
    keys_init(folder)
    with Ingest(folder, clock=ManualClock()) as ingest:
        from bench.scaleenv import enroll

        enroll(ingest.index, parts)
        for part in parts:
            ingest.receive(part)
    return len(parts)


def _migrate(folder: Path, pg, s3, jobs: int) -> dict:
    with SqliteIndex(folder / INDEX_FILE) as source, PgIndex(pg.create_database(f"migrate_{jobs}")) as target:
        store = S3Store(s3.client(max_pool_connections=32), s3.create_bucket(f"migrate-{jobs}"), "site")
        progress = Progress("migrate-store", lambda _line: None)
        start = time.perf_counter()
        result = StoreMigration(folder, (source, FileStore(folder / OBJECTS_DIR)), (target, store),
                                progress=progress, jobs=jobs).run()
        seconds = time.perf_counter() - start
    return _figures(result["objects"], result["bytes"], seconds)


def _bare(folder: Path, s3, threads: int) -> dict:
    client, bucket = s3.client(max_pool_connections=32), s3.create_bucket(f"bare-{threads}")
    root = folder / OBJECTS_DIR
    files = [p for p in root.rglob("*") if p.is_file()]

    def put(path: Path) -> int:
        data = path.read_bytes()
        client.put_object(Bucket=bucket, Key="site/" + str(path.relative_to(root)), Body=data)
        return len(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        nbytes = sum(pool.map(put, files))
    return _figures(len(files), nbytes, time.perf_counter() - start)


def _figures(objects: int, nbytes: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "objects": objects, "objects_per_s": round(objects / seconds, 1),
            "mb_per_s": round(nbytes / seconds / 1e6, 2)}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="linetap-bench-migrate-") as tmp, backends(Path(tmp)) as (pg, s3):
        folder = Path(tmp) / "embedded"
        made = _embedded(folder)
        one = _migrate(folder, pg, s3, 1)
        four = _migrate(folder, pg, s3, 4)
        bare = _bare(folder, s3, 4)
    return {"backends": "embedded (SQLite + files) -> PostgreSQL + SeaweedFS S3, loopback",
            "objects": made, "object_bytes": SEGMENT_BYTES, "migrate_jobs_1": one, "migrate_jobs_4": four,
            "bare_copy_4": bare, "ratio_vs_bare": round(four["mb_per_s"] / bare["mb_per_s"], 2)}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
