"""Playback of a stored recording over HTTP Range, sans-IO: sizes, ranges, and which segments to decrypt.

A box writes each call as ONE Ogg Opus stream cut at page boundaries into
segments, each encrypted alone with age (``firmware/encoder.py``,
``firmware/spool/writer.py``); the plaintexts in order are one valid Ogg
file. The console serves that file (``audio.ogg``) byte for byte, and
answers a Range by decrypting only the segments it covers, so a browser
seeking into minute 45 of an hour (Chromium bisects an Ogg file with Range
requests) waits for one or two segments, never for the whole call.

A segment's plaintext size follows from its ciphertext size and the length
of its age header (:func:`age_plaintext_size`): after the header come a
16-byte nonce and the payload in chunks of 64 KiB plaintext, each sealed
with a 16-byte tag, the last one shorter. The manifest lists each
ciphertext's size; the header (its length differs per file: age writes
random "grease" stanzas) is read from the segment, or kept beside the
recording's peaks, so nothing is decrypted to learn the file's size.

Nothing here reads a file, a socket or the store: ``web/media.py`` does.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from linetap.firmware import untrusted
from linetap.firmware.errors import SyncError

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_NONCE = 16
AGE_CHUNK = 64 * 1024
AGE_TAG = 16
MAX_AGE_HEADER = 64 * 1024  # an X25519 header with grease is a few hundred bytes
MAX_RANGE_HEADER = 200  # one "bytes=a-b" is at most ~45 characters
LISTEN_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AgeFormatError(SyncError, ValueError):
    """Bytes that are not an age file of the shape the box writes (no header end, impossible size)."""


class RangeNotSatisfiable(SyncError, ValueError):
    """A Range wholly outside the file (HTTP 416); ``size`` is the file's, for ``Content-Range: bytes */size``."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def age_header_length(data: bytes) -> int:
    """The length of an age file's header: up to and including the newline after its ``---`` MAC line."""
    if not data.startswith(AGE_MAGIC):
        raise AgeFormatError("segment does not start with the age v1 header line; it is not an age file")
    head = data[:MAX_AGE_HEADER]
    mac = head.find(b"\n--- ")
    end = head.find(b"\n", mac + 1) if mac >= 0 else -1
    if end < 0:
        raise AgeFormatError(f"no end of the age header in the first {MAX_AGE_HEADER} bytes of the segment")
    return end + 1


def age_plaintext_size(ciphertext_size: int, header_length: int) -> int:
    """The plaintext size of an age file of ``ciphertext_size`` bytes whose header is ``header_length``."""
    payload = ciphertext_size - header_length - AGE_NONCE
    if header_length <= 0 or payload < AGE_TAG:
        raise AgeFormatError(f"an age file of {ciphertext_size} bytes with a {header_length}-byte header "
                             "has no room for its nonce and one sealed chunk")
    full, rest = divmod(payload, AGE_CHUNK + AGE_TAG)
    if 0 < rest < AGE_TAG:
        raise AgeFormatError(f"an age payload of {payload} bytes ends in a chunk of {rest} bytes, shorter "
                             "than its tag: the file is truncated or not age")
    chunks = full + (1 if rest else 0)
    return payload - chunks * AGE_TAG


@dataclass(frozen=True)
class Piece:
    """Bytes ``start`` to ``stop`` (exclusive) of segment ``index``'s plaintext."""

    index: int
    start: int
    stop: int


class SegmentMap:
    """Where each segment's plaintext lies in the one Ogg file their concatenation is.

    ``entries`` are the manifest's segment entries in the same order (what
    the caller needs to fetch and check each one).
    """

    def __init__(self, sizes: list[int], entries: list[dict[str, Any]] | tuple[()] = ()) -> None:
        if any(not isinstance(s, int) or s < 0 for s in sizes):
            raise ValueError(f"segment sizes must be non-negative integers, got {sizes[:8]}...")
        if entries and len(entries) != len(sizes):
            raise ValueError(f"{len(sizes)} segment sizes for {len(entries)} manifest entries")
        self.sizes = list(sizes)
        self.entries = list(entries)
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def pieces(self, first: int, last: int) -> list[Piece]:
        """The segment slices that hold bytes ``first`` to ``last`` (inclusive, as in a Range)."""
        if not 0 <= first <= last < self.total:
            raise ValueError(f"bytes {first}-{last} are not inside a file of {self.total} bytes")
        out = []
        index = bisect.bisect_right(self.offsets, first) - 1
        position = first
        while position <= last:
            base = self.offsets[index]
            stop = min(self.offsets[index + 1], last + 1)
            if stop > position:
                out.append(Piece(index, position - base, stop - base))
            position = max(position, stop)
            index += 1
        return out


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes a ``Range`` header asks of a file of ``size`` bytes; None: send it all.

    One ``bytes=`` range (``a-b``, ``a-``, ``-n``) is answered; a header that
    is malformed, too long or asks for several ranges is ignored (the whole
    file, as RFC 9110 allows). A range wholly past the end raises
    :class:`RangeNotSatisfiable` (HTTP 416).
    """
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or "-" not in spec:
        return None
    first_text, _, last_text = spec.strip().partition("-")
    if first_text == "":
        suffix = untrusted.ascii_int(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"range bytes=-{suffix} asks for no bytes of a {size}-byte file", size)
        return max(0, size - suffix), size - 1
    first = untrusted.ascii_int(first_text)
    last = None if last_text == "" else untrusted.ascii_int(last_text)
    if first is None or (last_text != "" and (last is None or last < first)):
        return None
    if first >= size:
        raise RangeNotSatisfiable(f"range starts at byte {first}; the file has {size} bytes "
                                  f"(0 to {size - 1})", size)
    return first, size - 1 if last is None else min(last, size - 1)


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"


class ListenSessions:
    """Which listens were already logged: one ``play`` entry per listen, not per Range request.

    A listen is (user, device, recording, token): the call page gives its
    player a fresh token, and every Range request the browser makes for it
    carries that token. A listen idle for ``idle_ms`` is forgotten (a new
    ``play`` is logged when it resumes), and at most ``max_entries`` are
    kept (the oldest go first), so a client inventing tokens only makes more
    log entries, never more memory.
    """

    def __init__(self, *, idle_ms: int = 30 * 60 * 1000, max_entries: int = 10_000) -> None:
        self.idle_ms = idle_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str, str, str], int] = OrderedDict()

    def first(self, key: tuple[str, str, str, str], now_ms: int) -> bool:
        """True when this request starts a listen (log ``play``); records it either way."""
        last = self._seen.pop(key, None)
        self._seen[key] = now_ms
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return last is None or now_ms - last > self.idle_ms


def listen_token(value: str | None) -> str:
    """The player's listen token from a query string; "" when absent or not a plain short token."""
    return value if value is not None and LISTEN_TOKEN.fullmatch(value) else ""


class SizeCache:
    """The segment map of the recordings played lately (``max_entries``, least recently used goes)."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._maps: OrderedDict[tuple[str, str, str], SegmentMap] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> SegmentMap | None:
        found = self._maps.get(key)
        if found is not None:
            self._maps.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, str], segments: SegmentMap) -> None:
        self._maps[key] = segments
        self._maps.move_to_end(key)
        while len(self._maps) > self.max_entries:
            self._maps.popitem(last=False)

    def drop(self, key: tuple[str, str, str]) -> None:
        self._maps.pop(key, None)


class PlaintextCache:
    """Decrypted segments recently served, in memory only, at most ``max_bytes`` (least recently used go).

    A browser's seek bisects with Range requests that ask for the same
    segments again and again, and several people may review one call:
    each segment is decrypted once while it stays here. Plaintext never
    goes to disk; entries are keyed by the manifest's hash, so an altered
    recording never serves old bytes.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()

    def get(self, key: tuple[str, str, str, int]) -> bytes | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, str, int], plaintext: bytes) -> None:
        if len(plaintext) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        self.bytes -= len(old) if old is not None else 0
        self._items[key] = plaintext
        self.bytes += len(plaintext)
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)
