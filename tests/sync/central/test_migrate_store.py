"""migrate-store: an embedded store copied into real PostgreSQL + SeaweedFS, checked, resumable after SIGKILL.

The source is one store made once for the module (calls by a real box through
ingest, a multi-part object, a trusted timestamp, a legal hold, an erasure
with its tombstone, access log entries, a problem row); each test copies its
folder so none sees another's changes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from central_boxes import BIG_CODEC, enrolled
from local_tsa import ingest_stamped, stamping_store, timestamps_config
from linetap.sync.central.cli import main
from linetap.sync.central.config import load_config
from linetap.sync.central.copytables import TABLES
from linetap.sync.central.index import SqliteIndex
from linetap.sync.central.migratestore import MARKER_KEY
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import FileStore
from linetap.sync.central.stored import Stored
from linetap.sync.central.verify import verify, verify_timestamps

CALLS = 12


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, local_tsa, tsa_files: Path) -> Path:
    root = tmp_path_factory.mktemp("embedded")
    central = stamping_store(root / "central", tsa_files, local_tsa.url)
    box = enrolled(root, central, "desk-1")
    rids = [box.call(2.5) for _ in range(CALLS)] + [box.call(22.0, codec=BIG_CODEC)]
    box.spool.close()
    ingest_stamped(central, box, rids, stamp_after=3)
    with SqliteIndex(central / "index.db") as index:
        index.add_problem("desk-1", rids[0], 1, "chain-break", "kept from an earlier verify", 7)
    assert cli(central, "hold", "set", rids[1], "--reason", "dispute") == 0
    assert cli(central, "erase", rids[2], "--reason", "subject request") == 0
    return central


@pytest.fixture
def central(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "central"))


@pytest.fixture
def target(central: Path, pg_url: str, seaweed, s3_bucket: str, local_tsa, monkeypatch) -> Path:
    for name, value in seaweed.environ().items():
        monkeypatch.setenv(name, value)
    path = central / "target.toml"
    path.write_text(f'[index]\nurl = "{pg_url}"\npool_size = 2\n\n[store]\nurl = "s3://{s3_bucket}/site"\n'
                    f'endpoint_url = "{seaweed.endpoint}"\nmax_attempts = 1\n\n' + timestamps_config(local_tsa.url))
    return path


def opened(central: Path, config: Path) -> tuple[PgIndex, S3Store]:
    loaded = load_config(config, central)
    return PgIndex(loaded.index.url), S3Store.from_config(loaded.store, central)


def assert_copied(central: Path, config: Path) -> None:
    """Every table equal row for row (staging aside), every object byte-identical, verify clean on the target."""
    pg, s3 = opened(central, config)
    with SqliteIndex(central / "index.db") as source, pg:
        for t in TABLES:
            if t.name != "staged":
                assert pg.table_page(t.name, None, 10_000) == source.table_page(t.name, None, 10_000), t.name
        files = FileStore(central / "objects")
        objects = [o for o in source.table_page("objects", None, 10_000) if o["stored_ms"] is not None]
        tombstones = [r["tombstone_key"] for r in source.table_page("recordings", None, 1000) if r["tombstone_key"]]
        assert len(objects) > 2 * CALLS and len(tombstones) == 1
        for key in [o["object_key"] for o in objects] + tombstones:
            assert s3.get(key) == files.get(key), key
        stored = Stored(central, store=s3, index=pg)
        reports = verify(stored)
        assert reports and all(r.ok for r in reports), [r.problems for r in reports]
        assert verify_timestamps(stored, load_config(config, central).timestamps).ok
        assert sum(r.recordings for r in reports) == CALLS + 1 and any(r.erased for r in reports)


def migrate(central: Path, config: Path, capsys, *more: str) -> tuple[int, dict, list[dict]]:
    code = cli(central, "migrate-store", "--to", str(config), "--json", *more)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, [json.loads(line) for line in err.splitlines()
                                                        if line.startswith("{")]


def test_copies_every_table_and_object_checked_and_a_second_run_copies_nothing(central: Path, target: Path,
                                                                              capsys) -> None:
    code, result, progress = migrate(central, target, capsys)
    assert code == 0 and not result["resumed"]
    assert result["tables"]["receipts"]["copied"] == CALLS + 1 == result["tables"]["recordings"]["copied"]
    assert result["tables"]["access_log"]["copied"] == 2 and result["tables"]["timestamps"]["copied"] == 1
    assert result["tables"]["problems"]["copied"] == 1 and result["chains"]["new_in_target"] == 0
    assert progress[-1]["done"] and progress[-1]["objects"] == progress[-1]["total_objects"] == result["objects"]
    assert progress[-1]["bytes"] == result["bytes"] > 160_000 and "left_s" in progress[0]
    assert_copied(central, target)

    code, again, progress = migrate(central, target, capsys)
    assert code == 0 and again["resumed"]
    assert all(t["copied"] == 0 for t in again["tables"].values())
    assert progress[-1]["objects_per_s"] == 0  # every object found there: nothing moved
    assert_copied(central, target)


def test_sigkill_mid_copy_then_a_second_run_finishes_with_nothing_twice(central: Path, target: Path,
                                                                       seaweed, capsys) -> None:
    command = [sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(central), "migrate-store",
               "--to", str(target), "--jobs", "1", "--batch", "4", "--progress-every", "0", "--json"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                          env=os.environ | seaweed.environ()) as copy:
        assert copy.stderr is not None
        for line in copy.stderr:  # a line after every object: killed with some pages of rows in
            if line.startswith("{") and json.loads(line)["objects"] >= 10:
                copy.send_signal(signal.SIGKILL)
                break
        assert copy.wait(timeout=30) == -signal.SIGKILL
    pg, s3 = opened(central, target)
    with SqliteIndex(central / "index.db") as source, pg:
        assert 0 < pg.count_rows("objects") < source.count_rows("objects")  # killed mid-copy
        assert pg.count_rows("recordings") == 0
    code, result, _ = migrate(central, target, capsys)
    assert code == 0 and result["resumed"]
    assert_copied(central, target)


def test_a_target_holding_other_data_is_refused_before_anything_is_written(central: Path, target: Path,
                                                                          capsys) -> None:
    pg, s3 = opened(central, target)
    with pg:
        pg.enroll("someone-else", "key", 1)
    assert cli(central, "migrate-store", "--to", str(target)) != 0
    assert "already holds data (tables devices)" in capsys.readouterr().err
    with pytest.raises(Exception):
        s3.get(MARKER_KEY)


def test_a_copy_of_another_store_and_other_bytes_under_a_key_are_refused(central: Path, target: Path,
                                                                        capsys) -> None:
    pg, s3 = opened(central, target)
    pg.close()
    s3.put(MARKER_KEY, b'{"source_store_key": "0123456789abcdef"}')
    assert cli(central, "migrate-store", "--to", str(target)) != 0
    assert "a copy of another store (store key 0123456789abcdef" in capsys.readouterr().err

    s3.erase(MARKER_KEY)
    with SqliteIndex(central / "index.db") as source:
        key = source.table_page("objects", None, 1)[0]["object_key"]
    s3.put(key, b"not this store's bytes")
    assert cli(central, "migrate-store", "--to", str(target)) != 0
    assert f"the target store holds other bytes under {key}" in capsys.readouterr().err
    assert s3.get(key) == b"not this store's bytes"


def test_a_damaged_source_object_stops_the_copy_naming_it(central: Path, target: Path, capsys) -> None:
    with SqliteIndex(central / "index.db") as source:
        key = [o for o in source.table_page("objects", None, 100) if o["stored_ms"]][5]["object_key"]
    path = central / "objects" / key
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    assert cli(central, "migrate-store", "--to", str(target)) != 0
    err = capsys.readouterr().err
    assert f"object {key} in the source does not match its index row" in err and "verify" in err


def test_without_an_index_url_the_command_says_what_to_add(central: Path, capsys) -> None:
    (central / "nowhere.toml").write_text('[store]\nurl = "s3://bucket"\n')
    assert cli(central, "migrate-store", "--to", str(central / "nowhere.toml")) != 0
    assert "names no [index] url" in capsys.readouterr().err


def test_with_object_lock_each_recording_is_locked_and_a_held_one_held_as_ingest_would(central: Path, target: Path,
                                                                                      capsys) -> None:
    text = target.read_text().replace("[store]\n", '[store]\nobject_lock = "governance"\n')
    target.write_text(text + "\n[retention]\ndefault_days = 3650\n")
    code, result, _ = migrate(central, target, capsys)
    assert code == 0
    _, s3 = opened(central, target)
    with SqliteIndex(central / "index.db") as source:
        rows = source.table_page("recordings", None, 100)
        for row in rows:
            keys = [o["object_key"] for o in source.objects(row["device_id"], row["recording_id"])]
            if row["erased_ms"] is not None:
                assert not keys and s3.retained(row["tombstone_key"]) is None
                continue
            assert keys
            for key in keys:
                why = s3.retained(key)
                assert why is not None and why.mode == "GOVERNANCE" and why.legal_hold == bool(row["hold"]), key
    assert any(r["hold"] for r in rows)
    assert_copied(central, target)
