"""Read-only tools over a data dir: ``spool list`` and ``spool verify``, and the doctor's spool check.

Nothing here opens a :class:`~linetap.firmware.spool.Spool` (that runs
recovery, which must not run beside the service) and nothing under the data
dir is created, changed or removed, whatever is found. A damaged catalogue,
spool folder or file is a problem in the answer, never an exception.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware.errors import ConfigError, SpoolError
from linetap.firmware import untrusted
from linetap.firmware.keys import load_signing_key, load_store_keys
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.firmware.spool.catalogue import (
    SQLITE_HEADER,
    recording_values,
    row_dict,
    row_problem,
    schema_problem,
)
from linetap.firmware.spool.checks import kind_of, segment_problem
from linetap.firmware import receipt
from linetap.firmware.spool.layout import (
    CATALOGUE,
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    OPEN_FILE,
    RECEIPT_FILE,
    RECEIPT_MAX_BYTES,
    SpoolLayout,
    is_recording_id,
    segment_name,
)

logger = logging.getLogger(__name__)

REBUILT_AT_START = ("the service moves it to quarantine and rebuilds the catalogue from the recordings "
                    "when it starts (restart it: systemctl restart linetap)")
ROW_QUARANTINED_AT_START = ("the service moves the row to quarantine when it starts and adopts the "
                            "recording again from its files (restart it: systemctl restart linetap)")


class CatalogueUnreadable(SpoolError, sqlite3.DatabaseError):
    """The catalogue (or the spool folder holding it) cannot be read; the message says why and what to do."""


@dataclass
class CatalogueView:
    """What ``spool list`` and ``spool verify`` read, without writing anything.

    ``rows`` are the rows that make sense, oldest first; ``problems`` say what
    did not (``kind``, ``recording_id``, ``detail`` with the fix);
    ``readable`` is False when the spool folder or the catalogue as a whole
    could not be read, so the rows say nothing about what is kept.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    readable: bool = True

    def problem(self, kind: str, recording_id: str | None, detail: str) -> None:
        self.problems.append({"kind": kind, "recording_id": recording_id, "detail": detail})

    def unreadable(self, kind: str, detail: str) -> CatalogueView:
        self.readable = False
        self.problem(kind, None, detail)
        return self


def read_catalogue(data_dir: Path) -> CatalogueView:
    """The catalogue's rows and every problem found reading it; read-only, never raises for content.

    Nothing under the data dir is created, changed or removed: without a WAL
    file the database is opened immutable; with a WAL and its shared-memory
    index (the service is running, or stopped by a crash) read-only through
    them, which may refresh that index but never the database or the WAL;
    with a WAL alone, a copy in a temporary folder is read.
    """
    layout = SpoolLayout(Path(data_dir))
    root, path = layout.root, layout.catalogue
    view = CatalogueView()
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        return view
    except OSError as e:
        return view.unreadable("spool-unreadable", f"{root} cannot be read ({e.strerror}); check that the "
                                                   "data dir belongs to the linetap user")
    if not stat.S_ISDIR(mode):
        return view.unreadable("spool-not-a-folder",
                               f"{root} is {kind_of(mode)}, not a folder, so no recording can be kept or "
                               f"read; move it aside (mv {root} {root}.bad) and restart the service, which "
                               "makes a new spool")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return view  # the service makes it at start; recording folders without rows are reported by verify
    except OSError as e:
        return view.unreadable("bad-catalogue", f"{path} cannot be read ({e.strerror}); check that the data "
                                                "dir belongs to the linetap user")
    why = _not_a_database(path, st)
    if why is None:
        rows, why = _catalogue_rows(path)
    if why is not None:
        return view.unreadable("bad-catalogue", f"the catalogue {path} {why}; {REBUILT_AT_START}")
    for row in rows:
        values = recording_values(row)
        if (problem := row_problem(values)) is None:
            view.rows.append(row_dict(values))
            continue
        rid = values["id"] if is_recording_id(values["id"]) else None
        view.problem("bad-catalogue-row", rid, f"a row of the catalogue {path} makes no sense: {problem}; "
                                               f"{ROW_QUARANTINED_AT_START}")
    view.rows.sort(key=lambda r: r["seq"])
    return view


def _not_a_database(path: Path, st: os.stat_result) -> str | None:
    """Why the file at ``path`` is plainly no SQLite database, judged without SQLite; or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a SQLite database file"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            header = os.read(fd, len(SQLITE_HEADER))
        finally:
            os.close(fd)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None if header == SQLITE_HEADER else "is not a SQLite database"


def _catalogue_rows(path: Path) -> tuple[list[sqlite3.Row], str | None]:
    """The ``recordings`` rows of the catalogue at ``path``, read without writing; or why not."""
    wal, shm = path.with_name(CATALOGUE + "-wal"), path.with_name(CATALOGUE + "-shm")
    try:
        with tempfile.TemporaryDirectory(prefix="linetap-catalogue-") as scratch:
            if not wal.exists():
                uri = f"file:{urllib.parse.quote(str(path))}?mode=ro&immutable=1"
            elif shm.exists():  # the service is running, or stopped by a crash: read through its WAL
                uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
            else:  # a WAL without its index: SQLite would make one here, so a copy is read instead
                copy = Path(scratch) / CATALOGUE
                shutil.copyfile(path, copy)
                if wal.is_file():
                    shutil.copyfile(wal, copy.with_name(CATALOGUE + "-wal"))
                uri = f"file:{urllib.parse.quote(str(copy))}"
            return _read_rows(uri)
    except (sqlite3.Error, OSError) as e:
        return [], f"cannot be read as a SQLite database ({e})"


def _read_rows(uri: str) -> tuple[list[sqlite3.Row], str | None]:
    """The ``recordings`` rows of the catalogue at ``uri``, or why it is not a catalogue."""
    db = sqlite3.connect(uri, uri=True)
    try:
        db.row_factory = sqlite3.Row
        check = [r[0] for r in db.execute("PRAGMA quick_check").fetchmany(3)]
        if check != ["ok"]:
            return [], f"is damaged ({'; '.join(map(str, check))[:200]})"
        if (schema := schema_problem(db, tables_required=True)) is not None:
            return [], f"is not a linetap catalogue: {schema}"
        return db.execute("SELECT * FROM recordings").fetchall(), None
    finally:
        db.close()


def list_recordings(data_dir: Path) -> list[dict[str, Any]]:
    """Catalogue rows for ``linetap spool list``, oldest first; no personal data. Read-only.

    Raises :class:`CatalogueUnreadable` when the catalogue as a whole cannot
    be read; rows that make no sense are left out (:func:`read_catalogue`
    names them).
    """
    view = read_catalogue(data_dir)
    if not view.readable:
        raise CatalogueUnreadable("; ".join(p["detail"] for p in view.problems))
    for p in view.problems:
        logger.warning("spool catalogue kind=%s recording=%s detail=%s", p["kind"], p["recording_id"],
                       p["detail"])
    return view.rows


Problem = Callable[[str, "str | None", str], None]


def verify_spool(data_dir: Path, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """``linetap spool verify``: structure, hashes, signatures and chain; never decrypts.

    Read-only: nothing is created, changed or removed, whatever is found.
    ``public_key`` defaults to the device's own key. A kept receipt must name
    its recording's manifest hash, and verify with the store key when one is
    provisioned. A damaged catalogue, spool folder or file is a problem in the
    report, never an exception.
    """
    layout = SpoolLayout(Path(data_dir))
    if public_key is None:
        public_key = load_signing_key(layout.data_dir).public_key()
    view = read_catalogue(layout.data_dir)
    rows = {r["id"]: r for r in view.rows}
    problems: list[dict[str, Any]] = list(view.problems)

    def problem(kind: str, rid: str | None, detail: str) -> None:
        problems.append({"kind": kind, "recording_id": rid, "detail": detail})

    try:
        stores = load_store_keys(layout.data_dir)
    except ConfigError as e:
        stores = {}
        problem("bad-store-key", None, f"{e} (receipts checked for shape only)")

    manifests: list[tuple[int, bytes]] = []
    for folder in _recording_folders(layout, problem):
        row = rows.get(folder.name)
        if row is None and view.readable:
            problem("orphan-recording", folder.name, "folder has no catalogue row")
        if (found := _verify_folder(folder, row, public_key, problem)) is not None:
            manifests.append(found)
            _verify_receipt(folder, found[1], stores, problem)
        if row is not None and row.get("receipt_stored_ms") is not None and not (folder / RECEIPT_FILE).exists():
            problem("missing-receipt", folder.name, f"the catalogue says a receipt was kept but {RECEIPT_FILE} "
                    "is gone; the recording may be deleted by nothing until it holds one again")
    for rid, row in rows.items():
        if row["state"] in ("closed", "synced", "recording") and not layout.recording(rid).is_dir():
            problem("missing-files", rid, f"catalogue row seq={row['seq']} state={row['state']} has no folder")
    manifests.sort()
    chain = _verify_chain(manifests, rows, public_key)
    return {"ok": not problems and chain.ok, "recordings": len(rows), "manifests": len(manifests),
            "problems": problems, "chain": chain.as_dict()}


def _recording_folders(layout: SpoolLayout, problem: Problem) -> list[Path]:
    folders: list[Path] = []
    if layout.root.is_dir():
        for entry in sorted(layout.root.iterdir()):
            if entry.is_symlink():
                problem("stray-link", None, f"{entry} is a symbolic link; the spool holds none: move it out")
            elif entry.is_dir() and not layout.is_catalogue_part(entry):  # a catalogue folder: reported above
                folders.append(entry)
    return folders


def _verify_folder(folder: Path, row: dict[str, Any] | None, public_key: Ed25519PublicKey,
                   problem: Problem) -> tuple[int, bytes] | None:
    """Check one recording folder against its signed manifest; its (seq, manifest) if that verifies."""
    rid = folder.name
    manifest_path = folder / MANIFEST_FILE
    try:
        data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        if row is None or row["state"] != "recording":
            problem("missing-manifest", rid, f"{manifest_path} is missing")
        return None
    except (FileRefused, OSError) as e:
        problem("bad-manifest", rid, f"{manifest_path} {e}")
        return None
    try:
        m = mf.verify(data, public_key)
    except (mf.ManifestError, mf.BadSignature) as e:
        problem("bad-manifest", rid, str(e))
        return None
    listed = set()
    for s in m["segments"]:
        name = segment_name(s["index"])
        listed.add(name)
        if (p := segment_problem(folder / name, s["bytes"], s["sha256"])) is not None:
            problem("bad-segment", rid, f"{name}: {p}")
    for extra in sorted(folder.iterdir()):
        if extra.name not in listed and extra.name not in (MANIFEST_FILE, OPEN_FILE, RECEIPT_FILE):
            problem("orphan-file", rid, f"{extra.name} is not in the manifest")
    return m["seq"], data


def _verify_receipt(folder: Path, manifest: bytes, stores: dict[str, Ed25519PublicKey], problem: Problem) -> None:
    """A kept receipt names this recording and manifest; with a store key provisioned, it verifies too."""
    rid, path = folder.name, folder / RECEIPT_FILE
    try:
        data = read_bounded(path, max_bytes=RECEIPT_MAX_BYTES)
    except FileNotFoundError:
        return
    except (FileRefused, OSError) as e:
        problem("bad-receipt", rid, f"{path} {e}")
        return
    digest = mf.manifest_hash(manifest)
    device_id = mf.parse(manifest)["device_id"]
    try:
        if stores:
            receipt.verify(data, stores, device_id=device_id, recording_id=rid, manifest_sha256=digest)
            return
        value = untrusted.loads(data, what=str(path), max_bytes=RECEIPT_MAX_BYTES, max_depth=2)
    except (receipt.ReceiptError, untrusted.Untrusted) as e:
        problem("bad-receipt", rid, f"{RECEIPT_FILE}: {e}")
        return
    want = {"format": receipt.FORMAT, "device_id": device_id, "recording_id": rid, "manifest_sha256": digest}
    wrong = [k for k, v in want.items() if not isinstance(value, dict) or value.get(k) != v]
    if wrong:
        problem("bad-receipt", rid, f"{RECEIPT_FILE} does not name this recording's {', '.join(wrong)} "
                "(its signature is not checked: no store key is provisioned)")


def _verify_chain(manifests: list[tuple[int, bytes]], rows: dict[str, dict[str, Any]],
                  public_key: Ed25519PublicKey) -> mf.ChainReport:
    """The chain of the verified manifests, trusting the catalogue for where it starts and its gaps."""
    by_seq = {r["seq"]: r for r in rows.values()}
    explained = {seq: r["state"] for seq, r in by_seq.items() if r["state"] in ("purged", "quarantined")}
    after: mf.ChainPoint | None = mf.GENESIS_POINT
    if manifests and manifests[0][0] > 1:
        before = by_seq.get(manifests[0][0] - 1)
        after = None
        if before is not None and before["manifest_sha256"]:
            after = mf.ChainPoint(before["seq"], before["manifest_sha256"])
    return mf.verify_chain([d for _, d in manifests], public_key, after=after, explained=explained)
