"""Trusted timestamps (RFC 3161) over the central store's chain heads: the sans-IO core.

The **commitment** is what a time-stamping authority (TSA) stamps. It names,
for every device, the head of its manifest chain (the newest stored recording:
``device_id``, ``seq``, ``manifest_sha256``), the head of the receipt log
and the head of the access log (each ``pos``, ``sha256``; null while that log
is empty), as sorted-key compact UTF-8 JSON with no spaces::

    {"access_log":{"pos":7,"sha256":"41.."},"devices":[{"device_id":"desk-1","manifest_sha256":"9f..",
     "seq":12}],"format":"linetap-timestamp-commitment/1","receipts":{"pos":40,"sha256":"c2.."}}

The access log's head is in it because its hash chain alone cannot show its
newest entries cut off: once stamped, they can no longer go unseen.

Devices are sorted by ``device_id`` (then hash, when a device holds two
recordings at its highest ``seq``). The TSA stamps the SHA-256 of those exact
bytes (the token's message imprint), so ``openssl ts -verify -data
commitment.json -in token.tsr -CAfile ca.pem -untrusted tsa.pem`` checks a
stored stamp with standard tools. Each manifest names the hash of the one
before it (``prev``), so a head also vouches for every earlier recording of
its device: :func:`covering_stamp` finds the first stamp whose head reaches a
recording, with the chain of manifests between them.

Stored tokens are whole DER ``TimeStampResp`` messages, as the TSA answered
(what ``openssl ts -reply`` writes and ``openssl ts -verify -in`` reads).

Everything here takes bytes, rows and the time in and gives values out:
requests are built and answers checked with ``rfc3161-client``; reading the
certificates, asking the TSA and storing are :mod:`~linetap.sync.central.tsa`'s.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rfc3161_client import (HashAlgorithm, PKIStatus, TimestampRequestBuilder, VerificationError,
                            VerifierBuilder, decode_timestamp_response)

from linetap.firmware import untrusted
from linetap.firmware.backoff import Backoff
from linetap.firmware.errors import SyncError

FORMAT = "linetap-timestamp-commitment/1"
MAX_COMMITMENT_BYTES = 16 * 1024 * 1024  # about 100 000 devices
SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
_HEX64 = frozenset("0123456789abcdef")
Row = dict[str, Any]


class TimestampError(SyncError):
    """A commitment, token or TSA answer that cannot be used; the message says which and why."""

    kind = "timestamp-invalid"


class TimestampMismatch(TimestampError):
    """A valid token over another hash than the one stored (or asked for)."""

    kind = "timestamp-mismatch"


# ------------------------------------------------------------- commitment --

@dataclass(frozen=True)
class DeviceHead:
    device_id: str
    seq: int
    manifest_sha256: str


@dataclass(frozen=True)
class LogHead:
    pos: int
    sha256: str


@dataclass(frozen=True)
class Commitment:
    """The chain heads a stamp commits to; :meth:`encode` gives the canonical bytes."""

    devices: tuple[DeviceHead, ...]
    receipts: LogHead | None
    access_log: LogHead | None = None

    @property
    def empty(self) -> bool:
        return not self.devices and self.receipts is None and self.access_log is None

    def encode(self) -> bytes:
        heads = sorted(self.devices, key=lambda h: (h.device_id, h.manifest_sha256))
        doc = {"devices": [{"device_id": h.device_id, "manifest_sha256": h.manifest_sha256, "seq": h.seq}
                           for h in heads], "format": FORMAT, "receipts": _log_doc(self.receipts),
               "access_log": _log_doc(self.access_log)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def heads_of(self, device_id: str) -> list[DeviceHead]:
        return [h for h in self.devices if h.device_id == device_id]


def _log_doc(head: LogHead | None) -> dict[str, Any] | None:
    return None if head is None else {"pos": head.pos, "sha256": head.sha256}


class HeadSource(Protocol):
    """What :func:`commitment_of` reads: the index's :class:`~linetap.sync.central.timestamplog.TimestampTables`."""

    def chain_heads(self) -> list[Row]: ...
    def receipt_head(self) -> Row | None: ...
    def access_head(self) -> Row | None: ...


def commitment_of(index: HeadSource) -> Commitment:
    """The store's chain heads now."""
    heads = tuple(DeviceHead(r["device_id"], int(r["seq"]), r["manifest_sha256"]) for r in index.chain_heads())
    return Commitment(heads, _log_head(index.receipt_head()), _log_head(index.access_head()))


def _log_head(row: Row | None) -> LogHead | None:
    return None if row is None else LogHead(int(row["pos"]), row["sha256"])


def decode_commitment(data: bytes, *, what: str = "commitment") -> Commitment:
    """The commitment in ``data``, checked field by field (it is read back from the index: a file)."""
    try:
        doc = untrusted.loads(data, what=what, max_bytes=MAX_COMMITMENT_BYTES, max_depth=4)
    except untrusted.Untrusted as e:
        raise TimestampError(str(e)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
            set(doc) != {"access_log", "devices", "format", "receipts"}:
        raise TimestampError(f"{what} is not a {FORMAT} document (keys access_log, devices, format, receipts)")
    if not isinstance(doc["devices"], list):
        raise TimestampError(f"{what}: devices must be a list")
    heads = tuple(DeviceHead(_text(d, "device_id", what), _count(d, "seq", what), _digest(d, "manifest_sha256", what))
                  for d in (_fields(d, {"device_id", "seq", "manifest_sha256"}, what) for d in doc["devices"]))
    commitment = Commitment(heads, _checked_log(doc["receipts"], what), _checked_log(doc["access_log"], what))
    if commitment.encode() != bytes(data):
        raise TimestampError(f"{what} is not in canonical form (sorted keys, no spaces, devices in order)")
    return commitment


def _checked_log(item: Any, what: str) -> LogHead | None:
    if item is None:
        return None
    log = _fields(item, {"pos", "sha256"}, what)
    return LogHead(_count(log, "pos", what), _digest(log, "sha256", what))


def _fields(item: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) != keys:
        raise TimestampError(f"{what}: each entry needs exactly the keys {sorted(keys)}")
    return item


def _text(item: dict[str, Any], key: str, what: str) -> str:
    if not isinstance(item[key], str) or not 0 < len(item[key]) <= 128:
        raise TimestampError(f"{what}: {key} must be a string of 1 to 128 characters")
    return item[key]


def _count(item: dict[str, Any], key: str, what: str) -> int:
    if isinstance(item[key], bool) or not isinstance(item[key], int) or item[key] < 0:
        raise TimestampError(f"{what}: {key} must be a whole number >= 0, not {item[key]!r}")
    return item[key]


def _digest(item: dict[str, Any], key: str, what: str) -> str:
    if not isinstance(item[key], str) or len(item[key]) != 64 or not set(item[key]) <= _HEX64:
        raise TimestampError(f"{what}: {key} must be 64 lower-case hex digits")
    return item[key]


# ------------------------------------------------------ request and token --

@dataclass(frozen=True)
class Query:
    """A request to a TSA: its DER bytes, the nonce the answer must repeat, the SHA-256 it stamps."""

    der: bytes
    nonce: int
    digest: bytes


@dataclass(frozen=True)
class Trust:
    """Whom a token must come from: the CA roots and the TSA's own certificate."""

    roots: tuple[x509.Certificate, ...]
    tsa: x509.Certificate


@dataclass(frozen=True)
class Token:
    """A checked answer: the DER ``TimeStampResp`` and the TSA's time (epoch ms), serial and imprint."""

    der: bytes
    gen_time_ms: int
    serial: int
    digest_sha256: str


def load_trust(ca_pem: bytes, tsa_pem: bytes, *, ca_name: str, tsa_name: str) -> Trust:
    """Certificates from PEM bytes (``ca_pem`` may hold several roots); names say where they came from."""
    try:
        roots = tuple(x509.load_pem_x509_certificates(ca_pem))
    except ValueError as e:
        raise TimestampError(f"{ca_name} holds no readable PEM certificate ({e}); give the TSA's CA "
                             "certificate(s) in PEM") from None
    try:
        tsa = x509.load_pem_x509_certificate(tsa_pem)
    except ValueError as e:
        raise TimestampError(f"{tsa_name} is not a PEM certificate ({e}); give the TSA's signing "
                             "certificate in PEM") from None
    return Trust(roots, tsa)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def stamp_trust(stamp: Row, trust: Trust) -> Trust:
    """Whom ``stamp``'s token must come from: the configured roots, and the TSA certificate kept with it."""
    try:
        return Trust(trust.roots, x509.load_pem_x509_certificate(bytes(stamp["tsa_cert"])))
    except ValueError as e:
        raise TimestampError(f"the TSA certificate kept with it does not parse ({e})") from None


def build_query(commitment: bytes) -> Query:
    """A SHA-256 request over the commitment's bytes, with a nonce and the TSA's certificate asked for."""
    request = (TimestampRequestBuilder().data(commitment).hash_algorithm(HashAlgorithm.SHA256)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    return Query(request.as_bytes(), request.nonce, hashlib.sha256(commitment).digest())


def check_answer(answer: bytes, query: Query, trust: Trust, *, tsa: str) -> Token:
    """The TSA's answer to ``query``, verified (status, signature and chain, nonce, imprint), or an error
    naming the TSA and what it answered."""
    try:
        response = decode_timestamp_response(answer)
    except ValueError as e:
        raise TimestampError(f"TSA {tsa} answered {len(answer)} bytes that are not a timestamp response "
                             f"({e}); check tsa_url points at an RFC 3161 service") from None
    if response.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        why = "; ".join(response.status_string) or "no reason given"
        raise TimestampError(f"TSA {tsa} refused the request: status {response.status} ({why})")
    try:
        nonce = response.tst_info.nonce
    except ValueError as e:
        raise TimestampError(f"TSA {tsa} answered a response without a readable token ({e})") from None
    if nonce != query.nonce:
        raise TimestampMismatch(f"TSA {tsa} answered with another nonce than asked: a stale or replayed answer")
    return check_token(answer, query.digest.hex(), trust, what=f"answer of TSA {tsa}")


def check_token(der: bytes, digest_sha256: str, trust: Trust | None, *, what: str) -> Token:
    """A stored ``TimeStampResp``: its imprint must be ``digest_sha256`` (SHA-256), and with ``trust``
    its signature must verify to those roots and that TSA certificate. Raises :class:`TimestampError`
    (``timestamp-invalid``) or :class:`TimestampMismatch`."""
    try:
        response = decode_timestamp_response(der)
        info = response.tst_info
        imprint = info.message_imprint
        algorithm, message = imprint.hash_algorithm, imprint.message
        gen_time, serial = info.gen_time, info.serial_number
    except ValueError as e:
        raise TimestampError(f"{what} does not parse as a timestamp response: {e}") from None
    if trust is not None:
        verifier = VerifierBuilder(roots=list(trust.roots), tsa_certificate=trust.tsa).build()
        try:
            verifier.verify(response, message)
        except (VerificationError, ValueError) as e:
            raise TimestampError(f"{what} does not verify against the configured CA and TSA certificate: "
                                 f"{e}") from None
    if algorithm != SHA256_OID:
        raise TimestampMismatch(f"{what} stamps a hash made with {algorithm.dotted_string}, not SHA-256")
    if message.hex() != digest_sha256:
        raise TimestampMismatch(f"{what} stamps {message.hex()[:16]}..., not the digest "
                                f"{digest_sha256[:16]}... it is stored with")
    return Token(der, round(gen_time.timestamp() * 1000), serial, message.hex())


# ------------------------------------------------------------ the schedule --

class Schedule:
    """When the next stamp is due (monotonic seconds): every ``interval_s`` after one was made or found
    not needed; after a failure, sooner, by the back-off (never later than the interval)."""

    def __init__(self, interval_s: float, now: float, *, backoff: Backoff | None = None,
                 rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self.backoff = backoff or Backoff(initial=30.0, maximum=min(900.0, interval_s), jitter=0.2)
        self._rng = rng
        self._delays = self.backoff.delays(rng)
        self.next_at = now  # a check at start: what arrived while the store was down
        self.failures = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, now: float) -> None:
        """Stamped, or nothing new to stamp: the next check one interval on."""
        self.failures = 0
        self._delays = self.backoff.delays(self._rng)
        self.next_at = now + self.interval_s

    def failed(self, now: float) -> float:
        """The TSA failed: retry after the next back-off delay; returns it."""
        self.failures += 1
        delay = min(next(self._delays), self.interval_s)
        self.next_at = now + delay
        return delay


def changed(current: Commitment, last: Row | None) -> bool:
    """Something arrived since the ``last`` stamp (a timestamps row): the heads differ, and there are some."""
    if current.empty:
        return False
    return last is None or bytes(last["commitment"]) != current.encode()


# ------------------------------------------------------------ for evidence --

class StampIndex(Protocol):
    """What the lookups read: the index's stamps and a device's recordings at one seq."""

    def timestamps(self) -> list[Row]: ...
    def recordings_at(self, device_id: str, seq: int) -> list[Row]: ...


@dataclass(frozen=True)
class Covering:
    """A stamp that vouches for a recording: the stamp row, the device head it names, and the index rows of
    the recordings from the recording (first) to that head (last), each linking to the one before by
    ``prev``."""

    stamp: Row
    head: DeviceHead
    chain: list[Row]


def covering_stamp(index: StampIndex, device_id: str, seq: int) -> Covering | None:
    """The first stamp (lowest ``pos``) whose commitment has a head of ``device_id`` at ``seq`` or later that
    links back by ``prev`` to the recording at ``seq``; None when no stamp covers it yet. The stamp's token
    is not checked here (``verify`` does that)."""
    for stamp in index.timestamps():
        try:
            commitment = decode_commitment(bytes(stamp["commitment"]), what=f"commitment of stamp {stamp['pos']}")
        except TimestampError:
            continue
        for head in commitment.heads_of(device_id):
            if head.seq >= seq:
                chain = chain_to_head(index, head, seq)
                if chain is not None:
                    return Covering(stamp, head, chain)
    return None


def chain_to_head(index: StampIndex, head: DeviceHead, seq: int) -> list[Row] | None:
    """The recordings of ``head``'s device from ``seq`` up to the head, following ``prev``; None when a
    link is missing or does not match."""
    want, chain = head.manifest_sha256, []
    for at in range(head.seq, seq - 1, -1):
        row = next((r for r in index.recordings_at(head.device_id, at) if r["manifest_sha256"] == want), None)
        if row is None:
            return None
        chain.append(row)
        want = row["prev"]
    return chain[::-1]


# ------------------------------------------------------------- checking all --

class CheckIndex(StampIndex, Protocol):
    def receipt_at(self, pos: int) -> Row | None: ...
    def access_at(self, pos: int) -> Row | None: ...


def check_stamps(index: CheckIndex, stamps: Iterable[Row], trust: Trust | None) -> list[dict[str, Any]]:
    """Every stored stamp: token (against ``trust`` when given), imprint, digest, and each head against the
    index. Returns problems ``{"kind", "pos", "device_id", "detail"}``; kinds: ``timestamp-invalid``,
    ``timestamp-mismatch``, ``timestamp-head-mismatch``, ``timestamp-receipt-mismatch``,
    ``timestamp-access-log-mismatch``."""
    found: list[dict[str, Any]] = []
    for stamp in stamps:
        pos, data = stamp["pos"], bytes(stamp["commitment"])

        def problem(kind: str, detail: str, device_id: str | None = None) -> None:
            found.append({"kind": kind, "pos": pos, "device_id": device_id, "detail": f"stamp {pos}: {detail}"})
        try:
            check_token(bytes(stamp["token"]), stamp["digest_sha256"],
                        None if trust is None else stamp_trust(stamp, trust), what="its token")
        except TimestampError as e:
            problem(e.kind, str(e))
        if hashlib.sha256(data).hexdigest() != stamp["digest_sha256"]:
            problem("timestamp-mismatch", "its stored digest is not the SHA-256 of its stored commitment")
        try:
            commitment = decode_commitment(data, what="its commitment")
        except TimestampError as e:
            problem("timestamp-mismatch", str(e))
            continue
        for head in commitment.devices:
            rows = index.recordings_at(head.device_id, head.seq)
            if not any(r["manifest_sha256"] == head.manifest_sha256 for r in rows):
                problem("timestamp-head-mismatch", f"device {head.device_id} seq {head.seq}: the index holds "
                        f"{'no recording there' if not rows else 'another manifest hash there'}, not the "
                        f"stamped {head.manifest_sha256[:16]}...", head.device_id)
        log = commitment.receipts
        if log is not None:
            row = index.receipt_at(log.pos)
            if row is None or row["sha256"] != log.sha256:
                problem("timestamp-receipt-mismatch", f"receipt log position {log.pos} is "
                        f"{'gone' if row is None else 'another receipt'}, not the stamped {log.sha256[:16]}...")
        log = commitment.access_log
        if log is not None:
            row = index.access_at(log.pos)
            if row is None or row["sha256"] != log.sha256:
                problem("timestamp-access-log-mismatch", f"access log position {log.pos} is "
                        f"{'gone' if row is None else 'another entry'}, not the stamped {log.sha256[:16]}...")
    return found


def unstamped(current: Commitment, last: Row | None) -> list[dict[str, Any]]:
    """Devices whose head is newer than the ``last`` stamp names: information, not a failure."""
    stamped: dict[str, int] = {}
    if last is not None:
        try:
            for head in decode_commitment(bytes(last["commitment"])).devices:
                stamped[head.device_id] = max(head.seq, stamped.get(head.device_id, -1))
        except TimestampError:
            pass  # reported by check_stamps
    newest: dict[str, int] = {}
    for head in current.devices:
        newest[head.device_id] = max(head.seq, newest.get(head.device_id, -1))
    return [{"device_id": d, "stamped_seq": stamped.get(d), "newest_seq": s}
            for d, s in sorted(newest.items()) if s > stamped.get(d, -1)]
