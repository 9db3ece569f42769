"""The checks of an evidence bundle, on its members alone: what ``VERIFY.md`` asks a third party to run.

No store is needed: the checker trusts only the public keys it is given
(:class:`Trust`), by default those in the bundle's ``keys/`` (and says so,
since a forger can replace them too). Each check is a :class:`Check` with its
problems (the bundle is not to be trusted: exit 1) and warnings (facts a
reader should weigh, such as the box's clock), each named by a kind:

- ``file-altered``, ``file-missing``, ``file-unlisted``: against ``SHA256SUMS``;
- ``manifest-unknown-key``, ``manifest-altered``, ``manifest-malformed``;
- ``segment-altered``, ``segment-missing``, ``segment-unlisted``;
- ``chain-broken`` (a missing or wrong link, or a chain that stops short of
  its head), ``chain-altered``, ``chain-malformed``;
- ``receipt-unknown-key``, ``receipt-bad-signature``, ``receipt-mismatch``
  (a receipt for another manifest or recording), ``receipt-malformed``;
- ``access-log-altered``, ``access-log-mismatch``; ``report-mismatch``;
- ``timestamp-mismatch`` (a token over another hash than the commitment's),
  ``timestamp-invalid`` (a token that does not verify to the TSA's
  certificates), ``timestamp-head-mismatch`` (the stamped commitment does
  not name the chain's head), ``timestamp-missing``;
- ``key-malformed``; warnings ``no-timestamp`` and the clock's
  (:mod:`~linetap.sync.central.evidence_clock`).

Sans-IO: members come through :class:`Members` (the zip reader,
:mod:`~linetap.sync.central.evidence_zip`, bounds and reads them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware import receipt as rc
from linetap.firmware import untrusted
from linetap.firmware.errors import AuthError
from linetap.firmware.keys import public_key_b64, store_key_id
from linetap.sync.central import accesslog
from linetap.sync.central import evidence_format as ef
from linetap.sync.central import timestamps as ts
from linetap.sync.central.config import EvidenceSection
from linetap.sync.central.evidence_clock import clock_report, describe
from linetap.sync.central.tombstone import verify_tombstone

MAX_LOG_LINE = 16 * 1024
DEFAULT_SKEW_MS = EvidenceSection().max_clock_skew_s * 1000


class Members(Protocol):
    """A bundle's members, bounded by whoever reads them."""

    def names(self) -> list[str]: ...
    def sha256(self, name: str) -> str: ...
    def read(self, name: str) -> bytes | None:
        """The member's bytes (at most :data:`~evidence_format.MAX_SMALL`), None when absent or larger."""


@dataclass
class Check:
    name: str
    ok_text: str = ""
    problems: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append({"kind": kind, "detail": detail})

    def warn(self, kind: str, detail: str) -> None:
        self.warnings.append({"kind": kind, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": not self.problems, "text": self.ok_text, "problems": self.problems,
                "warnings": self.warnings}


@dataclass(frozen=True)
class Trust:
    """The keys a verifier trusts; None takes the bundle's own (and says so)."""

    box: Ed25519PublicKey | None = None
    store: tuple[Ed25519PublicKey, ...] = ()
    operator: Ed25519PublicKey | None = None
    tsa_ca: bytes | None = None  # the TSA's root certificate(s), PEM; None takes the bundle's


@dataclass
class _State:
    members: Members
    box: Ed25519PublicKey | None = None
    store: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    operator: Ed25519PublicKey | None = None
    manifest: dict[str, Any] | None = None
    manifest_sha256: str | None = None
    report: dict[str, Any] | None = None
    receipt: rc.Receipt | None = None
    head: tuple[int, str] | None = None  # where the chain in the bundle ends: seq, manifest sha256


def check_bundle(members: Members, trust: Trust, max_skew_ms: int | None = None) -> list[Check]:
    """Every check of the bundle, in VERIFY.md's order."""
    state = _State(members)
    checks = [_files(members), _keys(state, trust), _manifest(state), _segments(state), _chain(state),
              _receipt(state), _timestamp(state, trust), _access_log(state), _clock(state, max_skew_ms)]
    return checks


def pem_key(data: bytes | None, what: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (``openssl pkey -pubin`` reads the same); ValueError naming ``what``."""
    try:
        key = serialization.load_pem_public_key(data or b"")
    except ValueError:
        raise ValueError(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{what} is a {type(key).__name__}, not an Ed25519 key")
    return key


def _files(members: Members) -> Check:
    check = Check("files", "every file matches SHA256SUMS")
    text = members.read(ef.SUMS)
    if text is None:
        check.problem("file-missing", f"{ef.SUMS} is missing: nothing says what the bundle held")
        return check
    sums, bad = ef.parse_sums(text.decode("ascii", errors="replace"))
    for line in bad:
        check.problem("file-altered", f"{ef.SUMS} line {line!r} is not 'SHA256  NAME' (or names a file twice)")
    present = set(members.names()) - {ef.SUMS}
    for name in sorted(present - set(sums)):
        check.problem("file-unlisted", f"{name} is not in {ef.SUMS}: added after the bundle was made")
    for name in sorted(set(sums) - present):
        check.problem("file-missing", f"{name} is listed in {ef.SUMS} but not in the bundle")
    for name in sorted(present & set(sums)):
        if members.sha256(name) != sums[name]:
            check.problem("file-altered", f"{name} does not match its SHA-256 in {ef.SUMS}: changed")
    return check


def _keys(state: _State, trust: Trust) -> Check:
    check = Check("keys")
    bundled: dict[str, Ed25519PublicKey | None] = {}
    for name in (ef.BOX_KEY, ef.STORE_KEY, ef.OPERATOR_KEY):
        data = state.members.read(name)
        try:
            bundled[name] = None if data is None and name == ef.OPERATOR_KEY else pem_key(data, name)
        except ValueError as e:
            bundled[name] = None
            check.problem("key-malformed", str(e))
    state.box = trust.box or bundled[ef.BOX_KEY]
    stores = trust.store or tuple(k for k in (bundled[ef.STORE_KEY],) if k is not None)
    state.store = {store_key_id(k): k for k in stores}
    state.operator = trust.operator or bundled[ef.OPERATOR_KEY]
    given = [what for what, key in (("box", trust.box), ("store", trust.store), ("operator", trust.operator))
             if key]
    taken = [what for what in ("box", "store") if what not in given]
    check.ok_text = (f"trusting the {', '.join(given)} key(s) given" if given else "") + \
        ("; " if given and taken else "") + \
        (f"trusting the {' and '.join(taken)} key(s) in the bundle's keys/: compare them with the owners' "
         "keys (VERIFY.md step 0)" if taken else "")
    for what, key, name in (("box", trust.box, ef.BOX_KEY), ("operator", trust.operator, ef.OPERATOR_KEY)):
        if key is not None and bundled.get(name) is not None and \
                public_key_b64(key) != public_key_b64(bundled[name]):
            check.warn(f"{what}-key-differs", f"{name} is not the {what} key you trust")
    return check


def _manifest(state: _State) -> Check:
    check = Check("manifest")
    data = state.members.read(ef.MANIFEST)
    if data is None:
        check.problem("file-missing", f"{ef.MANIFEST} is missing or too large")
        return check
    state.manifest_sha256 = hashlib.sha256(data).hexdigest()
    try:
        state.manifest = mf.parse(data)
    except mf.ManifestError as e:
        check.problem("manifest-malformed", str(e))
        return check
    embedded = state.manifest["signature"].get("public_key")
    if state.box is None or embedded != public_key_b64(state.box):
        check.problem("manifest-unknown-key", f"the manifest is signed by key {str(embedded)[:12]}..., not the "
                                              "box key trusted")
        return check
    try:
        mf.verify(data, state.box)
    except (mf.BadSignature, mf.ManifestError) as e:
        check.problem("manifest-altered", str(e))
        return check
    m = state.manifest
    check.ok_text = f"manifest of {m['device_id']} seq {m['seq']} ({m['recording_id']}) signed by the box key"
    return check


def _segments(state: _State) -> Check:
    check = Check("segments")
    if state.manifest is None:
        check.problem("manifest-malformed", "no usable manifest lists the segments")
        return check
    listed = set()
    for entry in state.manifest["segments"]:
        if not isinstance(entry, dict) or type(entry.get("index")) is not int or not 0 <= entry["index"] < 10**6:
            check.problem("manifest-malformed", "a segment entry has no index")
            continue
        name = ef.ORIGINAL + f"{entry['index']:06d}.age"
        listed.add(name)
        data = state.members.read(name)
        if data is None:
            check.problem("segment-missing", f"{name} is listed in the manifest but not in the bundle")
        elif hashlib.sha256(data).hexdigest() != entry.get("sha256") or len(data) != entry.get("bytes"):
            check.problem("segment-altered", f"{name} is not the segment the manifest lists (SHA-256 or size)")
    for name in state.members.names():
        if ef.SEGMENT_FILE.fullmatch(name) and name not in listed:
            check.problem("segment-unlisted", f"{name} is not listed in the manifest")
    check.ok_text = f"{len(listed)} encrypted segments are the ones the manifest lists"
    return check


def _read_report(state: _State, check: Check) -> None:
    data = state.members.read(ef.REPORT)
    try:
        value = untrusted.loads(data or b"", what=ef.REPORT, max_bytes=ef.MAX_SMALL, max_depth=8)
    except untrusted.Untrusted as e:
        check.problem("report-mismatch", str(e))
        return
    if not isinstance(value, dict) or not isinstance(value.get("chain"), dict) or \
            not isinstance(value.get("clock"), dict):
        check.problem("report-mismatch", f"{ef.REPORT} is not a bundle report")
        return
    state.report = value
    m = state.manifest or {}
    for name, want in (("device_id", m.get("device_id")), ("recording_id", m.get("recording_id")),
                       ("seq", m.get("seq")), ("manifest_sha256", state.manifest_sha256)):
        if value.get(name) != want:
            check.problem("report-mismatch", f"{ef.REPORT} names {name} {str(value.get(name))[:70]}, "
                                             f"the manifest {str(want)[:70]}")


def _chain(state: _State) -> Check:
    check = Check("chain")
    _read_report(state, check)
    if state.manifest is None:
        check.problem("chain-broken", "no usable manifest to start the chain from")
        return check
    links = []
    for name in sorted(n for n in state.members.names() if n.startswith(ef.CHAIN)):
        match = ef.CHAIN_FILE.fullmatch(name)
        if match is None:
            check.problem("chain-malformed", f"{name} is not a chain file (chain/NNNNNN.json)")
        else:
            links.append((int(match.group(1)), name, match.group(2) is not None))
    seq, prev = state.manifest["seq"], state.manifest_sha256
    for number, name, tombstone in sorted(links):
        if number != seq + 1:
            check.problem("chain-broken", f"no link for seq {seq + 1}: the chain jumps from seq {seq} to {name}")
            return check
        doc = _link(state, name, tombstone, check)
        if doc is None:
            return check
        if doc.get("seq") != number or doc.get("prev") != prev or doc.get("device_id") != state.manifest["device_id"]:
            check.problem("chain-broken", f"{name} does not link to seq {seq} ({str(prev)[:16]}...)")
            return check
        seq = number
        prev = doc["manifest_sha256"] if tombstone else hashlib.sha256(state.members.read(name) or b"").hexdigest()
    state.head = (seq, prev)
    head = (state.report or {}).get("chain", {})
    if (seq, prev) != (head.get("head_seq"), head.get("head_sha256")):
        check.problem("chain-broken", f"the chain ends at seq {seq}, not at the head seq {head.get('head_seq')} "
                                      f"{ef.REPORT} names")
        return check
    check.ok_text = f"chain from seq {state.manifest['seq']} to the head, seq {seq} ({prev[:16]}...)"
    return check


def _link(state: _State, name: str, tombstone: bool, check: Check) -> dict[str, Any] | None:
    """A chain file checked: a manifest signed by the box key, or a tombstone by the operator key."""
    data = state.members.read(name) or b""
    try:
        if tombstone:
            if state.operator is None:
                raise AuthError(f"no operator key ({ef.OPERATOR_KEY}) to check the tombstone with")
            return verify_tombstone(data, state.operator)
        if state.box is None:
            raise AuthError("no box key to check the manifest with")
        return mf.verify(data, state.box)
    except mf.ManifestError as e:
        check.problem("chain-malformed", f"{name}: {e}")
    except AuthError as e:
        check.problem("chain-altered", f"{name}: {e}")
    return None


def _receipt(state: _State) -> Check:
    check = Check("receipt")
    data = state.members.read(ef.RECEIPT) or b""
    try:
        body = untrusted.loads(data, what=ef.RECEIPT, max_bytes=rc.MAX_BYTES, max_depth=2)
    except untrusted.Untrusted as e:
        check.problem("receipt-malformed", str(e))
        return check
    if not isinstance(body, dict):
        check.problem("receipt-malformed", f"{ef.RECEIPT} is not a receipt")
        return check
    if body.get("key_id") not in state.store:
        check.problem("receipt-unknown-key", f"the receipt is signed by store key {str(body.get('key_id'))[:20]}, "
                                             f"not the store key trusted ({', '.join(state.store) or 'none'})")
        return check
    try:
        state.receipt = rc.verify(data, state.store, device_id=str(body.get("device_id")),
                                  recording_id=str(body.get("recording_id")),
                                  manifest_sha256=str(body.get("manifest_sha256")))
    except rc.ReceiptError as e:
        check.problem("receipt-bad-signature", str(e))
        return check
    m, r = state.manifest or {}, state.receipt
    for name, mine, theirs in (("manifest SHA-256", r.manifest_sha256, state.manifest_sha256),
                               ("device", r.device_id, m.get("device_id")),
                               ("recording", r.recording_id, m.get("recording_id")), ("seq", r.seq, m.get("seq"))):
        if mine != theirs:
            check.problem("receipt-mismatch", f"the receipt is for {name} {str(mine)[:64]}, the bundle's "
                                              f"manifest has {str(theirs)[:64]}")
    check.ok_text = f"receipt signed by store key {r.key_id}: stored at {_iso(r.stored_ms)} by the store's clock"
    return check


def _timestamp(state: _State, trust: Trust) -> Check:
    check = Check("timestamp")
    stamped = (state.report or {}).get("timestamp")
    if not any(n.startswith(ef.TIMESTAMP) for n in state.members.names()):
        if stamped is not None:
            check.problem("timestamp-missing", f"{ef.REPORT} names a stamp, but the bundle holds no token")
        else:
            check.warn("no-timestamp", "no trusted timestamp covers this recording: its times are the box's and "
                                       "the store's own clocks")
        return check
    parts = {name: state.members.read(name) for name in (ef.TOKEN, ef.COMMITMENT, ef.TSA_CA, ef.TSA_CERT)}
    if trust.tsa_ca is not None:
        parts[ef.TSA_CA] = trust.tsa_ca
    for name in [n for n, data in parts.items() if data is None]:
        check.problem("timestamp-missing", f"{name} is missing: the stamp cannot be checked without it")
    if check.problems:
        return check
    try:
        certs = ts.load_trust(parts[ef.TSA_CA], parts[ef.TSA_CERT], ca_name=ef.TSA_CA, tsa_name=ef.TSA_CERT)
        token = ts.check_token(parts[ef.TOKEN], hashlib.sha256(parts[ef.COMMITMENT]).hexdigest(), certs,
                               what=ef.TOKEN)
        commitment = ts.decode_commitment(parts[ef.COMMITMENT], what=ef.COMMITMENT)
    except ts.TimestampError as e:  # TimestampMismatch: a token over another hash
        check.problem(e.kind, str(e))
        return check
    device = (state.manifest or {}).get("device_id")
    if state.head is None or not any((h.seq, h.manifest_sha256) == state.head for h in commitment.heads_of(device)):
        check.problem("timestamp-head-mismatch", f"the stamped {ef.COMMITMENT} does not name the head the chain in "
                                                 "the bundle reaches")
        return check
    when = _iso(token.gen_time_ms)
    subject = certs.tsa.subject.rfc4514_string()
    check.ok_text = (f"token of TSA {subject} at {when} over the commitment naming the head, seq {state.head[0]}"
                     + ("" if trust.tsa_ca is not None else f" (TSA root from the bundle's {ef.TSA_CA})"))
    return check


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _access_log(state: _State) -> Check:
    check = Check("access-log")
    lines = (state.members.read(ef.ACCESS_LOG) or b"").splitlines()
    m = state.manifest or {}
    for number, line in enumerate(lines, 1):
        try:
            entry = untrusted.loads(line, what=f"{ef.ACCESS_LOG} line {number}", max_bytes=MAX_LOG_LINE, max_depth=2)
        except untrusted.Untrusted as e:
            check.problem("access-log-altered", str(e))
            continue
        if not isinstance(entry, dict) or set(entry) != set(accesslog.COLUMNS) or \
                accesslog.entry_sha256(entry) != entry["sha256"]:
            check.problem("access-log-altered", f"{ef.ACCESS_LOG} line {number} does not hash to its sha256")
        elif (entry["device_id"], entry["recording_id"]) != (m.get("device_id"), m.get("recording_id")):
            check.problem("access-log-mismatch", f"{ef.ACCESS_LOG} line {number} is about another recording")
    check.ok_text = f"{len(lines)} access-log entries, each as the store logged it"
    return check


def _clock(state: _State, max_skew_ms: int | None) -> Check:
    check = Check("clock")
    if state.manifest is None or state.receipt is None:
        check.warn("clock-unknown", "no checked manifest and receipt to compare times with")
        return check
    bound = max_skew_ms if max_skew_ms is not None else (state.report or {}).get("clock", {}).get("max_skew_ms")
    report = clock_report(state.manifest, state.receipt.stored_ms, bound if type(bound) is int else DEFAULT_SKEW_MS)
    check.ok_text = describe(report)
    for warning in report["warnings"]:
        check.warn(warning["kind"], warning["detail"])
    return check
