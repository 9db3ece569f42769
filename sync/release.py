"""Release manifests: what a box needs to run a version, signed by the release key.

A release is a set of files (the wheels of one version of linetap and of
everything it imports, for one machine and one Python) described by
``release.json``, one canonical-JSON object (sorted keys, compact, UTF-8)::

    {"boards": ["*"],                   board profiles it may run on ("*": any)
     "chunk_size": 131072,              the unit of transfer, at most 128 KiB
     "created_ms": 1767225600000,
     "files": [{"chunks": ["<32 hex>", ...],   first 16 bytes of each chunk's SHA-256
                "name": "linetap-0.1.1-py3-none-any.whl",
                "sha256": "<64 hex>", "size": 123456}, ...],
     "format": 1,
     "machine": "aarch64",              platform.machine() of the box
     "min_previous": "0.1.0",           a box older than this must be re-imaged instead
     "python": "cp311",                 the box interpreter's tag
     "version": "0.1.1"}

``release_id`` is the SHA-256 of those bytes; ``release.sig`` is the release
key's Ed25519 signature over them. The release key is kept apart from the
operator key (which says *which box* installs *when*) and from the store key:
a stolen operator key can push only releases the release key signed.

Versions are dotted integers (``1``, ``0.1``, ``0.1.12``), compared as tuples.

Chunks travel over MQTT as frames (:func:`pack_chunk`): a magic, the release
id, the file's SHA-256, the chunk's index, then at most ``chunk_size`` bytes.
Each is checked against the signed list before it is written
(:func:`check_chunk`), and the whole file against its SHA-256 when complete.

Sans-IO: no file, socket or thread here (``tests/test_layers.py``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.errors import AuthError, SyncError
from linetap.firmware.manifest import canonical
from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, loads

FORMAT = 1
CHUNK_SIZE = 128 * 1024
MIN_CHUNK_SIZE = 4 * 1024
MAX_MANIFEST = 256 * 1024
MAX_FILES = 200
MAX_FILE_SIZE = 512 * 1024 * 1024
MAX_BOARDS = 64
SIGNATURE_BYTES = 64
ANY_BOARD = "*"

VERSION = re.compile(r"(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,3}")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}\.whl")
BOARD = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MACHINE = re.compile(r"[a-z0-9_]{1,32}")
PYTHON = re.compile(r"cp3[0-9]{1,2}")
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX32 = re.compile(r"[0-9a-f]{32}")

FRAME_MAGIC = b"LTU1"
FRAME_HEADER = len(FRAME_MAGIC) + 32 + 32 + 4
_MEMBERS = {"boards", "chunk_size", "created_ms", "files", "format", "machine", "min_previous", "python",
            "version"}
_FILE_MEMBERS = {"chunks", "name", "sha256", "size"}


# ---------------------------------------------------------------- errors --

class ReleaseError(SyncError, ValueError):
    """A release, a chunk or an offer is refused; ``code`` names why on ``update/state``."""

    code = "malformed"


class TooLarge(ReleaseError):
    code = "too-large"


class BadSignature(ReleaseError, AuthError):
    code = "bad-signature"


class HashMismatch(ReleaseError):
    code = "hash-mismatch"


# ---------------------------------------------------------------- values --

@dataclass(frozen=True)
class ReleaseFile:
    name: str
    sha256: str
    size: int
    chunks: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    """A verified release manifest; ``data`` are the signed bytes."""

    version: str
    min_previous: str
    created_ms: int
    boards: tuple[str, ...]
    machine: str
    python: str
    chunk_size: int
    files: tuple[ReleaseFile, ...]
    data: bytes

    @property
    def release_id(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, sha256: str) -> ReleaseFile:
        for f in self.files:
            if f.sha256 == sha256:
                return f
        raise ReleaseError(f"release {self.version} has no file with sha256 {sha256[:16]}...")


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.1.12"`` → ``(0, 1, 12)``; anything but 1-4 dotted integers is a :class:`ReleaseError`."""
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise ReleaseError(f"version {str(text)[:40]!r} is not 1-4 dotted whole numbers such as 0.1.2")
    return tuple(int(part) for part in text.split("."))


def _chunk_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def describe_file(name: str, data: bytes, chunk_size: int = CHUNK_SIZE) -> ReleaseFile:
    """The manifest entry of one file whose bytes are ``data``."""
    chunks = tuple(_chunk_digest(data[at:at + chunk_size]) for at in range(0, len(data), chunk_size))
    return ReleaseFile(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunks=chunks)


def build_manifest(*, version: str, min_previous: str, created_ms: int, boards: Sequence[str], machine: str,
                   python: str, files: Iterable[ReleaseFile], chunk_size: int = CHUNK_SIZE) -> bytes:
    """The canonical bytes of ``release.json``; checked by the same rules a box applies."""
    value = {"boards": list(boards), "chunk_size": chunk_size, "created_ms": created_ms,
             "files": [{"chunks": list(f.chunks), "name": f.name, "sha256": f.sha256, "size": f.size}
                       for f in sorted(files, key=lambda f: f.name)],
             "format": FORMAT, "machine": machine, "min_previous": min_previous, "python": python,
             "version": version}
    data = canonical(value)
    parse_manifest(data)
    return data


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(data)


def verify(data: bytes, signature: bytes, trusted: Iterable[Ed25519PublicKey]) -> Release:
    """The release in ``data`` if one of the ``trusted`` release keys signed it; else :class:`ReleaseError`."""
    if len(data) > MAX_MANIFEST:
        raise TooLarge(f"release manifest is {len(data)} bytes; at most {MAX_MANIFEST} are accepted")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"release signature is not {SIGNATURE_BYTES} bytes")
    keys = list(trusted)
    if not keys:
        raise BadSignature("this box trusts no release key; provision keys/release.pub "
                           "(`linetap keys init ... --release-key <base64>`)")
    for key in keys:
        try:
            key.verify(signature, bytes(data))
            break
        except InvalidSignature:
            continue
    else:
        raise BadSignature("release manifest signature does not verify with any trusted release key "
                           "(altered, or signed by another key)")
    return parse_manifest(bytes(data))


def parse_manifest(data: bytes) -> Release:
    """Read ``release.json`` within bounds; the signature is :func:`verify`'s business."""
    try:
        value = loads(data, what="release manifest", max_bytes=MAX_MANIFEST, max_depth=4)
    except Untrusted as e:
        raise ReleaseError(str(e)) from None
    if not isinstance(value, dict) or set(value) != _MEMBERS:
        raise ReleaseError(f"release manifest must be an object with exactly {', '.join(sorted(_MEMBERS))}")
    if canonical(value) != data:
        raise ReleaseError("release manifest is not in canonical form; keep the signed bytes unchanged")
    if value["format"] != FORMAT:
        raise ReleaseError(f"release manifest format {value['format']!r} is not {FORMAT}; update the box first")
    parse_version(value["version"])
    parse_version(value["min_previous"])
    _check(value, "created_ms", lambda v: _is_int(v) and 0 <= v <= MAX_SAFE_INT, "milliseconds since the epoch")
    _check(value, "machine", lambda v: isinstance(v, str) and MACHINE.fullmatch(v), "a machine name (aarch64)")
    _check(value, "python", lambda v: isinstance(v, str) and PYTHON.fullmatch(v), "a CPython tag (cp311)")
    _check(value, "chunk_size", lambda v: _is_int(v) and MIN_CHUNK_SIZE <= v <= CHUNK_SIZE,
           f"a size from {MIN_CHUNK_SIZE} to {CHUNK_SIZE} bytes")
    _check(value, "boards", lambda v: isinstance(v, list) and 0 < len(v) <= MAX_BOARDS and all(
        isinstance(b, str) and (b == ANY_BOARD or BOARD.fullmatch(b)) for b in v), "a list of board names or '*'")
    files = value["files"]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ReleaseError(f"release manifest files must be a list of 1 to {MAX_FILES} entries")
    parsed = tuple(_parse_file(entry, value["chunk_size"]) for entry in files)
    _check_files(parsed, value["version"])
    return Release(version=value["version"], min_previous=value["min_previous"], created_ms=value["created_ms"],
                   boards=tuple(value["boards"]), machine=value["machine"], python=value["python"],
                   chunk_size=value["chunk_size"], files=parsed, data=bytes(data))


def _parse_file(entry: object, chunk_size: int) -> ReleaseFile:
    if not isinstance(entry, dict) or set(entry) != _FILE_MEMBERS:
        raise ReleaseError(f"each release file must be an object with exactly {', '.join(sorted(_FILE_MEMBERS))}")
    name, sha, size, chunks = entry["name"], entry["sha256"], entry["size"], entry["chunks"]
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name:
        raise ReleaseError(f"release file name {str(name)[:60]!r} is not a wheel file name")
    if not isinstance(sha, str) or not HEX64.fullmatch(sha):
        raise ReleaseError(f"release file {name}: sha256 is not 64 lower-case hex digits")
    if not _is_int(size) or not 0 < size <= MAX_FILE_SIZE:
        raise ReleaseError(f"release file {name}: size {size!r} is not from 1 to {MAX_FILE_SIZE} bytes")
    expected = -(-size // chunk_size)
    if not isinstance(chunks, list) or len(chunks) != expected or not all(
            isinstance(c, str) and HEX32.fullmatch(c) for c in chunks):
        raise ReleaseError(f"release file {name}: chunks must be {expected} digests of 32 hex digits")
    return ReleaseFile(name=name, sha256=sha, size=size, chunks=tuple(chunks))


def _check_files(files: tuple[ReleaseFile, ...], version: str) -> None:
    names = [f.name for f in files]
    if len(set(names)) != len(names) or len({f.sha256 for f in files}) != len(files):
        raise ReleaseError("release manifest names a file or a sha256 twice")
    own = [n for n in names if n.startswith("linetap-")]
    if len(own) != 1 or not own[0].startswith(f"linetap-{version}-"):
        raise ReleaseError(f"release {version} must carry exactly one linetap wheel of version {version} "
                           f"(found {', '.join(own) or 'none'})")


def _check(value: dict, name: str, ok, what: str) -> None:
    if not ok(value[name]):
        raise ReleaseError(f"release manifest {name} {str(value[name])[:40]!r} is not {what}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------ judgement --

@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str


def judge(release: Release, *, current: str, board: str, machine: str, python: str,
          allow_downgrade: bool = False) -> Refusal | None:
    """Whether a box running ``current`` on ``board`` may install ``release``; None when it may."""
    have, want = parse_version(current), parse_version(release.version)
    if machine != release.machine or python != release.python:
        return Refusal("wrong-platform", f"release {release.version} is for {release.machine}/{release.python}; "
                                         f"this box is {machine}/{python}")
    if ANY_BOARD not in release.boards and board not in release.boards:
        return Refusal("wrong-board", f"release {release.version} is for boards {', '.join(release.boards)}, "
                                      f"not {board}")
    if want == have:
        return Refusal("already-installed", f"version {current} is already running")
    if want < have and not allow_downgrade:
        return Refusal("downgrade", f"release {release.version} is older than the running {current}; "
                                    "a downgrade needs an offer the operator signs with --allow-downgrade")
    if want > have and have < parse_version(release.min_previous):
        return Refusal("too-old-to-update", f"release {release.version} needs at least {release.min_previous} "
                                            f"to update from; this box runs {current}: re-image it")
    return None


# ---------------------------------------------------------------- chunks --

def chunk_span(release: Release, file: ReleaseFile, index: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of ``file``."""
    if not 0 <= index < len(file.chunks):
        raise ReleaseError(f"chunk {index} is out of range for {file.name} ({len(file.chunks)} chunks)")
    offset = index * release.chunk_size
    return offset, min(release.chunk_size, file.size - offset)


def pack_chunk(release_id: str, file_sha256: str, index: int, data: bytes) -> bytes:
    return (FRAME_MAGIC + bytes.fromhex(release_id) + bytes.fromhex(file_sha256)
            + index.to_bytes(4, "big") + bytes(data))


@dataclass(frozen=True)
class Chunk:
    release_id: str
    file_sha256: str
    index: int
    data: bytes


def unpack_chunk(frame: bytes) -> Chunk:
    """A chunk frame read within bounds; its content is :func:`check_chunk`'s business."""
    if len(frame) < FRAME_HEADER or len(frame) > FRAME_HEADER + CHUNK_SIZE:
        raise ReleaseError(f"chunk frame is {len(frame)} bytes; a frame is {FRAME_HEADER} header bytes "
                           f"and 1 to {CHUNK_SIZE} data bytes")
    if frame[:4] != FRAME_MAGIC:
        raise ReleaseError("chunk frame does not start with LTU1")
    return Chunk(release_id=frame[4:36].hex(), file_sha256=frame[36:68].hex(),
                 index=int.from_bytes(frame[68:72], "big"), data=bytes(frame[FRAME_HEADER:]))


def check_chunk(release: Release, chunk: Chunk) -> ReleaseFile:
    """The file ``chunk`` belongs to, if its bytes are the signed ones; else :class:`HashMismatch`."""
    if chunk.release_id != release.release_id:
        raise ReleaseError(f"chunk is for release {chunk.release_id[:16]}..., not {release.release_id[:16]}...")
    file = release.file(chunk.file_sha256)
    _, length = chunk_span(release, file, chunk.index)
    if len(chunk.data) != length or _chunk_digest(chunk.data) != file.chunks[chunk.index]:
        raise HashMismatch(f"chunk {chunk.index} of {file.name} does not match the signed release "
                           f"({len(chunk.data)} bytes); it is fetched again")
    return file
