"""Ingest parts/s on PostgreSQL + S3 through our ingest, against a raw peer doing the least the job needs.

Same parts, same servers (a throwaway PostgreSQL and SeaweedFS on loopback,
``bench/scaleenv.py``), one thread each, alternating rounds with fresh parts
(the best round of each is reported):

- ``ours``: :class:`~linetap.sync.central.ingest.Ingest` on
  :class:`~linetap.sync.central.pgindex.PgIndex` and
  :class:`~linetap.sync.central.s3store.S3Store`, ``receive(part)`` per part:
  wire checks, hash check, the device's enrolment and quota, the claim row,
  ``put`` (Content-MD5, ``If-None-Match``), the stored mark, the acks;
- ``raw`` (the peer): boto3 ``put_object`` of the same bytes under the same
  key, then one psycopg ``INSERT`` of the object's row (autocommit).

Segments only (single-part, 30 KB): a manifest adds a signature check, a
receipt and an object lock per recording, which the peer has no counterpart
for. Target: ours at least 0.7 of raw.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg

from bench.scaleenv import SEGMENT_BYTES, backends, backlog, enroll, rate
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import segment_key

DEVICES, RECORDINGS, SEGMENTS = 10, 4, 10  # 400 parts a round
ROUNDS = 2
TARGET_RATIO = 0.7
RAW_TABLE = ("CREATE TABLE objects (device_id TEXT, recording_id TEXT, name TEXT, sha256 TEXT, size BIGINT, "
             "object_key TEXT, stored_ms BIGINT, PRIMARY KEY (device_id, recording_id, name))")


def _ours(work: Path, pg, s3, round_: int) -> dict:
    parts = backlog(DEVICES, RECORDINGS, SEGMENTS, tag=f"ours{round_}")
    data_dir = work / f"central-{round_}"
    keys_init(data_dir)
    with PgIndex(pg.create_database(f"ours_{round_}")) as index:
        enroll(index, parts)
        store = S3Store(s3.client(), s3.create_bucket(f"ours-{round_}"), "site")
        with Ingest(data_dir, store=store, index=index) as ingest:
            start = time.perf_counter()
            for part in parts:
                acks = ingest.receive(part)
                if acks[-1].status != "stored":
                    raise RuntimeError(f"ingest answered {acks[-1]}")
            seconds = time.perf_counter() - start
    return rate(len(parts), len(parts) * SEGMENT_BYTES, seconds)


def _raw(pg, s3, round_: int) -> dict:
    parts = backlog(DEVICES, RECORDINGS, SEGMENTS, tag=f"raw{round_}")
    client, bucket = s3.client(), s3.create_bucket(f"raw-{round_}")
    with psycopg.connect(pg.create_database(f"raw_{round_}"), autocommit=True) as conn:
        conn.execute(RAW_TABLE)
        start = time.perf_counter()
        for part in parts:
            key = "site/" + segment_key(part.device_id, part.recording_id, part.object.index)
            client.put_object(Bucket=bucket, Key=key, Body=part.payload)
            conn.execute("INSERT INTO objects VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (part.device_id, part.recording_id, str(part.object), part.sha256, part.size, key,
                          int(time.time() * 1000)))
        seconds = time.perf_counter() - start
    return rate(len(parts), len(parts) * SEGMENT_BYTES, seconds)


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="linetap-bench-ingestpg-") as tmp, backends(Path(tmp)) as (pg, s3):
        ours, raw = [], []
        for round_ in range(ROUNDS):
            ours.append(_ours(Path(tmp), pg, s3, round_))
            raw.append(_raw(pg, s3, round_))
    best_ours = max(ours, key=lambda r: r["parts_per_s"])
    best_raw = max(raw, key=lambda r: r["parts_per_s"])
    ratio = best_ours["parts_per_s"] / best_raw["parts_per_s"]
    return {"backends": "PostgreSQL (LocalPostgres) + SeaweedFS S3 (LocalSeaweed), loopback",
            "parts_per_round": DEVICES * RECORDINGS * SEGMENTS, "part_bytes": SEGMENT_BYTES,
            "ours": best_ours, "raw_boto3_psycopg": best_raw, "rounds": {"ours": ours, "raw": raw},
            "ratio_vs_raw": round(ratio, 2), "target_ratio": TARGET_RATIO, "meets_target": ratio >= TARGET_RATIO}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
