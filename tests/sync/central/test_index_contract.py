"""The index contract: every backend (SQLite, PostgreSQL) behaves the same for every method.

PostgreSQL is the session's throwaway cluster (``postgres`` in conftest.py), a
fresh database per test. Where the backends must differ (PostgreSQL cannot
hold a NUL character in text), the test says how each answers.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware import receipt
from linetap.firmware.errors import SyncError
from linetap.sync.central import indexschema, pgschema
from linetap.sync.central.index import (SCHEMA_VERSION, AmbiguousRecording, FleetUpdate, IndexTables,
                                        SqliteIndex, UnknownRecording)
from linetap.sync.central.localpg import LocalPostgres
from linetap.sync.central.pgindex import IndexValueError, PgIndex
from linetap.sync.central.store import StoreUnavailable

SHA_A, SHA_B = "a" * 64, "b" * 64


@dataclass(frozen=True)
class Backend:
    kind: str
    location: str  # the SQLite file or the PostgreSQL URL

    def open(self) -> IndexTables:
        return SqliteIndex(Path(self.location)) if self.kind == "sqlite" else PgIndex(self.location)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "index.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
def index(backend: Backend) -> Iterator[IndexTables]:
    with backend.open() as opened:
        yield opened


def rid(n: int) -> str:
    return str(uuid.UUID(int=n))


def row(device: str, n: int, **changes: Any) -> dict[str, Any]:
    """A recording row as ingest makes one: recording ``n`` of ``device`` with seq ``n``."""
    started = 1_000_000 + n * 60_000
    base = {"recording_id": rid(n), "device_id": device, "seq": n, "started_ms": started,
            "ended_ms": started + 30_000, "duration_ms": 30_000, "flagged": False, "recorded": True,
            "discarded": False, "ended_by": "hangup", "consent": [{"kind": "announced", "ms": 1}],
            "metrics": {"talk_ms": 500}, "caller_number": "+15550100", "caller_name": "Ada", "caller_withheld": None,
            "manifest_sha256": f"{n:064x}", "prev": f"{n - 1:064x}", "segments": 2, "bytes": 2048,
            "manifest_key": f"{device}/{rid(n)}/manifest.json", "stored_ms": 5_000 + n}
    return base | changes


def signer(key: Ed25519PrivateKey, recording: dict[str, Any]) -> Any:
    def sign(prev: str, stored_ms: int) -> receipt.Receipt:
        return receipt.sign(key, device_id=recording["device_id"], recording_id=recording["recording_id"],
                            seq=recording["seq"], manifest_sha256=recording["manifest_sha256"],
                            stored_ms=stored_ms, prev=prev)
    return sign


def assert_one_chain(receipts: list[dict[str, Any]]) -> None:
    prev = receipt.GENESIS
    for pos, entry in enumerate(receipts):
        assert (entry["pos"], entry["prev"]) == (pos, prev), f"the chain breaks at log position {pos}"
        prev = entry["sha256"]


# -- devices and objects --

def test_enrolment_is_kept_and_replaced(index: IndexTables) -> None:
    assert index.device_key("box-a") is None
    index.enroll("box-b", "KEY-B", 1)
    index.enroll("box-a", "KEY-A1", 2)
    index.enroll("box-a", "KEY-A2", 3)
    assert index.device_key("box-a") == "KEY-A2"
    assert index.devices() == [{"device_id": "box-a", "public_key": "KEY-A2", "enrolled_ms": 3},
                               {"device_id": "box-b", "public_key": "KEY-B", "enrolled_ms": 1}]


def test_the_first_claim_of_an_object_wins(index: IndexTables) -> None:
    first = index.claim_object("box-a", rid(1), "seg/0", SHA_A, 10, "k/0", 100)
    assert index.claim_object("box-a", rid(1), "seg/0", SHA_A, 10, "k/0", 101) == first
    assert index.claim_object("box-a", rid(1), "seg/0", SHA_B, 12, "k/x", 102)["sha256"] == SHA_A
    assert first == {"device_id": "box-a", "recording_id": rid(1), "name": "seg/0", "sha256": SHA_A, "size": 10,
                     "object_key": "k/0", "claimed_ms": 100, "stored_ms": None, "vouched": 0}
    index.mark_stored("box-a", rid(1), "seg/0", 200)
    index.mark_stored("box-a", rid(1), "seg/0", 300)  # stored once: the first time stays
    assert index.object("box-a", rid(1), "seg/0")["stored_ms"] == 200
    assert index.object("box-b", rid(1), "seg/0") is None  # another device's object of that id is its own
    index.claim_object("box-a", rid(1), "manifest", SHA_B, 5, "k/m", 103)
    assert [o["name"] for o in index.objects("box-a", rid(1))] == ["manifest", "seg/0"]
    index.forget_objects("box-a", rid(1))
    assert index.objects("box-a", rid(1)) == []


def test_claims_racing_in_threads_agree_on_one_winner(index: IndexTables) -> None:
    won: list[str] = []
    start = threading.Barrier(8)

    def claim(n: int) -> None:
        start.wait(10)
        won.append(index.claim_object("box-a", rid(1), "seg/0", f"{n:064x}", 1, "k", n)["sha256"])
    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(won) == 8 and len(set(won)) == 1


def test_staging_and_unvouched_objects_count_against_the_quota(index: IndexTables) -> None:
    index.stage("box-a", rid(1), "seg/0", SHA_A, 0, 100, 10)
    index.stage("box-a", rid(1), "seg/0", SHA_A, 1, 50, 20)
    index.stage("box-a", rid(1), "seg/0", SHA_A, 1, 60, 30)  # the same part again: replaced
    index.stage("box-a", rid(2), "pending-manifest", SHA_B, 0, 7, 40)
    index.claim_object("box-a", rid(3), "seg/0", SHA_A, 1000, "k", 50)
    assert index.held_bytes("box-a") == 100 + 60 + 7 + 1000
    assert index.held_bytes("box-b") == 0
    staged = index.staged()
    assert [(s["recording_id"], s["bytes"], s["parts"], s["first_ms"], s["last_ms"]) for s in staged] == \
        [(rid(1), 160, 2, 10, 30), (rid(2), 7, 1, 40, 40)]
    assert all(type(s["bytes"]) is int for s in staged)  # a sum is an int on every backend
    assert [s["recording_id"] for s in index.staged(older_than_ms=35)] == [rid(1)]
    index.unstage("box-a", rid(1), "seg/0", SHA_B)  # another version: nothing goes
    assert len(index.staged()) == 2
    index.unstage("box-a", rid(1), "seg/0")
    assert [s["recording_id"] for s in index.staged()] == [rid(2)]
    assert [o["recording_id"] for o in index.unvouched_objects("box-a")] == [rid(3)]


# -- recordings --

def test_a_manifest_indexed_twice_is_one_recording(index: IndexTables) -> None:
    index.claim_object("box-a", rid(1), "manifest", SHA_A, 5, "k", 1)
    index.claim_object("box-a", rid(1), "seg/0", SHA_A, 5, "k", 1)
    assert index.add_recording(row("box-a", 1), ["manifest", "seg/0"]) is True
    assert index.add_recording(row("box-a", 1, caller_name="Eve"), ["manifest"]) is False
    got = index.recording(rid(1), "box-a")
    assert got is not None and got["caller_name"] == "Ada"
    assert got["consent"] == [{"kind": "announced", "ms": 1}] and got["metrics"] == {"talk_ms": 500}
    assert (got["flagged"], got["recorded"], got["hold"]) == (False, True, False)
    assert index.unvouched_objects("box-a") == [] and index.held_bytes("box-a") == 0


def test_one_recording_id_on_two_devices_needs_the_device(index: IndexTables) -> None:
    index.add_recording(row("box-a", 1))
    assert index.recording(rid(1))["device_id"] == "box-a"
    index.add_recording(row("box-b", 1, seq=7))
    with pytest.raises(AmbiguousRecording, match="box-a, box-b"):
        index.recording(rid(1))
    assert [r["device_id"] for r in index.recordings_with_id(rid(1))] == ["box-a", "box-b"]
    assert index.recording(rid(1), "box-b")["seq"] == 7
    assert index.recording(rid(9)) is None


def test_a_devices_recordings_by_seq_and_at_a_seq(index: IndexTables) -> None:
    for n in (3, 1, 2):
        index.add_recording(row("box-a", n))
    index.add_recording(row("box-a", 4, seq=2, stored_ms=1))  # a second claimant of seq 2
    assert [(r["seq"], r["recording_id"]) for r in index.device_recordings("box-a")] == \
        [(1, rid(1)), (2, rid(4)), (2, rid(2)), (3, rid(3))]
    assert [r["recording_id"] for r in index.recordings_at("box-a", 2)] == [rid(4), rid(2)]
    assert index.recordings_at("box-b", 2) == []


def test_list_filters(index: IndexTables) -> None:
    index.add_recording(row("box-a", 1, caller_number="+1 (555) 100%", caller_name=None))
    index.add_recording(row("box-a", 2, caller_name="ADA_LOVELACE", flagged=True, duration_ms=5_000))
    index.add_recording(row("box-b", 3, caller_number=None, caller_name=None, started_ms=None, ended_ms=None,
                            duration_ms=None))
    index.add_recording(row("box-b", 4, caller_name="Bob"))

    def ids(**filters: Any) -> list[int]:
        return [r["seq"] for r in index.recordings(**filters)]
    assert ids() == [3, 1, 2, 4]  # no start time first, then by start
    assert ids(device_id="box-b") == [3, 4]
    assert ids(since_ms=row("x", 2)["started_ms"]) == [2, 4]
    assert ids(until_ms=row("x", 2)["started_ms"]) == [1]
    assert ids(caller="ada_l") == [2]  # case-insensitive; _ and % are plain characters
    assert ids(caller="a_a") == [] and ids(caller="100%") == [1] and ids(caller="%") == [1]
    assert ids(flagged=True) == [2] and ids(flagged=False) == [3, 1, 4]
    assert ids(min_duration_ms=10_000) == [1, 4]
    index.mark_erased(rid(4), 9, "asked", "tomb/4", device_id="box-b")
    assert ids() == [3, 1, 2] and ids(erased=True) == [4] and ids(erased=None) == [3, 1, 2, 4]


def test_problems_holds_and_erasure(index: IndexTables) -> None:
    index.add_recording(row("box-a", 1))
    index.add_problem("box-a", rid(1), 1, "chain-break", "prev is not seq 0's hash", 20)
    index.add_problem("box-a", None, None, "refused-conflict", "seg/0", 10)
    assert [(p["kind"], p["seq"]) for p in index.problems("box-a")] == [("refused-conflict", None),
                                                                       ("chain-break", 1)]
    assert index.problems("box-b") == []
    index.set_hold(rid(1), True, "case 12", device_id="box-a")
    got = index.recording(rid(1), "box-a")
    assert (got["hold"], got["hold_reason"]) == (True, "case 12")
    index.set_hold(rid(1), False, "ignored", device_id="box-a")
    assert index.recording(rid(1), "box-a")["hold_reason"] is None
    with pytest.raises(UnknownRecording, match="linetap-central list"):
        index.set_hold(rid(1), True, None, device_id="box-b")
    index.mark_erased(rid(1), 30, "request 7", "tomb/1", device_id="box-a")
    got = index.recording(rid(1), "box-a")
    assert (got["caller_number"], got["caller_name"], got["metrics"], got["consent"], got["ended_by"]) == \
        (None,) * 5
    assert (got["erased_ms"], got["erase_reason"], got["tombstone_key"], got["seq"]) == (30, "request 7", "tomb/1", 1)


# -- receipts --

def test_receipts_chain_once_per_recording(index: IndexTables) -> None:
    key = Ed25519PrivateKey.generate()
    first = row("box-a", 1)
    index.add_recording(first, sign=signer(key, first))
    index.add_recording(first, sign=signer(key, first))  # the manifest again: the logged receipt stands
    index.add_recording(row("box-b", 2))  # stored before the store kept receipts
    assert [r["recording_id"] for r in index.unreceipted()] == [rid(2)]
    index.add_receipt("box-b", rid(2), signer(key, row("box-b", 2)))
    index.add_receipt("box-b", rid(2), signer(key, row("box-b", 2)))
    assert index.unreceipted() == []
    log = index.receipts()
    assert_one_chain(log)
    assert [r["device_id"] for r in log] == ["box-a", "box-b"]
    assert type(log[0]["data"]) is bytes and receipt.encode(receipt.Receipt(
        "box-a", rid(1), 1, first["manifest_sha256"], first["stored_ms"], receipt.GENESIS, log[0]["key_id"],
        log[0]["data"])) == receipt.encode(index_receipt(index, "box-a", 1))
    assert log[1]["stored_ms"] == row("box-b", 2)["stored_ms"]  # stamped with the indexed time
    assert [r["pos"] for r in index.receipts("box-b")] == [1]
    assert index.receipt("box-b", rid(1)) is None


def index_receipt(index: IndexTables, device: str, n: int) -> receipt.Receipt:
    from linetap.sync.central.receiptlog import as_receipt
    found = index.receipt(device, rid(n))
    assert found is not None
    return as_receipt(found)


def _append_receipts(backend: Backend, device: str, count: int, start: Any) -> None:
    """A worker process: index ``count`` recordings of ``device``, each with its receipt."""
    key = Ed25519PrivateKey.generate()
    offset = 0 if device == "box-a" else 1000
    with backend.open() as index:
        start.wait(60)
        for n in range(1, count + 1):
            recording = row(device, offset + n, seq=n)
            index.add_recording(recording, sign=signer(key, recording))


def test_two_processes_appending_at_once_keep_one_receipt_chain(backend: Backend) -> None:
    backend.open().close()  # the schema made once, before the race
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_append_receipts, args=(backend, device, 40, start), name=device)
               for device in ("box-a", "box-b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    with backend.open() as index:
        log = index.receipts()
    assert len(log) == 80
    assert_one_chain(log)
    if backend.kind == "postgres":  # lock waiters queue there; SQLite's busy handler may let one run ahead
        devices = [r["device_id"] for r in log]
        assert sum(a != b for a, b in zip(devices, devices[1:])) > 1, "the two processes did not overlap"


# -- fleet tables --

def test_fleet_status_keeps_the_newest_session(index: IndexTables) -> None:
    index.enroll("box-e", "KEY", 1)
    assert index.record_fleet([
        FleetUpdate("box-a", "status", '{"s": 1}', 10, 10, (2, 1, 0)),
        FleetUpdate("box-a", "status", '{"s": 0}', 11, 11, (1, 9, 0)),  # an older boot: dropped
        FleetUpdate("box-a", "status", '{"s": 2}', 12, None, (2, 1, 1)),  # offline ends the session
        FleetUpdate("box-a", "telemetry", '{"t": 1}', 13, 9, None),
    ]) == [True, False, True, True]
    box = index.fleet_device("box-a")
    assert (box["boot"], box["session"], box["last_seen_ms"], box["enrolled"]) == (2, 1, 10, False)
    assert box["subjects"]["status"] == {"body": {"s": 2}, "received_ms": 12}
    assert [(d["device_id"], d["enrolled"]) for d in index.fleet_devices()] == [("box-a", False), ("box-e", True)]
    assert index.fleet_device("box-z") is None
    assert index.fleet_device("box-e")["subjects"] == {}
    assert [index.next_fleet_seq("box-a", "cmd") for _ in range(2)] == [1, 2]
    assert index.next_fleet_seq("box-a", "cmd", at_least=10) == 10
    assert index.next_fleet_seq("box-a", "config") == 1


# -- schema, faults, hostile values --

def test_schema_from_empty_and_again(backend: Backend) -> None:
    assert pgschema.SCHEMA_VERSION == indexschema.SCHEMA_VERSION  # a new SQLite version needs its PostgreSQL step
    for _ in range(2):
        with backend.open() as index:
            index.enroll("box-a", "KEY", 1)
    assert schema_versions(backend) == [SCHEMA_VERSION]


def schema_versions(backend: Backend) -> list[int]:
    if backend.kind == "sqlite":
        import sqlite3
        with sqlite3.connect(backend.location) as db:
            return [db.execute("PRAGMA user_version").fetchone()[0]]
    with psycopg.connect(backend.location) as db:
        return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]


def test_a_newer_schema_is_refused(backend: Backend) -> None:
    backend.open().close()
    if backend.kind == "sqlite":
        import sqlite3
        with sqlite3.connect(backend.location) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        with psycopg.connect(backend.location, autocommit=True) as db:
            db.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SyncError, match="newer than this program"):
        backend.open()


def test_processes_migrating_at_once_migrate_once(pg_url: str) -> None:
    opened: list[PgIndex] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait(10)
        opened.append(PgIndex(pg_url, pool_size=1))
    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for index in opened:
        index.close()
    assert len(opened) == 4
    assert schema_versions(Backend("postgres", pg_url)) == [SCHEMA_VERSION]


def test_an_unmigrated_database_names_the_command(pg_url: str) -> None:
    with pytest.raises(SyncError, match="linetap-central migrate"):
        PgIndex(pg_url, migrate=False)
    PgIndex(pg_url).close()
    PgIndex(pg_url, migrate=False).close()


def test_a_closed_index_is_unavailable(backend: Backend) -> None:
    index = backend.open()
    index.close()
    index.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        index.device_key("box-a")


def test_a_vanished_server_is_unavailable_and_then_back(postgres: LocalPostgres, pg_url: str) -> None:
    with PgIndex(pg_url, connect_timeout_s=1) as index:
        index.enroll("box-a", "KEY", 1)
        postgres.stop()
        try:
            with pytest.raises(StoreUnavailable, match="index postgresql://linetap@127.0.0.1"):
                index.device_key("box-a")
            with pytest.raises(StoreUnavailable, match="cannot be opened"):
                PgIndex(pg_url, connect_timeout_s=1)
        finally:
            postgres.start()
        # The same pool reconnects (its back-off is bounded by reconnect_timeout_s): as ingest would,
        # ask again until it answers; each try waits at most the pool's timeout.
        for _ in range(30):
            try:
                assert index.device_key("box-a") == "KEY"
                break
            except StoreUnavailable:
                continue
        else:
            pytest.fail("the index did not come back within 30 tries after the server did")


def test_a_server_restarted_under_a_transaction_loses_nothing_acknowledged(postgres: LocalPostgres,
                                                                           pg_url: str) -> None:
    key = Ed25519PrivateKey.generate()
    with PgIndex(pg_url, connect_timeout_s=2) as index:
        index.add_recording(row("box-a", 1), sign=signer(key, row("box-a", 1)))

        def sign_then_restart(prev: str, stored_ms: int) -> receipt.Receipt:
            postgres.restart()  # the server goes while the transaction holds the write lock
            return signer(key, row("box-a", 2))(prev, stored_ms)
        with pytest.raises(StoreUnavailable):
            index.add_recording(row("box-a", 2), sign=sign_then_restart)
        assert index.recording(rid(2), "box-a") is None  # rolled back whole: no row without its receipt
        assert index.add_recording(row("box-a", 2), sign=signer(key, row("box-a", 2))) is True
        assert_one_chain(index.receipts())


def test_a_pool_with_no_free_connection_is_unavailable(pg_url: str) -> None:
    with PgIndex(pg_url, pool_size=1, connect_timeout_s=0.3) as index:
        with index._sql():  # the only connection, held
            with pytest.raises(StoreUnavailable, match="no free connection"):
                index.device_key("box-a")
        assert index.device_key("box-a") is None


def test_integers_beyond_64_bits_are_refused(index: IndexTables) -> None:
    with pytest.raises(OverflowError):
        index.recordings_at("box-a", 2 ** 64)
    with pytest.raises(OverflowError):
        index.add_recording(row("box-a", 1, bytes=-(2 ** 63) - 1))
    assert index.recordings() == []
    index.add_recording(row("box-a", 1, seq=2 ** 63 - 1, bytes=-(2 ** 63)))  # the edges fit
    assert index.recording(rid(1), "box-a")["seq"] == 2 ** 63 - 1


def test_a_nul_character_in_text(backend: Backend, index: IndexTables) -> None:
    hostile = row("box-a", 1, ended_by="hang\x00up", caller_name="A\x00da")
    if backend.kind == "sqlite":
        index.add_recording(hostile)  # SQLite keeps it as sent
        assert index.recording(rid(1), "box-a")["ended_by"] == "hang\x00up"
        return
    with pytest.raises(IndexValueError, match="NUL character"):
        index.add_recording(hostile)
    assert index.recordings() == []  # nothing half-written
    index.add_recording(row("box-a", 1, consent=[{"kind": "x\x00"}]))  # in JSON it is an escape: kept
    assert index.recording(rid(1), "box-a")["consent"] == [{"kind": "x\x00"}]


# -- trusted timestamps --

def test_timestamps_and_the_heads_they_commit_to(index: IndexTables) -> None:
    assert (index.receipt_head(), index.access_head(), index.last_timestamp(), index.timestamps(),
            index.chain_heads()) == (None, None, None, [], [])
    key = Ed25519PrivateKey.generate()
    for device, n, seq in (("box-b", 1, 1), ("box-a", 2, 1), ("box-a", 3, 2), ("box-a", 4, 2)):
        recording = row(device, n, seq=seq)
        index.add_recording(recording, sign=signer(key, recording))
    assert [(h["device_id"], h["seq"], h["manifest_sha256"]) for h in index.chain_heads()] == \
        [("box-a", 2, f"{3:064x}"), ("box-a", 2, f"{4:064x}"), ("box-b", 1, f"{1:064x}")]
    head = index.receipt_head()
    assert head == {"pos": 3, "sha256": index.receipts()[-1]["sha256"]}
    assert index.receipt_at(1)["recording_id"] == rid(2) and index.receipt_at(9) is None
    assert index.add_timestamp(10, b"\x00commit", "c" * 64, "http://tsa", b"\x30token", 9, b"pem 1") == 0
    assert index.add_timestamp(20, b"again", "d" * 64, "http://tsa", b"\x30t2", 19, b"pem 2") == 1
    stamps = index.timestamps()
    assert [(s["pos"], s["commitment"], s["token"], s["tsa_cert"]) for s in stamps] == \
        [(0, b"\x00commit", b"\x30token", b"pem 1"), (1, b"again", b"\x30t2", b"pem 2")]
    assert type(stamps[0]["commitment"]) is bytes and index.last_timestamp() == stamps[1]


# -- the access log --

def test_the_access_log_is_one_chain_under_concurrent_appends(index: IndexTables) -> None:
    from linetap.sync.central.accesslog import Access, verify_log
    start = threading.Barrier(6)

    def log(n: int) -> None:
        start.wait(10)
        for i in range(5):
            index.log_access(Access("ops", "export", "cli", "box-a" if n % 2 else "box-b", rid(i), f"n{n}"), i)
    threads = [threading.Thread(target=log, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    entries = index.access_log()
    assert len(entries) == 30 and verify_log(entries) is None
    assert [e["pos"] for e in index.access_log("box-a", rid(2))] == \
        [e["pos"] for e in entries if e["device_id"] == "box-a" and e["recording_id"] == rid(2)]
    assert len(index.access_log(recording_id=rid(2))) == 6
    assert index.access_head() == {"pos": 29, "sha256": entries[-1]["sha256"]}  # what a stamp commits to
    assert index.access_at(3) == {"pos": 3, "sha256": entries[3]["sha256"]} and index.access_at(30) is None
