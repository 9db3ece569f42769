"""Small releases and update offers for the box's update tests (core and shell).

Files are a few KiB of made-up bytes named like wheels (the release format
checks names and hashes, not wheel contents), cut into 4 KiB chunks so a
release of three chunks costs nothing.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.sync import release, updatewire
from linetap.sync.signed import seal

DEV = "lt-update-1"
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes(range(80, 112)))
RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(120, 152)))
CHUNK = release.MIN_CHUNK_SIZE  # 4 KiB
NOW_MS = 1_767_225_600_000 + 1_000_000  # ManualClock's wall time at its start
TTL_MS = 14 * 86_400_000


def payload(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Bundle:
    """One release: its files' bytes, the signed manifest, and offers of it."""

    def __init__(self, version: str = "0.2.0", *, sizes: tuple[int, ...] = (10_000, 5_000),
                 key: Ed25519PrivateKey = RELEASE_KEY, machine: str = "aarch64", python: str = "cp311",
                 boards: tuple[str, ...] = ("*",), min_previous: str = "0.1.0") -> None:
        names = [f"linetap-{version}-py3-none-any.whl"] + [f"dep{i}-1.0-py3-none-any.whl" for i in
                                                             range(1, len(sizes))]
        self.blobs = {}
        described = []
        for name, size in zip(names, sizes):
            data = payload(f"{version}/{name}", size)
            entry = release.describe_file(name, data, CHUNK)
            self.blobs[entry.sha256] = data
            described.append(entry)
        self.manifest = release.build_manifest(version=version, min_previous=min_previous,
                                               created_ms=NOW_MS, boards=boards, machine=machine,
                                               python=python, files=described, chunk_size=CHUNK)
        self.signature = release.sign(self.manifest, key)
        self.release = release.parse_manifest(self.manifest)
        self.version = version

    @property
    def release_id(self) -> str:
        return self.release.release_id

    def offer(self, seq: int, *, allow_downgrade: bool = False, operator: Ed25519PrivateKey = OPERATOR,
              device: str = DEV, body: dict | None = None, now_ms: int = NOW_MS) -> bytes:
        body = body if body is not None else updatewire.offer_body(self.manifest, self.signature, rollout="r1",
                                                                   allow_downgrade=allow_downgrade)
        return seal("update", device, body, operator, seq=seq, now_ms=now_ms, ttl_ms=TTL_MS)

    def frame(self, file_sha256: str, index: int, *, corrupt: bool = False) -> bytes:
        data = self.blobs[file_sha256][index * CHUNK:(index + 1) * CHUNK]
        if corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return release.pack_chunk(self.release_id, file_sha256, index, data)

    def chunk_total(self) -> int:
        return sum(len(f.chunks) for f in self.release.files)
