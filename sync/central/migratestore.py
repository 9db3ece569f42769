"""``linetap-central migrate-store --to CONFIG``: move an embedded store (SQLite + files) up to PostgreSQL + S3.

What is copied: every table of the index (:data:`~linetap.sync.central.copytables.TABLES`,
in schema order) and every stored object, each object's bytes with its row.
Staging (``staged``: parts of objects still arriving) is not: the box never
had those objects' acknowledgements, so it sends them again whole, to the
new store. Keys stay where they are, in the data dir's ``keys/``.

Checked on arrival, so a copy that completes is the store it came from:

- each object is read from the source and must match its row's sha256 and
  size; a manifest must verify with its device's enrolled key, a tombstone
  with the operator key and agree with its recording; the object is then
  read back from the target and hashed again;
- each page of rows is read back from the target and must equal the source's
  (so every hash chain, whose links are columns, is carried unchanged);
- at the end the index's chains are walked on both sides: the receipt log
  (signatures with the store key, ``prev`` links, a receipt per recording),
  the access log, the trusted timestamps (tokens against ``[timestamps]``
  certificates, heads against the index). The target must show no problem
  the source does not, and every table the same number of rows.

Resumable and idempotent: rows go in with ``ON CONFLICT DO NOTHING`` page by
page, each page in one transaction; an object already in the target index is
skipped, an object in the target store without its row (a run killed between
the two) is compared and kept. A table without a key (``problems``) resumes
from the target's count of rows. A second run after a kill continues; a run
after a complete one copies nothing.

The target must be empty or a copy of this store: a marker object
(:data:`MARKER_KEY`) names the source's store key; a target index with rows
and no marker, a marker naming another store, or a target object that
differs from the source's under the same key is refused before anything is
written over. Stop ``serve`` and the tools on the source first: what they
write during the copy may be missed.

Write-once: with ``[store] object_lock`` on in the target config, each
recording's objects are locked as ingest locks them (until its start plus
its ``[retention]`` category's days) and a recording on legal hold gets the
store's legal hold, before its index row is copied: a moved store is as
write-once as one that ingested on S3 from the start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.errors import AuthError, ConfigError, SyncError
from linetap.firmware.keys import public_key_from_b64
from linetap.firmware.receipt import key_id
from linetap.sync import wire
from linetap.sync.central.config import RetentionSection, StoreSection
from linetap.sync.central.copytables import TABLES, Table
from linetap.sync.central.index import IndexTables
from linetap.sync.central.progress import Progress, on_stderr
from linetap.sync.central.store import ObjectMissing, ObjectStore
from linetap.sync.central.tombstone import CHAIN_MEMBERS, verify_tombstone
from linetap.sync.central.writeonce import hold_recording, lock_recording

logger = logging.getLogger(__name__)

MARKER_KEY = "migrate-store.json"  # one path part: never a device's key, which all have a folder
MAX_MARKER_BYTES = 4096
PAGE = 128  # rows per read, write transaction and read-back
NOT_COPIED = ("staged",)
MANIFEST = str(wire.ObjectRef.manifest())
Row = dict[str, Any]


class MigrationRefused(SyncError):
    """The copy cannot go on: the target holds other data, or something failed its check (the message says)."""


class StoreMigration:
    """One copy from a source index and store to a target index and store (all opened by the caller).

    ``data_dir`` is the store's folder (its ``keys/``); ``jobs`` objects move at once; ``page`` rows go in
    each write transaction.
    """

    def __init__(self, data_dir: Path, source: tuple[IndexTables, ObjectStore],
                 target: tuple[IndexTables, ObjectStore], *, progress: Progress, jobs: int = 4, page: int = PAGE,
                 chain_checks: Callable[[IndexTables, ObjectStore], list[Row]] | None = None,
                 write_once: tuple[StoreSection, RetentionSection] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.src, self.src_store = source
        self.dst, self.dst_store = target
        self.progress = progress
        self.jobs = max(1, jobs)
        self.page = max(1, page)
        self._chain_checks = chain_checks
        self._write_once = write_once
        self._device_keys: dict[str, Any] = {}
        self._operator: Any = None

    def run(self) -> dict[str, Any]:
        """Copy everything not copied yet; returns what was done (rows per table, objects, bytes)."""
        from linetap.sync.central.keys import load_store_key, operator_public_key

        source_id = key_id(load_store_key(self.data_dir).public_key())
        self._operator = operator_public_key(self.data_dir)
        resumed = self._claim_target(source_id)
        objects, nbytes = self.src.stored_totals()
        self.progress.total(objects, nbytes)
        tables: dict[str, dict[str, int]] = {}
        for t in TABLES:
            if t.name in NOT_COPIED:
                tables[t.name] = {"rows": self.src.count_rows(t.name), "copied": 0, "skipped": True}
                continue
            copied = self._copy_table(t) if t.key else self._copy_unkeyed(t)
            rows = self.src.count_rows(t.name)
            if self.dst.count_rows(t.name) != rows:
                raise MigrationRefused(f"table {t.name}: the target holds {self.dst.count_rows(t.name)} rows, "
                                       f"the source {rows}; was the source written during the copy? stop serve "
                                       "and run migrate-store again")
            tables[t.name] = {"rows": rows, "copied": copied}
        chains = self._compare_chains()
        figures = self.progress.finish()
        return {"resumed": resumed, "source_store_key": source_id, "tables": tables, "chains": chains,
                "objects": figures["objects"], "bytes": figures["bytes"], "seconds": figures["elapsed_s"]}

    # -- the target --

    def _claim_target(self, source_id: str) -> bool:
        """True when the target holds an earlier run's copy of this store; refuses any other data."""
        try:
            raw = self.dst_store.get(MARKER_KEY)
        except ObjectMissing:
            raw = None
        if raw is not None:
            doc = untrusted.loads(raw, what=f"target object {MARKER_KEY}", max_bytes=MAX_MARKER_BYTES, max_depth=2)
            if not isinstance(doc, dict) or doc.get("source_store_key") != source_id:
                theirs = doc.get("source_store_key") if isinstance(doc, dict) else None
                raise MigrationRefused(f"the target holds a copy of another store (store key {theirs}, this one "
                                       f"is {source_id}); give migrate-store an empty database and bucket")
            return True
        filled = [t.name for t in TABLES if self.dst.count_rows(t.name)]
        if filled:
            raise MigrationRefused(f"the target index already holds data (tables {', '.join(filled)}) that "
                                   "migrate-store did not copy from this store; give it an empty database")
        self.dst_store.put(MARKER_KEY, json.dumps({"source_store_key": source_id,
                                                   "source": str(self.data_dir)}).encode())
        return False

    # -- rows --

    def _copy_table(self, t: Table) -> int:
        after: tuple[Any, ...] | None = None
        copied = 0
        while page := self.src.table_page(t.name, after, self.page):
            if t.name == "objects":
                self._copy_objects(page, after)
            elif t.name == "recordings":
                self._copy_tombstones(page)
                self._lock_recordings(page)
            copied += self.dst.insert_rows(t.name, page)
            self._check_arrived(t, page, self.dst.table_page(t.name, after, len(page)))
            after = tuple(page[-1][c] for c in t.key)
        return copied

    def _copy_unkeyed(self, t: Table) -> int:
        copied = 0
        while page := self.src.table_page(t.name, None, self.page, offset=(done := self.dst.count_rows(t.name))):
            copied += self.dst.insert_rows(t.name, page)
            self._check_arrived(t, page, self.dst.table_page(t.name, None, len(page), offset=done))
        return copied

    @staticmethod
    def _check_arrived(t: Table, sent: list[Row], back: list[Row]) -> None:
        for want, got in zip(sent, back, strict=False):
            if dict(got) != want:
                where = ", ".join(f"{c}={want[c]!r}" for c in t.key) or "a row"
                differs = sorted(c for c in want if got.get(c) != want[c])
                raise MigrationRefused(f"table {t.name}: {where} reads back from the target with other "
                                       f"{', '.join(differs) or 'columns'}; the target changed it or holds "
                                       "other data under that key")
        if len(back) < len(sent):
            raise MigrationRefused(f"table {t.name}: {len(sent) - len(back)} rows written are not in the target")

    # -- objects --

    def _copy_objects(self, page: list[Row], after: tuple[Any, ...] | None) -> None:
        """Put the page's stored objects the target index does not list yet, each checked both ways."""
        have = {(r["device_id"], r["recording_id"], r["name"]) for r in self.dst.table_page("objects", after, self.page)}
        todo = []
        for row in page:
            if row["stored_ms"] is None:
                continue  # claimed, never written: the row alone, as verify lists it
            if (row["device_id"], row["recording_id"], row["name"]) in have:
                self.progress.advance(1, row["size"], skipped=True)
            else:
                todo.append(row)
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="migrate-store") as pool:
            for row, moved in zip(todo, pool.map(self._copy_object, todo), strict=True):
                self.progress.advance(1, row["size"], skipped=not moved)

    def _copy_object(self, row: Row) -> bool:
        """Copy one object (True) or find it there already, equal (False); refuses what does not check."""
        key = row["object_key"]
        try:
            data = self.src_store.get(key)
        except ObjectMissing:
            raise MigrationRefused(f"object {key} is in the source index but not in its store; run "
                                   "`linetap-central verify` on the source and settle it first") from None
        if len(data) != row["size"] or _sha256(data) != row["sha256"]:
            raise MigrationRefused(f"object {key} in the source does not match its index row (size or sha256): "
                                   "altered or damaged; run `linetap-central verify` on the source")
        if row["name"] == MANIFEST:
            self._check_manifest(row, data)
        return self._put_checked(key, data)

    def _put_checked(self, key: str, data: bytes) -> bool:
        digest = _sha256(data)
        if self.dst_store.exists(key):
            if _sha256(self.dst_store.get(key)) == digest:
                return False
            raise MigrationRefused(f"the target store holds other bytes under {key}: it holds data that is "
                                   "not this store's; give migrate-store an empty bucket (or prefix)")
        self.dst_store.put(key, data)
        if _sha256(self.dst_store.get(key)) != digest:
            raise MigrationRefused(f"object {key} reads back from the target with other bytes than were put; "
                                   "check the object store")
        return True

    def _check_manifest(self, row: Row, data: bytes) -> None:
        device = row["device_id"]
        if device not in self._device_keys:
            key_b64 = self.src.device_key(device)
            self._device_keys[device] = None if key_b64 is None else public_key_from_b64(key_b64)
        key = self._device_keys[device]
        if key is None:
            raise MigrationRefused(f"manifest {row['object_key']}: device {device} is not enrolled, so it "
                                   "cannot be checked; enrol it again with its key, then migrate")
        try:
            mf.verify(data, key)
        except AuthError as e:
            raise MigrationRefused(f"manifest {row['object_key']} does not verify with device {device}'s "
                                   f"enrolled key: {e}") from None

    def _copy_tombstones(self, page: list[Row]) -> None:
        for row in page:
            if row["tombstone_key"] is None:
                continue
            try:
                data = self.src_store.get(row["tombstone_key"])
                tombstone = verify_tombstone(data, self._operator)
            except (ObjectMissing, AuthError, ConfigError) as e:
                raise MigrationRefused(f"tombstone {row['tombstone_key']} of the source does not check: {e}; "
                                       "run `linetap-central verify` on the source") from None
            if any(tombstone.get(k) != row[k] for k in CHAIN_MEMBERS):
                raise MigrationRefused(f"tombstone {row['tombstone_key']} disagrees with its recording's row")
            self._put_checked(row["tombstone_key"], data)

    def _lock_recordings(self, page: list[Row]) -> None:
        """Lock and hold each recording's objects as ingest would have (``[store] object_lock``, its
        category's days, its legal hold) before its row goes in; a lock never shortens, so a rerun is harmless."""
        if self._write_once is None or self._write_once[0].object_lock == "off":
            return
        section, retention = self._write_once
        for row in page:
            if row["erased_ms"] is not None:
                continue  # only its tombstone is left, and that was never locked
            keys = [o["object_key"] for o in self.src.objects(row["device_id"], row["recording_id"])]
            lock_recording(self.dst_store, section, retention, keys, started_ms=row["started_ms"] or row["stored_ms"],
                           flagged=bool(row["flagged"]), now_ms=round(time.time() * 1000))
            if row["hold"]:
                hold_recording(self.dst_store, section, keys, True)

    # -- chains --

    def _compare_chains(self) -> dict[str, int]:
        """Walk the chains on both sides; the target may show no problem the source does not."""
        if self._chain_checks is None:
            return {}
        before = self._chain_checks(self.src, self.src_store)
        after = self._chain_checks(self.dst, self.dst_store)
        new = [p for p in after if p not in before]
        if new:
            shown = "; ".join(f"{p['kind']}: {p['detail']}" for p in new[:5])
            raise MigrationRefused(f"after the copy the target shows {len(new)} problems the source does not: "
                                   f"{shown}")
        return {"problems_in_source": len(before), "new_in_target": 0}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chain_problems(data_dir: Path, section: Any) -> Callable[[IndexTables, ObjectStore], list[Row]]:
    """The check of every chain in an index (receipt log, access log, trusted timestamps), as problem rows;
    ``section`` is ``[timestamps]`` (its certificates check the tokens)."""
    from linetap.sync.central import timestamps as ts
    from linetap.sync.central.accesslog import verify_log
    from linetap.sync.central.stored import Stored
    from linetap.sync.central.tsa import load_trust
    from linetap.sync.central.verify import DeviceReport, check_receipts

    try:
        trust = load_trust(data_dir, section)
    except (ConfigError, ts.TimestampError):
        trust = None  # verify names it; the copy compares the same checks on both sides

    def check(index: IndexTables, store: ObjectStore) -> list[Row]:
        stored = Stored(data_dir, store=store, index=index)
        reports = [DeviceReport(d["device_id"]) for d in index.devices()]
        check_receipts(stored, reports)
        found: list[Row] = [{"device_id": r.device_id, **p} for r in reports for p in r.problems]
        broken = verify_log(index.access_log())
        if broken is not None:
            found.append({"kind": "access-log-broken", "detail": f"entry {broken[0]}: {broken[1]}"})
        return found + ts.check_stamps(index, index.timestamps(), trust)
    return check


def add_migrate_store_command(sub: Any, common: Any) -> None:
    """Plugged into :func:`linetap.sync.central.cli.build_parser`."""
    from linetap.firmware.options import add_json

    parser = sub.add_parser("migrate-store", parents=[common],
                            help="copy this embedded store (SQLite index and files) into the PostgreSQL index "
                                 "and S3 store a config names, checking everything on arrival; resumable")
    parser.add_argument("--to", type=Path, required=True, metavar="CONFIG",
                        help="central config naming the target: [index] url (PostgreSQL) and [store] url (S3)")
    parser.add_argument("--jobs", type=int, default=4, choices=range(1, 33), metavar="N",
                        help="objects copied at once (1-32, default 4)")
    parser.add_argument("--batch", type=int, default=PAGE, choices=range(1, 10_001), metavar="ROWS",
                        help=f"rows per write transaction, the most a kill makes the next run redo "
                             f"(1-10000, default {PAGE})")
    parser.add_argument("--progress-every", type=float, default=1.0, metavar="SECONDS",
                        help="show progress at most this often (default 1; 0: after every object)")
    add_json(parser)
    parser.set_defaults(run=_migrate_store)


def _migrate_store(args: Any) -> int:
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.index import INDEX_FILE, SqliteIndex
    from linetap.sync.central.indexes import describe, open_index
    from linetap.sync.central.store import OBJECTS_DIR, FileStore, open_store

    folder = data_dir(args)
    if not (folder / INDEX_FILE).is_file():
        raise ConfigError(f"{folder} holds no embedded index ({INDEX_FILE}); give --data-dir the folder of the "
                          "store to copy (its central.toml is not read: the source is always SQLite and files)")
    config = load_config(args.to, folder)
    if config.index.url is None:
        raise ConfigError(f"{args.to} names no [index] url; migrate-store copies into PostgreSQL: add "
                          "[index] url = \"postgresql://USER@HOST/DATABASE\" (and [store] url for S3)")
    progress = on_stderr("migrate-store", as_json=args.json, interval_s=max(0.0, args.progress_every))
    with SqliteIndex(folder / INDEX_FILE) as source, open_index(config.index, folder) as target:
        store = open_store(config, folder)
        check = getattr(store, "check", None)  # a bucket: reachable, and able to lock when asked to
        if check is not None:
            check(object_lock=config.store.object_lock != "off")
        result = StoreMigration(folder, (source, FileStore(folder / OBJECTS_DIR)), (target, store),
                                progress=progress, jobs=args.jobs, page=args.batch,
                                chain_checks=chain_problems(folder, config.timestamps),
                                write_once=(config.store, config.retention)).run()
    result["target"] = {"index": describe(config.index, folder), "store": getattr(store, "where", str(folder))}
    if args.json:
        print(json.dumps(result))
        return 0
    rows = sum(t["rows"] for name, t in result["tables"].items() if not t.get("skipped"))
    print(f"copied to {result['target']['index']} and {result['target']['store']}: {result['objects']} objects "
          f"({result['bytes'] / 1e6:.1f} MB), {rows} index rows in {len(result['tables'])} tables, every object, "
          "row and chain checked" + (" (resumed)" if result["resumed"] else ""))
    staged = result["tables"]["staged"]["rows"]
    if staged:
        print(f"not copied: {staged} staged parts of objects still arriving (their boxes send them again)")
    print(f"next: point serve and the tools at {args.to} (--config, or copy it to {folder}/central.toml)")
    return 0
