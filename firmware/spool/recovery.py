"""Start-up recovery: finish what a crash or power cut left, and quarantine what does not add up.

A recording left open by a crash is closed from its complete segments with
``ended_by: power-loss``; temporary files are removed; anything that does not
add up (a truncated, zero-length or garbage segment, a manifest with a bad
signature, a row whose files are gone, a file with no row, a row whose
values make no sense, a corrupt catalogue, which is rebuilt from
``open.json``/``manifest.json``, a ``spool`` that is not a folder) is moved
to ``quarantine/`` and reported, never silently deleted; new calls are
recorded anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.firmware.spool.catalogue import (
    COLUMNS,
    open_catalogue,
    opening_problem,
    recording_values,
    row_dict,
    row_problem,
    segment_row_problem,
    shown,
)
from linetap.firmware.spool.checks import age_shape_problem, segment_problem
from linetap.firmware.spool.layout import (
    MANIFEST_FILE,
    RECEIPT_FILE,
    MANIFEST_MAX_BYTES,
    OPEN_FILE,
    OPEN_MAX_BYTES,
    SEGMENT_MAX_BYTES,
    SPOOL_DIR,
    TMP_SUFFIX,
    segment_index,
    segment_name,
)

logger = logging.getLogger(__name__)

# What a crash or power cut leaves behind by design; anything else is damage.
BENIGN_FINDINGS = ("temp-removed", "incomplete-open-removed", "closed-after-crash", "adopted",
                   "purge-finished")


@dataclass(frozen=True)
class Finding:
    """One thing recovery did or found. ``kind`` names it; ``moved_to`` is in quarantine."""

    kind: str
    path: str
    detail: str
    recording_id: str | None = None
    moved_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "recording_id": self.recording_id, "moved_to": self.moved_to}


@dataclass
class RecoveryReport:
    findings: list[Finding] = field(default_factory=list)

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def quarantined(self) -> list[Finding]:
        return [f for f in self.findings if f.moved_to is not None]


class Recovery:
    """Recovery of :class:`~linetap.firmware.spool.Spool`, run once as it opens: one room of it."""

    def _recover(self) -> None:
        for tmp in sorted(self.root.rglob(f".*{TMP_SUFFIX}")):
            tmp.unlink()
            self._found("temp-removed", tmp, "incomplete temporary file from an interrupted write")
        self._db = self._open_catalogue()
        self._quarantine_bad_rows()
        rows = {r["id"]: r for r in self.db.execute("SELECT * FROM recordings").fetchall()}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name not in rows):
            self._adopt(folder)
        self._reconcile_head()
        rows = self.db.execute("SELECT * FROM recordings ORDER BY seq").fetchall()
        for row in rows:
            if row["state"] in ("closed", "synced"):
                self._check_closed(row)
            elif row["state"] == "purged" and (folder := self.layout.recording(row["id"])).exists():
                shutil.rmtree(folder)
                self._found("purge-finished", folder, "finished an interrupted purge", row["id"])
        for row in rows:
            if row["state"] == "recording":
                self._close_after_crash(row)
        layout = self.layout
        for stray in sorted(p for p in self.root.iterdir()
                            if p.is_file() and p != layout.chain and not layout.is_catalogue_part(p)):
            self._quarantine(stray, "stray-file", "file that is not part of the spool layout")
        self._files.sync_dir(self.root)

    def _found(self, kind: str, path: Path, detail: str, recording_id: str | None = None,
               moved_to: Path | None = None) -> None:
        finding = Finding(kind, str(path), detail, recording_id, None if moved_to is None else str(moved_to))
        self.recovery.findings.append(finding)
        log = logger.info if kind in BENIGN_FINDINGS else logger.warning
        log("spool recovery kind=%s path=%s recording=%s detail=%s moved_to=%s", kind, path,
            recording_id, detail, finding.moved_to)

    def _quarantine(self, path: Path, kind: str, detail: str, recording_id: str | None = None) -> Path:
        target_dir = self.layout.quarantine_folder(self._clock.wall(), kind)
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        rel = path.relative_to(self.root) if path.is_relative_to(self.root) else Path(path.name)
        target = target_dir / str(rel).replace(os.sep, "__")
        n = 1
        while target.exists():
            target = target_dir / f"{rel.name}.{n}"
            n += 1
        os.rename(path, target)
        self._files.sync_dir(target_dir)
        self._files.sync_dir(path.parent)
        self._found(kind, path, detail, recording_id, target)
        return target

    def _make_root(self) -> None:
        """The spool folder; anything else in its place is moved to quarantine, so calls are kept again."""
        if self.root.exists() and not self.root.is_dir():
            target_dir = self.layout.quarantine_folder(self._clock.wall(), "spool-not-a-folder")
            target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(self.root, target_dir / SPOOL_DIR)
            self._files.sync_dir(self.data_dir)
            self._found("spool-not-a-folder", self.root, "the spool was not a folder; a new spool was made",
                        moved_to=target_dir / SPOOL_DIR)
        self.root.mkdir(parents=True, exist_ok=True)

    def _open_catalogue(self) -> sqlite3.Connection:
        def quarantine(why: str) -> None:
            for part in sorted(p for p in self.root.iterdir() if self.layout.is_catalogue_part(p)):
                self._quarantine(part, "corrupt-catalogue",
                                 f"catalogue database unreadable ({why}); rebuilt from the recordings on disk")

        return open_catalogue(self.layout.catalogue, quarantine)

    def _quarantine_bad_rows(self) -> None:
        """Rows whose values make no sense are copied to quarantine and dropped; the files are adopted again."""
        for row in self.db.execute("SELECT rowid AS rowid_, * FROM recordings").fetchall():
            values = recording_values(row)
            if (problem := row_problem(values)) is None:
                continue
            note = self.layout.bad_row_note(self._clock.wall(), row["rowid_"])
            note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._files.write(note, json.dumps(values, default=shown, sort_keys=True).encode())
            self.db.execute("DELETE FROM recordings WHERE rowid = ?", (row["rowid_"],))
            self.db.execute("DELETE FROM segments WHERE recording_id = ?", (values["id"],))
            rid = values["id"] if isinstance(values["id"], str) else None
            self._found("bad-catalogue-row", self.layout.catalogue, f"catalogue row makes no sense: {problem}; "
                        "its recording is adopted again from its files", rid, note)
        for row in self.db.execute("SELECT rowid AS rowid_, * FROM segments").fetchall():
            values = {key: row[key] for key in COLUMNS["segments"]}
            if (problem := segment_row_problem(values)) is not None:
                self.db.execute("DELETE FROM segments WHERE rowid = ?", (row["rowid_"],))
                self._found("bad-catalogue-row", self.layout.catalogue,
                            f"segment row makes no sense ({problem}); dropped, the recording's files decide")

    def _adopt(self, folder: Path) -> None:
        """A recording folder with no catalogue row (catalogue lost, or a crash at open)."""
        if not any(folder.iterdir()):
            # A crash between creating the folder and writing open.json: no seq was allocated yet.
            folder.rmdir()
            self._found("incomplete-open-removed", folder, "empty recording folder of a call that "
                        "never got its seq", folder.name)
            return
        taken = {r[0] for r in self.db.execute("SELECT seq FROM recordings")}
        manifest_path, opening_path = folder / MANIFEST_FILE, folder / OPEN_FILE
        try:
            if manifest_path.exists():
                data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
                m = mf.verify(data, self.public_key)
                if m["recording_id"] != folder.name or m["seq"] in taken:
                    raise mf.ManifestError(f"manifest names {m['recording_id']} seq={m['seq']}, "
                                           "which does not fit this folder or reuses a seq")
                opening = {"recording_id": m["recording_id"], "seq": m["seq"], "device_id": m["device_id"],
                           "started": m["started"], "codec": m["codec"], "caller": m.get("caller"),
                           "caller_withheld": m.get("caller_withheld"),
                           "flagged": m.get("flagged", False)}
                self._insert_row(opening, "closed")
                self._restore_from_manifest(folder.name, m, data)
                for s in m["segments"]:
                    self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) "
                                    "VALUES (?, ?, ?, ?)", (folder.name, s["index"], s["bytes"], s["sha256"]))
            elif opening_path.exists():
                opening = untrusted.loads(read_bounded(opening_path, max_bytes=OPEN_MAX_BYTES),
                                          what=str(opening_path), max_bytes=OPEN_MAX_BYTES)
                if (problem := opening_problem(opening)) is not None:
                    raise mf.ManifestError(f"open.json cannot open a recording: {problem}")
                if opening.get("recording_id") != folder.name or type(opening.get("seq")) is not int \
                        or not 1 <= opening["seq"] <= untrusted.MAX_SAFE_INT or opening["seq"] in taken:
                    raise mf.ManifestError(f"open.json names {shown(opening.get('recording_id'))} "
                                           f"seq={shown(opening.get('seq'))}, which does not fit or reuses a seq")
                self._insert_row(opening, "recording")
            else:
                raise mf.ManifestError("folder has neither manifest.json nor open.json")
        except (mf.ManifestError, mf.BadSignature, ValueError, OSError, KeyError, TypeError) as e:
            self._quarantine(folder, "orphan-recording", f"recording folder with no catalogue row "
                             f"that cannot be adopted: {e}", folder.name)
            return
        self._found("adopted", folder, "recording folder with no catalogue row, adopted", folder.name)

    def _restore_from_manifest(self, recording_id: str, m: dict[str, Any], data: bytes) -> None:
        """Fill a rebuilt row from the signed manifest: what ``spool list`` showed before the catalogue was lost."""
        ended = m.get("ended") if isinstance(m.get("ended"), dict) else {}
        events = m.get("events") if isinstance(m.get("events"), list) else []
        consent = [e for e in events if isinstance(e, dict) and e.get("kind") in mf.CONSENT_KINDS]

        def whole(value: Any) -> int | None:
            return value if type(value) is int else None

        self.db.execute(
            "UPDATE recordings SET manifest_sha256 = ?, ended_by = ?, segments = ?, bytes = ?, ended_wall_ms = ?,"
            " ended_mono_ms = ?, flagged = ?, recorded = ?, discarded = ?, consent = ? WHERE id = ?",
            (mf.manifest_hash(data), m.get("ended_by") if isinstance(m.get("ended_by"), str) else None,
             len(m["segments"]), sum(s["bytes"] for s in m["segments"]), whole(ended.get("wall_ms")),
             whole(ended.get("mono_ms")), int(m.get("flagged") is True), int(m.get("recorded") is True),
             int(m.get("discarded") is True), json.dumps(consent), recording_id))

    def _insert_row(self, opening: dict[str, Any], state: str) -> None:
        started = opening["started"]
        self.db.execute(
            "INSERT INTO recordings (id, seq, state, started_wall_ms, started_mono_ms, clock_synced,"
            " boot_id, flagged, opening) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (opening["recording_id"], opening["seq"], state, started["wall_ms"], started["mono_ms"],
             int(started["clock_synced"]), started.get("boot_id"), int(bool(opening.get("flagged"))),
             json.dumps(opening)))

    def _reconcile_head(self) -> None:
        """``chain.json`` wins for allocation (it survives a lost catalogue); rows can only raise it."""
        path = self.layout.chain
        try:
            head = self._read_head()
        except (ValueError, OSError) as e:
            self._quarantine(path, "corrupt-chain-head", f"chain.json unreadable ({e}); rebuilt from the catalogue")
            head = self._read_head()
        top = self.db.execute("SELECT MAX(seq) FROM recordings").fetchone()[0] or 0
        last = self.db.execute("SELECT seq, manifest_sha256 FROM recordings WHERE manifest_sha256 "
                               "IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
        changed = False
        if top > head["allocated"]:
            head["allocated"], changed = top, True
        if last is not None and last["seq"] > head["last"]["seq"]:
            head["last"], changed = {"seq": last["seq"], "sha256": last["manifest_sha256"]}, True
        if changed or not path.exists():
            self._write_head(head)

    def _check_closed(self, row: sqlite3.Row) -> None:
        rid = row["id"]
        folder = self.layout.recording(rid)
        if not folder.is_dir() or not (folder / MANIFEST_FILE).exists():
            self._quarantine_row(row, "missing-files", f"catalogue row seq={row['seq']} state={row['state']}"
                                 f" but {folder if not folder.is_dir() else folder / MANIFEST_FILE} is gone")
            if folder.is_dir():
                self._quarantine(folder, "missing-files", "remains of a recording without its manifest", rid)
            return
        problems: list[str] = []
        try:
            try:
                data = read_bounded(folder / MANIFEST_FILE, max_bytes=MANIFEST_MAX_BYTES)
            except (FileRefused, OSError) as e:
                raise mf.ManifestError(f"{MANIFEST_FILE} {e}") from None
            m = mf.verify(data, self.public_key)
            if m["recording_id"] != rid or m["seq"] != row["seq"]:
                problems.append(f"manifest names {m['recording_id']} seq={m['seq']}, catalogue says "
                                f"{rid} seq={row['seq']}")
        except (mf.ManifestError, mf.BadSignature) as e:
            self._set_state(rid, "quarantined", f"bad manifest: {e}")
            self._quarantine(folder, "bad-manifest", f"manifest of seq={row['seq']}: {e}", rid)
            return
        expected = set()
        for s in m["segments"]:
            name = segment_name(s["index"])
            expected.add(name)
            problem = segment_problem(folder / name, s["bytes"], s["sha256"])
            if problem:
                problems.append(f"{name}: {problem}")
        if problems:
            self._set_state(rid, "quarantined", "; ".join(problems))
            self._quarantine(folder, "bad-segment", f"seq={row['seq']}: " + "; ".join(problems), rid)
            return
        for extra in sorted(folder.iterdir()):
            if extra.name == OPEN_FILE:
                extra.unlink()  # a crash between the manifest and its removal; the manifest supersedes it
            elif extra.name not in expected and extra.name not in (MANIFEST_FILE, RECEIPT_FILE):
                self._quarantine(extra, "orphan-file", "file not listed in the recording's manifest", rid)

    def _close_after_crash(self, row: sqlite3.Row) -> None:
        rid = row["id"]
        folder = self.layout.recording(rid)
        folder.mkdir(mode=0o700, exist_ok=True)
        # Checked by _quarantine_bad_rows: a recording row's opening parses and can open a recording.
        opening = untrusted.loads(row["opening"], what=f"catalogue opening of {rid}", max_bytes=OPEN_MAX_BYTES)
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.exists():
            try:
                data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
                m = mf.verify(data, self.public_key)
                if m["recording_id"] != rid or m["seq"] != row["seq"]:
                    raise mf.ManifestError(f"manifest names {m['recording_id']} seq={m['seq']}")
            except (mf.ManifestError, mf.BadSignature, FileRefused, OSError) as e:
                self._quarantine(manifest_path, "bad-manifest", f"manifest of an open recording: {e}", rid)
            else:
                self._adopt_written_manifest(row, m, data)
                return
        segments, last_mtime = self._complete_segments(row, folder)
        ended_wall = last_mtime if last_mtime is not None else opening["started"]["wall_ms"] / 1000
        extra = {
            "ended": {"wall_ms": mf.ms(ended_wall), "mono_ms": None, "estimated": True},
            "ended_by": "power-loss", "flagged": bool(opening.get("flagged")),
            "recorded": bool(segments), "events": [], "pauses": [], "mutes": [], "masks": [], "metrics": {},
            "audio": {"frames": None, "start_ms": None, "stopped_by_full_disk": False},
            "caller": opening.get("caller"),
            "caller_withheld": opening.get("caller_withheld"),
        }
        digest = self._close(rid, row["seq"], opening, segments, bool(row["discarded"]), extra)
        self._found("closed-after-crash", folder, f"seq={row['seq']} closed from {len(segments)} complete "
                    f"segments with ended_by=power-loss (manifest {digest[:16]}...)", rid)

    def _complete_segments(self, row: sqlite3.Row, folder: Path) -> tuple[list[dict[str, Any]], float | None]:
        """The sound segments of an open recording, by index, and when the last was written.

        Bad files go to quarantine; files the catalogue never saw (a crash
        before their row) are adopted; rows whose files are gone are dropped.
        """
        rid = row["id"]
        known = {r["idx"]: r for r in self.db.execute(
            "SELECT idx, size, sha256 FROM segments WHERE recording_id = ?", (rid,)).fetchall()}
        segments: list[dict[str, Any]] = []
        last_mtime: float | None = None
        for path in sorted(folder.iterdir()):
            if path.name in (OPEN_FILE, MANIFEST_FILE):
                continue
            index = segment_index(path.name)
            if index is None:
                self._quarantine(path, "orphan-file", "file that is not a segment in a recording folder", rid)
                continue
            try:
                data = read_bounded(path, max_bytes=SEGMENT_MAX_BYTES)
            except (FileRefused, OSError) as e:
                data, problem = b"", f"cannot be read: {e}"
            else:
                if index in known:
                    problem = segment_problem(path, known[index]["size"], known[index]["sha256"], data)
                else:
                    problem = age_shape_problem(data)
            if problem:
                self.db.execute("DELETE FROM segments WHERE recording_id = ? AND idx = ?", (rid, index))
                self._quarantine(path, "bad-segment", f"segment {index} of seq={row['seq']}: {problem}", rid)
                continue
            if index not in known:
                self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                                (rid, index, len(data), hashlib.sha256(data).hexdigest()))
            segments.append({"index": index, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            last_mtime = path.stat().st_mtime
        present = {s["index"] for s in segments}
        for index in sorted(set(known) - present):
            if not self.layout.segment(rid, index).exists():
                self.db.execute("DELETE FROM segments WHERE recording_id = ? AND idx = ?", (rid, index))
                self._quarantine_row_note(rid, index, known[index])
        return segments, last_mtime

    def _adopt_written_manifest(self, row: sqlite3.Row, m: dict[str, Any], data: bytes) -> None:
        rid = row["id"]
        head = self._read_head()
        if m["seq"] > head["last"]["seq"]:
            head["last"] = {"seq": m["seq"], "sha256": mf.manifest_hash(data)}
            self._write_head(head)
        self.db.execute("DELETE FROM segments WHERE recording_id = ?", (rid,))
        for s in m["segments"]:
            self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                            (rid, s["index"], s["bytes"], s["sha256"]))
        self.db.execute("UPDATE recordings SET state = 'closed', segments = ?, bytes = ?, ended_by = ?, "
                        "manifest_sha256 = ? WHERE id = ?",
                        (len(m["segments"]), sum(s["bytes"] for s in m["segments"]), m.get("ended_by"),
                         mf.manifest_hash(data), rid))
        self.layout.opening(rid).unlink(missing_ok=True)
        self._found("adopted", self.layout.recording(rid), "open recording whose manifest was already written", rid)
        self._check_closed(self.db.execute("SELECT * FROM recordings WHERE id = ?", (rid,)).fetchone())

    def _set_state(self, recording_id: str, state: str, note: str) -> None:
        self.db.execute("UPDATE recordings SET state = ?, note = ? WHERE id = ?", (state, note, recording_id))

    def _quarantine_row(self, row: sqlite3.Row, kind: str, detail: str) -> None:
        """A row cannot be moved like a file: its content is copied to quarantine, the row kept as quarantined."""
        self._set_state(row["id"], "quarantined", detail)
        note = self.layout.row_note(row["id"])
        note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files.write(note, json.dumps(row_dict(row), sort_keys=True).encode())
        self._found(kind, self.layout.recording(row["id"]), detail, row["id"], note)

    def _quarantine_row_note(self, recording_id: str, index: int, segment: sqlite3.Row) -> None:
        note = self.layout.row_note(recording_id, index)
        note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files.write(note, json.dumps({"recording_id": recording_id, "idx": index,
                                            "size": segment["size"], "sha256": segment["sha256"]}).encode())
        self._found("missing-files", self.layout.segment(recording_id, index),
                    "catalogue lists this segment but the file is gone", recording_id, note)


