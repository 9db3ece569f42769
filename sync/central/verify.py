"""Verify: re-hash what is stored, re-check signatures and each device's chain, the receipt log; list orphans.

The receipt log (:mod:`~linetap.sync.central.receiptlog`) is checked whole:
each receipt's signature with the store key, its ``prev`` link to the
receipt before it (the first from ``GENESIS``), that the log's columns and
the recording's indexed manifest hash say what the signed bytes say, and
that every stored recording has one. What is wrong is a problem of the
receipt's device: ``bad-receipt``, ``broken-receipt-link``,
``missing-receipt``, ``receipt-without-recording``.

``problems`` (a missing or altered object, a broken link, a bad tombstone, a
refusal that meant tampering) make a device's report not ok. ``orphans``,
what the device holds that no stored manifest vouches for (unvouched objects,
manifests waiting for segments, staging untouched for
``[ingest] stale_staging_days``), are listed and fail only a strict verify;
they are never deleted here.

Trusted timestamps (:func:`verify_timestamps`, reported beside the devices):
every stored token is checked against ``[timestamps] ca_file`` and
``tsa_cert_file``, its imprint against the stored digest, the digest against
the stored commitment, and every head in the commitment against the index
(``timestamp-invalid``, ``timestamp-mismatch``, ``timestamp-head-mismatch``,
``timestamp-receipt-mismatch``). Devices with recordings newer than the last
stamp are listed as not yet timestamped (information); the last failure to
get a stamp is shown until a stamp succeeds. With no TSA configured the report
says so.

``warnings`` are about a recording's times, not its integrity
(:mod:`~linetap.sync.central.evidence_clock`): ``clock-unsynchronised``,
``clock-skew`` (the box's end time after the store's receipt time by more
than ``[evidence] max_clock_skew_s``), ``clock-estimated``, ``clock-unknown``.
The store's time is the recording's indexed ``stored_ms``, the time its
receipt signs. A one-recording verify also reports its ``clock``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware.errors import AuthError, ConfigError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync.central import timestamps as ts
from linetap.sync.central.config import DAY_MS, EvidenceSection, IngestSection, TimestampsSection
from linetap.sync.central.evidence_clock import clock_report, describe
from linetap.sync.central.index import PENDING_MANIFEST
from linetap.sync.central.keys import load_store_key, operator_public_key
from linetap.sync.central.store import ObjectMissing
from linetap.sync.central.stored import IntegrityError, Stored
from linetap.sync.central.tombstone import CHAIN_MEMBERS, verify_tombstone
from linetap.firmware.receipt import GENESIS, ReceiptError, key_id
from linetap.firmware.receipt import verify as verify_receipt

Row = dict[str, Any]
RECEIPT_COLUMNS = ("seq", "manifest_sha256", "stored_ms", "key_id", "prev")


@dataclass
class DeviceReport:
    """``problems`` make a device not ok; ``orphans`` (what the device holds that no stored manifest
    vouches for) are listed, and fail only a strict verify."""

    device_id: str
    recordings: int = 0
    receipts: int = 0
    erased: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    clock: dict[str, Any] | None = None  # the one recording's clock report, on a one-recording verify

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "ok": self.ok, "recordings": self.recordings,
                "receipts": self.receipts, "erased": self.erased, "missing": self.missing, "problems": self.problems,
                "orphans": self.orphans, "warnings": self.warnings, "clock": self.clock}

    def problem(self, kind: str, row: Row | None, detail: str, seq: int | None = None) -> None:
        self.problems.append({"kind": kind, "seq": row["seq"] if row else seq,
                              "recording_id": row["recording_id"] if row else None, "detail": detail})


Problem = Callable[..., None]


@dataclass
class TimestampReport:
    """The stored stamps: ``problems`` make it not ok; ``unstamped`` and ``last_failure`` are information."""

    tsa: str | None
    stamps: int = 0
    last: dict[str, Any] | None = None
    unstamped: list[dict[str, Any]] = field(default_factory=list)
    last_failure: dict[str, Any] | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    covered: dict[str, Any] | None = None  # with one recording: the first stamp that covers it

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.tsa is not None, "tsa": self.tsa, "ok": self.ok, "stamps": self.stamps,
                "last": self.last, "not_yet_timestamped": self.unstamped, "last_failure": self.last_failure,
                "problems": self.problems, "recording": self.covered}

    def lines(self) -> list[str]:
        """The report as text, for ``verify``'s output."""
        if self.tsa is None:
            head = "timestamps: no TSA configured ([timestamps] tsa_url): recordings get no trusted timestamps"
        else:
            head = f"timestamps from {self.tsa}"
        last = "" if self.last is None else f", last stamp {self.last['pos']} at TSA time {self.last['gen_time']}"
        out = [f"{head}: {self.stamps} stored{last}: {'OK' if self.ok else f'{len(self.problems)} problems'}"]
        out += [f"  {p['kind']}: {p['detail']}" for p in self.problems]
        out += [f"  not yet timestamped: {u['device_id']} seq {u['newest_seq']} (last stamped seq "
                f"{u['stamped_seq'] if u['stamped_seq'] is not None else '-'})" for u in self.unstamped]
        if self.covered is not None:
            c = self.covered
            out.append(f"  {c['recording_id']} ({c['device_id']} seq {c['seq']}): " + (
                "not yet timestamped" if c["stamp"] is None else
                f"covered by stamp {c['stamp']} at TSA time {c['gen_time']} through seq {c['head_seq']}"))
        if self.last_failure is not None:
            f = self.last_failure
            out.append(f"  last failure (alarm timestamp-failed, {f.get('failures')} in a row): {f.get('reason')}")
        return out


def verify_timestamps(stored: Stored, section: TimestampsSection | None = None,
                      recording: Row | None = None) -> TimestampReport:
    """Check every stored stamp against the configured TSA certificates and the index (module docstring);
    with ``recording`` (an index row), also say which stamp covers it."""
    from linetap.sync.central.tsa import load_trust, read_status

    section = section or TimestampsSection()
    report = TimestampReport(section.tsa_url)
    trust = None
    try:
        trust = load_trust(stored.data_dir, section)
    except (ConfigError, ts.TimestampError) as e:
        report.problems.append({"kind": "timestamp-invalid", "pos": None, "device_id": None,
                                "detail": f"no token can be checked: {e}"})
    stamps = stored.index.timestamps()
    report.stamps = len(stamps)
    report.problems += ts.check_stamps(stored.index, stamps, trust)
    last = stamps[-1] if stamps else None
    if last is not None:
        report.last = {"pos": last["pos"], "made_ms": last["made_ms"], "gen_time_ms": last["gen_time_ms"],
                       "gen_time": _iso(last["gen_time_ms"]), "digest_sha256": last["digest_sha256"],
                       "tsa": last["tsa"]}
    report.unstamped = ts.unstamped(ts.commitment_of(stored.index), last)
    report.last_failure = read_status(stored.data_dir)
    if recording is not None:
        covering = ts.covering_stamp(stored.index, recording["device_id"], recording["seq"])
        report.covered = {"recording_id": recording["recording_id"], "device_id": recording["device_id"],
                          "seq": recording["seq"], "stamp": None if covering is None else covering.stamp["pos"],
                          "gen_time": None if covering is None else _iso(covering.stamp["gen_time_ms"]),
                          "head_seq": None if covering is None else covering.head.seq}
    return report


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify(stored: Stored, recording_id: str | None = None, *, device_id: str | None = None,
           limits: IngestSection | None = None, clock: EvidenceSection | None = None) -> list[DeviceReport]:
    """Re-hash and re-verify stored recordings, per device; one recording's device with ``recording_id``
    (``device_id`` names the device when several have that id; alone it limits the check to it).

    Each report also lists orphans: objects no indexed manifest vouches for,
    manifests waiting for segments, and staging untouched for
    ``limits.stale_staging_days``.
    """
    limits = limits or IngestSection()
    skew_ms = (clock or EvidenceSection()).max_clock_skew_s * 1000
    if recording_id is not None:
        row = stored.recording(recording_id, device_id)
        reports = [verify_device(stored, row["device_id"], row, limits, skew_ms)]
        check_receipts(stored, reports, row)
        return reports
    devices = sorted({d["device_id"] for d in stored.index.devices()})
    if device_id is not None:
        if device_id not in devices:
            raise ConfigError(f"device {device_id} is not enrolled at {stored.data_dir}; "
                              "`linetap-central fleet list` shows the boxes")
        devices = [device_id]
    reports = [verify_device(stored, device, None, limits, skew_ms) for device in devices]
    check_receipts(stored, reports)
    return reports


def check_receipts(stored: Stored, reports: list[DeviceReport], only: Row | None = None) -> None:
    """Walk the whole receipt log; add what is wrong to the reports of the devices it concerns."""
    found: list[dict[str, Any]] = []
    try:
        public = load_store_key(stored.data_dir).public_key()
        trusted = {key_id(public): public}
    except ConfigError as e:
        trusted = {}
        found += [{"device_id": r.device_id, "kind": "bad-receipt", "seq": None, "recording_id": None,
                   "detail": f"the store key cannot be read, so no receipt can be checked: {e}"}
                  for r in reports]
    log = stored.index.receipts()
    found += _receipt_chain(stored, log, trusted)
    have = {(r["device_id"], r["recording_id"]) for r in log}
    for report in reports:
        report.receipts = sum(1 for r in log if r["device_id"] == report.device_id)
        for row in stored.index.device_recordings(report.device_id):
            if (report.device_id, row["recording_id"]) not in have:
                found.append({"device_id": report.device_id, "kind": "missing-receipt", "seq": row["seq"],
                              "recording_id": row["recording_id"],
                              "detail": "stored, but the receipt log has no receipt for it (removed from the "
                                        "log, or stored before this store kept one: `linetap-central serve` "
                                        "signs those at its start)"})
    by_device = {r.device_id: r for r in reports}
    for problem in found:
        report = by_device.get(problem.pop("device_id"))
        if report is not None and (only is None or problem["recording_id"] in (None, only["recording_id"])):
            report.problems.append(problem)


def _receipt_chain(stored: Stored, log: list[Row], trusted: dict[str, Ed25519PublicKey]) -> list[dict[str, Any]]:
    """Each receipt's signature, its columns, its manifest hash, and its ``prev`` link."""
    found: list[dict[str, Any]] = []
    prev = GENESIS
    for row in log:
        def problem(kind: str, detail: str, row: Row = row) -> None:
            found.append({"device_id": row["device_id"], "kind": kind, "seq": row["seq"],
                          "recording_id": row["recording_id"], "detail": f"receipt at log position {row['pos']}: "
                                                                         f"{detail}"})
        recording = stored.index.recording(row["recording_id"], row["device_id"])
        if recording is None:
            problem("receipt-without-recording", "the index holds no such recording")
        want = recording["manifest_sha256"] if recording is not None else row["manifest_sha256"]
        signed_prev = row["prev"]
        if hashlib.sha256(row["data"]).hexdigest() != row["sha256"]:
            problem("bad-receipt", "its bytes do not hash to the sha256 the log keeps")
        if trusted:
            try:
                checked = verify_receipt(row["data"], trusted, device_id=row["device_id"],
                                         recording_id=row["recording_id"], manifest_sha256=want)
                signed_prev = checked.prev
                differs = [c for c in RECEIPT_COLUMNS if getattr(checked, c) != row[c]]
                if differs:
                    problem("bad-receipt", f"the log's {', '.join(differs)} differ from the signed receipt")
            except ReceiptError as e:
                problem("bad-receipt", str(e))
        if signed_prev != prev:
            problem("broken-receipt-link", f"prev {str(signed_prev)[:16]}... is not the hash of the receipt "
                                           f"before it ({prev[:16]}...): a receipt was removed, inserted or altered")
        prev = hashlib.sha256(row["data"]).hexdigest()
    return found


def verify_device(stored: Stored, device_id: str, only: Row | None,
                  limits: IngestSection | None = None, skew_ms: int | None = None) -> DeviceReport:
    """One device's report; with ``only``, narrowed to that recording and its neighbours' links."""
    report = DeviceReport(device_id)
    report.orphans = orphans(stored, device_id, limits or IngestSection())
    if only is not None:
        report.orphans = [o for o in report.orphans if o["recording_id"] == only["recording_id"]]
    key_b64 = stored.index.device_key(device_id)
    rows = stored.index.device_recordings(device_id)
    report.recordings = len(rows)
    if key_b64 is None:
        report.problem("not-enrolled", None, f"device {device_id} has recordings but no enrolled key")
        return report
    key = public_key_from_b64(key_b64)
    links, manifests = _check_recordings(stored, rows, key, only, report)
    _check_chain(manifests, links, key, report)
    _check_clocks(rows, manifests, only, EvidenceSection().max_clock_skew_s * 1000 if skew_ms is None else skew_ms,
                  report)
    for found in stored.index.problems(device_id):
        if found["kind"] != "chain-break":  # recomputed above from what is stored now
            report.problems.append({"kind": found["kind"], "seq": found["seq"],
                                    "recording_id": found["recording_id"], "detail": found["detail"]})
    if only is not None:
        near = (only["seq"], only["seq"] + 1)
        report.problems = [p for p in report.problems
                           if p["recording_id"] == only["recording_id"] or p["seq"] in near]
        report.missing = [seq for seq in report.missing if seq in near]
    return report


def _check_recordings(stored: Stored, rows: list[Row], key: Ed25519PublicKey, only: Row | None,
                      report: DeviceReport) -> tuple[dict[int, tuple[str, str]], list[tuple[int, bytes]]]:
    """(seq -> (manifest sha256, prev), the stored manifests by seq); erased ones' links from tombstones."""
    links: dict[int, tuple[str, str]] = {}
    manifests: list[tuple[int, bytes]] = []
    for row in rows:
        seq = row["seq"]
        if row["erased_ms"] is not None:
            report.erased.append(seq)
            tombstone = _checked_tombstone(stored, row, report.problem)
            if tombstone is not None:
                links[seq] = (tombstone["manifest_sha256"], tombstone["prev"])
            continue
        try:
            data = stored.store.get(row["manifest_key"])
        except ObjectMissing as e:
            report.problem("missing-object", row, str(e))
            continue
        if hashlib.sha256(data).hexdigest() != row["manifest_sha256"]:
            report.problem("altered", row, "the stored manifest's sha256 is not the one indexed at ingest")
        manifests.append((seq, data))
        links.setdefault(seq, (hashlib.sha256(data).hexdigest(), row["prev"]))
        if only is None or only["recording_id"] == row["recording_id"]:
            _verify_segments(stored, row, data, key, report.problem)
    return links, manifests


def _check_chain(manifests: list[tuple[int, bytes]], links: dict[int, tuple[str, str]],
                 key: Ed25519PublicKey, report: DeviceReport) -> None:
    """The chain of the stored manifests, and the links on both sides of each erased recording."""
    manifests.sort(key=lambda item: item[0])
    erased = {seq: "erased" for seq in report.erased}
    chain = mf.verify_chain([data for _, data in manifests], key, explained=erased)
    for found in chain.problems:
        if found.kind == "missing" and found.seq is not None:
            report.missing.append(found.seq)
        report.problems.append({"kind": found.kind, "seq": found.seq, "recording_id": found.recording_id,
                                "detail": found.detail})
    for seq in report.erased:
        if seq not in links:
            continue
        digest, prev = links[seq]
        before = mf.GENESIS if seq == 1 else links.get(seq - 1, (None, None))[0]
        if before is not None and prev != before:
            report.problem("broken-link", None, f"tombstone of seq {seq}: prev {prev[:16]}... is not the hash "
                                                f"of seq {seq - 1}", seq)
        after = links.get(seq + 1)
        if after is not None and after[1] != digest:
            report.problem("broken-link", None, f"seq {seq + 1} does not link to the erased seq {seq}'s "
                                                "manifest hash kept in its tombstone", seq + 1)


def _check_clocks(rows: list[Row], manifests: list[tuple[int, bytes]], only: Row | None, skew_ms: int,
                  report: DeviceReport) -> None:
    """Each recording's box time against the store's (its receipt's) time: warnings, never problems."""
    by_seq = {r["seq"]: r for r in rows if r["erased_ms"] is None}
    for seq, data in manifests:
        row = by_seq.get(seq)
        if row is None or (only is not None and row["recording_id"] != only["recording_id"]):
            continue
        try:
            manifest = mf.parse(data)
        except mf.ManifestError:
            continue  # reported by the chain check
        clock = clock_report(manifest, row["stored_ms"], skew_ms)
        if only is not None:
            report.clock = {**clock, "text": describe(clock)}
        report.warnings += [{"kind": w["kind"], "seq": seq, "recording_id": row["recording_id"],
                             "detail": w["detail"]} for w in clock["warnings"]]


def _verify_segments(stored: Stored, row: Row, data: bytes, key: Ed25519PublicKey, problem: Problem) -> None:
    try:
        manifest = mf.verify(data, key)
    except (mf.ManifestError, mf.BadSignature):
        return  # reported by the chain check as malformed / altered
    for entry in manifest["segments"]:
        try:
            stored.checked_segment(row, entry)
        except (ObjectMissing, IntegrityError) as e:
            problem("missing-object" if isinstance(e, ObjectMissing) else "altered", row, str(e))


def _checked_tombstone(stored: Stored, row: Row, problem: Problem) -> dict[str, Any] | None:
    try:
        data = stored.store.get(row["tombstone_key"])
        tombstone = verify_tombstone(data, operator_public_key(stored.data_dir))
    except (ObjectMissing, AuthError, ConfigError) as e:
        problem("bad-tombstone", row, str(e))
        return None
    differs = [k for k in CHAIN_MEMBERS if tombstone.get(k) != row[k]]
    if differs:
        problem("bad-tombstone", row, f"tombstone disagrees with the index on {', '.join(differs)}")
        return None
    return tombstone


def orphans(stored: Stored, device_id: str, limits: IngestSection) -> list[dict[str, Any]]:
    """What the device holds that no stored manifest vouches for; staging still arriving is not listed."""
    now = stored.now_ms()
    stale_ms = limits.stale_staging_days * DAY_MS
    found = []
    for obj in stored.index.unvouched_objects(device_id):
        found.append({"kind": "unvouched-object", "recording_id": obj["recording_id"], "object": obj["name"],
                      "bytes": obj["size"], "age_days": round((now - obj["claimed_ms"]) / DAY_MS, 2),
                      "detail": "stored, but no stored manifest lists it" if obj["stored_ms"] is not None
                      else "claimed, never stored (a write that failed)"})
    for staged in stored.index.staged():
        if staged["device_id"] != device_id:
            continue
        age = now - staged["last_ms"]
        waiting = staged["name"] == PENDING_MANIFEST
        if not waiting and age < stale_ms:
            continue  # an object still arriving
        found.append({"kind": "waiting-manifest" if waiting else "stale-staging",
                      "recording_id": staged["recording_id"], "object": staged["name"],
                      "bytes": staged["bytes"], "age_days": round(age / DAY_MS, 2),
                      "detail": "a manifest waiting for segments that have not come" if waiting else
                      f"{staged['parts']} parts of an object that never completed"})
    return found
