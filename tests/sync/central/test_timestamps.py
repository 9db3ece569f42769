"""Trusted timestamps at the central store: a real local TSA (openssl ts), verify, openssl ts -verify, alarms."""

from __future__ import annotations

import json
import logging
import random
import shutil
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_boxes import Box, add_config, central_index, enrolled
from local_tsa import LocalTsa, closed_url  # the shared TSA fixtures are in conftest.py
from linetap.firmware.backoff import Backoff
from linetap.firmware.errors import ConfigError
from linetap.sync.central import timestamps as ts
from linetap.sync.central.cli import main
from linetap.sync.central.config import TimestampsSection, load_config
from linetap.sync.central.index import INDEX_FILE
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.tsa import (STATUS_FILE, Stamper, StampingThread, TsaClient, TsaError, start_stamping,
                                     trust_files)


@pytest.fixture
def tsa(local_tsa: LocalTsa) -> Iterator[LocalTsa]:
    """The shared TSA, answering properly again after each test."""
    yield local_tsa
    local_tsa.mode = "ok"


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Iterator[Box]:
    made = enrolled(tmp_path, central, "desk-1")
    yield made
    made.spool.close()


def configure(central: Path, tsa_files: Path, url: str | None) -> TimestampsSection:
    """The TSA's certificates under the data dir and a central.toml naming them (no TSA with url None)."""
    (central / "tsa").mkdir(exist_ok=True)
    for name in ("ca.pem", "tsa.pem"):
        shutil.copy(tsa_files / name, central / "tsa" / name)
    text = "[timestamps]\n" if url is None else (f'[timestamps]\ntsa_url = "{url}"\nca_file = "tsa/ca.pem"\n'
                                   'tsa_cert_file = "tsa/tsa.pem"\n')
    add_config(central, text)
    return load_config(None, central).timestamps


def store_calls(central: Path, box: Box, clock, n: int) -> list[str]:
    """``n`` calls recorded on the box and stored through the ingest core."""
    rids = []
    with Ingest(central, clock=clock) as core:
        for _ in range(n):
            rid = box.call(1.0)
            acks = [ack for part in box.parts(rid) for ack in core.receive(part)]
            assert acks[-1].status == "stored"
            rids.append(rid)
    return rids


def cli(central: Path, capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--data-dir", str(central), *argv])
    return code, capsys.readouterr().out


def verify_json(central: Path, capsys) -> tuple[int, dict]:
    code, out = cli(central, capsys, "verify", "--all", "--json")
    return code, json.loads(out)


def kinds(report: dict) -> set[str]:
    return {p["kind"] for p in report["timestamps"]["problems"]}


# -- the commitment --

def test_the_commitment_is_canonical_and_read_back_checked() -> None:
    heads = (ts.DeviceHead("desk-2", 4, "b" * 64), ts.DeviceHead("desk-1", 9, "a" * 64))
    commitment = ts.Commitment(heads, ts.LogHead(12, "c" * 64), ts.LogHead(3, "d" * 64))
    data = commitment.encode()
    assert data.startswith(b'{"access_log":{"pos":3,"sha256":"' + b"d" * 64 + b'"},"devices":[{"device_id":'
                           b'"desk-1","manifest_sha256":"' + b"a" * 64 + b'","seq":9}')
    assert b" " not in data and ts.decode_commitment(data).encode() == data
    assert ts.decode_commitment(ts.Commitment((), None).encode()).empty
    bad = {b"[]": "not a linetap-timestamp-commitment/1", data.replace(b":9", b":-9"): "whole number",
           data.replace(b'"' + b"a" * 64, b'"' + b"A" * 64): "64 lower-case hex",
           data.replace(b'"pos":12,', b'"pos":12,"x":1,'): "exactly the keys",
           json.dumps(json.loads(data)).encode(): "canonical form"}
    for text, why in bad.items():
        with pytest.raises(ts.TimestampError, match=why):
            ts.decode_commitment(text)
    with pytest.raises(ts.TimestampError, match="nests deeper than 4"):
        ts.decode_commitment(b"[" * 50 + b"]" * 50)


def test_the_schedule_waits_an_interval_and_backs_off_after_a_failure() -> None:
    schedule = ts.Schedule(3600, 100.0, backoff=Backoff(initial=30, maximum=600, jitter=0), rng=random.Random(1))
    assert schedule.due(100.0)  # at start: what arrived while the store was down
    schedule.done(100.0)
    assert not schedule.due(3699.0) and schedule.due(3700.0)
    assert [schedule.failed(3700.0) for _ in range(6)] == [30, 60, 120, 240, 480, 600]
    assert schedule.failures == 6 and schedule.due(4300.0) and not schedule.due(4299.0)
    schedule.done(4300.0)
    assert schedule.failures == 0 and schedule.failed(4300.0) == 30  # the back-off starts again


def test_the_section_names_each_mistake_with_its_fix(tmp_path: Path) -> None:
    for text, why in (('interval_s = 5', "interval_s = 5: out of range; use a value >= 60"),
                      ('tsa_url = "ftp://tsa"\nca_file = "a"\ntsa_cert_file = "b"', "tsa_url.*http:// or https://")):
        (tmp_path / "central.toml").write_text(f"[timestamps]\n{text}\n")
        with pytest.raises(ConfigError, match=why):
            load_config(None, tmp_path)
    (tmp_path / "central.toml").write_text('[timestamps]\ntsa_url = "https://tsa.example"\n')
    with pytest.raises(ConfigError, match="ca_file.*tsa_url is set"):
        load_config(None, tmp_path)


# -- stamping and verify --

def test_a_stamp_verifies_here_and_with_openssl_ts(box: Box, central: Path, clock, tsa, tsa_files: Path,
                                                   tmp_path: Path, capsys) -> None:
    configure(central, tsa_files, tsa.url)
    store_calls(central, box, clock, 2)
    code, out = cli(central, capsys, "timestamp", "--json")
    stamp = json.loads(out)
    assert code == 0 and stamp["pos"] == 0 and stamp["tsa"] == tsa.url
    assert stamp["devices"] == [{"device_id": "desk-1", "seq": 2, "manifest_sha256": stamp["devices"][0]
                                 ["manifest_sha256"]}] and stamp["receipts"]["pos"] == 1
    code, report = verify_json(central, capsys)
    assert code == 0 and report["ok"], report
    assert report["timestamps"]["stamps"] == 1 and report["timestamps"]["not_yet_timestamped"] == []
    with central_index(central) as index:
        row = index.last_timestamp()
    (tmp_path / "commitment.json").write_bytes(row["commitment"])
    (tmp_path / "token.tsr").write_bytes(row["token"])
    checked = subprocess.run(["openssl", "ts", "-verify", "-data", tmp_path / "commitment.json", "-in",
                              tmp_path / "token.tsr", "-CAfile", tsa_files / "ca.pem", "-untrusted",
                              tsa_files / "tsa.pem"], capture_output=True, text=True, timeout=60)
    assert "Verification: OK" in checked.stdout, checked.stderr
    (tmp_path / "commitment.json").write_bytes(row["commitment"].replace(b'"seq":2', b'"seq":3'))
    forged = subprocess.run(["openssl", "ts", "-verify", "-data", tmp_path / "commitment.json", "-in",
                             tmp_path / "token.tsr", "-CAfile", tsa_files / "ca.pem", "-untrusted",
                             tsa_files / "tsa.pem"], capture_output=True, text=True, timeout=60)
    assert "Verification: OK" not in forged.stdout
    # A newer recording is information, not a failure.
    store_calls(central, box, clock, 1)
    code, out = cli(central, capsys, "verify", "--all")
    assert code == 0 and "not yet timestamped: desk-1 seq 3 (last stamped seq 2)" in out


TAMPERING = {
    "commitment": ("UPDATE timestamps SET commitment = CAST(REPLACE(CAST(commitment AS TEXT), '\"seq\":2', "
                   "'\"seq\":1') AS BLOB)", "timestamp-mismatch"),
    "digest": ("UPDATE timestamps SET digest_sha256 = '" + "0" * 64 + "'", "timestamp-mismatch"),
    "token": ("UPDATE timestamps SET token = CAST(REPLACE(CAST(token AS TEXT), 'linetap', 'linetaq') AS BLOB)",
              "timestamp-invalid"),
    "head": ("UPDATE recordings SET manifest_sha256 = '" + "1" * 64 + "' WHERE seq = 2", "timestamp-head-mismatch"),
    "receipt": ("DELETE FROM receipts WHERE pos = 1", "timestamp-receipt-mismatch"),
}


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_tampering_is_caught_by_name(what: str, box: Box, central: Path, clock, tsa, tsa_files: Path,
                                     capsys) -> None:
    section = configure(central, tsa_files, tsa.url)
    store_calls(central, box, clock, 2)
    with central_index(central) as index:
        Stamper(central, section, index, clock=clock).stamp()
    sql, kind = TAMPERING[what]
    with sqlite3.connect(central / INDEX_FILE) as db:
        assert db.execute(sql).rowcount == 1
    code, report = verify_json(central, capsys)
    assert code == 1 and not report["ok"] and kind in kinds(report), report["timestamps"]


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_a_token_over_another_commitment_is_a_mismatch(box: Box, central: Path, clock, tsa, tsa_files: Path,
                                                       capsys) -> None:
    section = configure(central, tsa_files, tsa.url)
    store_calls(central, box, clock, 1)
    with central_index(central) as index:
        Stamper(central, section, index, clock=clock).stamp()
        store_calls(central, box, clock, 1)
        Stamper(central, section, index, clock=clock).stamp()
    with sqlite3.connect(central / INDEX_FILE) as db:
        db.execute("UPDATE timestamps SET token = (SELECT token FROM timestamps WHERE pos = 0) WHERE pos = 1")
    code, report = verify_json(central, capsys)
    assert code == 1 and kinds(report) == {"timestamp-mismatch"}
    assert [p["pos"] for p in report["timestamps"]["problems"]] == [1]


def test_without_a_tsa_verify_says_so(box: Box, central: Path, clock, tsa_files: Path, capsys) -> None:
    configure(central, tsa_files, None)
    store_calls(central, box, clock, 1)
    code, out = cli(central, capsys, "verify", "--all")
    assert code == 0 and "no TSA configured" in out and "not yet timestamped: desk-1 seq 1" in out
    code, report = verify_json(central, capsys)
    assert code == 0 and report["timestamps"]["configured"] is False and report["timestamps"]["tsa"] is None
    assert main(["--data-dir", str(central), "timestamp"]) != 0
    assert "no time-stamping authority is configured: set [timestamps] tsa_url" in capsys.readouterr().err


def test_a_tsa_that_is_down_or_answers_garbage_raises_an_alarm_and_stops_nothing(
        box: Box, central: Path, clock, tsa, tsa_files: Path, capsys, caplog) -> None:
    section = configure(central, tsa_files, tsa.url)
    store_calls(central, box, clock, 1)
    with central_index(central) as index:
        for mode, client, why in (("ok", TsaClient(closed_url()), "cannot be reached"),
                                  ("garbage", None, "not a timestamp response"),
                                  ("error", None, "HTTP 500"), ("huge", None, "more than 65536 bytes")):
            tsa.mode = mode
            error = ts.TimestampError if mode == "garbage" else TsaError
            with caplog.at_level(logging.ERROR, logger="linetap.sync.central.tsa"), pytest.raises(error, match=why):
                Stamper(central, section, index, clock=clock, client=client).stamp()
            assert "alarm=timestamp-failed" in caplog.text and why in caplog.text
            caplog.clear()
            store_calls(central, box, clock, 1)  # ingest goes on
        assert index.timestamps() == []
        status = json.loads((central / STATUS_FILE).read_text())
        assert status["tsa"] == tsa.url and "65536" in status["reason"]
        code, report = verify_json(central, capsys)
        assert code == 0 and "65536" in report["timestamps"]["last_failure"]["reason"]
        code, out = cli(central, capsys, "verify", "--all")
        assert "last failure (alarm timestamp-failed" in out
        tsa.mode = "ok"
        row = Stamper(central, section, index, clock=clock).stamp()
    assert row["pos"] == 0 and not (central / STATUS_FILE).exists()
    code, report = verify_json(central, capsys)
    assert code == 0 and report["timestamps"]["last_failure"] is None
    assert json.loads(row["commitment"])["devices"][0]["seq"] == 5


def test_serve_stamps_on_schedule_only_when_something_new_arrived(box: Box, central: Path, clock, tsa,
                                                                 tsa_files: Path) -> None:
    section = configure(central, tsa_files, tsa.url)
    store_calls(central, box, clock, 1)
    with central_index(central) as index:
        stamper = Stamper(central, section, index, clock=clock, client=TsaClient(closed_url()))
        with StampingThread(stamper) as thread:
            assert thread.wait_passes(1, 30)  # due at start; the TSA is down
            assert index.timestamps() == [] and thread.schedule.failures == 1
            stamper.client = TsaClient(tsa.url)
            clock.advance(thread.schedule.next_at - clock.monotonic())
            thread.poke()
            assert thread.wait_passes(2, 30)
            assert len(index.timestamps()) == 1 and thread.schedule.failures == 0
            clock.advance(section.interval_s)  # nothing new: no stamp
            thread.poke()
            assert thread.wait_passes(3, 30) and len(index.timestamps()) == 1
            store_calls(central, box, clock, 1)
            thread.poke()  # new, but not due yet
            assert thread.wait_passes(4, 30) and len(index.timestamps()) == 1
            clock.advance(section.interval_s)
            thread.poke()
            assert thread.wait_passes(5, 30) and len(index.timestamps()) == 2


def test_serve_starts_stamping_only_with_a_tsa(box: Box, central: Path, clock, tsa, tsa_files: Path,
                                               caplog) -> None:
    with caplog.at_level(logging.WARNING), start_stamping(central, configure(central, tsa_files, None)) as none:
        assert none is None and "no time-stamping authority configured" in caplog.text
    store_calls(central, box, clock, 1)
    with start_stamping(central, configure(central, tsa_files, tsa.url), clock=clock,
                        index_config=load_config(None, central).index) as thread:
        assert thread.wait_passes(1, 30)
    with central_index(central) as index:
        assert len(index.timestamps()) == 1
    (central / "tsa" / "ca.pem").unlink()
    with pytest.raises(ConfigError, match="ca_file .*ca.pem cannot be read"):
        with start_stamping(central, load_config(None, central).timestamps):
            pass


def test_covering_stamp_finds_the_first_stamp_whose_head_reaches_a_recording(
        box: Box, central: Path, clock, tsa, tsa_files: Path, capsys) -> None:
    section = configure(central, tsa_files, tsa.url)
    rids = store_calls(central, box, clock, 3)
    with central_index(central) as index:
        Stamper(central, section, index, clock=clock).stamp()
        rids += store_calls(central, box, clock, 2)
        Stamper(central, section, index, clock=clock).stamp()
        rids += store_calls(central, box, clock, 1)
        first = ts.covering_stamp(index, "desk-1", 1)
        assert first.stamp["pos"] == 0 and first.head.seq == 3
        assert [r["recording_id"] for r in first.chain] == rids[:3]
        assert all(a["manifest_sha256"] == b["prev"] for a, b in zip(first.chain, first.chain[1:]))
        later = ts.covering_stamp(index, "desk-1", 4)
        assert later.stamp["pos"] == 1 and [r["recording_id"] for r in later.chain] == rids[3:5]
        assert ts.covering_stamp(index, "desk-1", 6) is None
        assert ts.covering_stamp(index, "desk-9", 1) is None
    code, out = cli(central, capsys, "verify", rids[3])
    assert code == 0 and f"{rids[3]} (desk-1 seq 4): covered by stamp 1 at TSA time" in out and "through seq 5" in out
    code, out = cli(central, capsys, "verify", rids[5], "--json")
    assert code == 0 and json.loads(out)["timestamps"]["recording"]["stamp"] is None
    files = trust_files(central, section)
    assert files["ca_file"].read_bytes() == (tsa_files / "ca.pem").read_bytes()


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_the_newest_access_log_entries_cut_off_after_a_stamp_are_caught(box: Box, central: Path, clock, tsa,
                                                                          tsa_files: Path, tmp_path: Path,
                                                                          capsys) -> None:
    section = configure(central, tsa_files, tsa.url)
    rid = store_calls(central, box, clock, 1)[0]
    for n in range(2):  # two exports: two access-log entries, the stamp names the second
        assert cli(central, capsys, "export", rid, "-o", str(tmp_path / f"call-{n}.wav"))[0] == 0
    with central_index(central) as index:
        Stamper(central, section, index, clock=clock).stamp()
        assert ts.decode_commitment(index.last_timestamp()["commitment"]).access_log.pos == 1
    with sqlite3.connect(central / INDEX_FILE) as db:  # the newest entry removed: its own chain still holds
        db.execute("DELETE FROM access_log WHERE pos = 1")
    assert cli(central, capsys, "audit", "verify")[0] == 0
    code, report = verify_json(central, capsys)
    assert code == 1 and kinds(report) == {"timestamp-access-log-mismatch"}


def renewed_tsa_certificate(tsa_files: Path, folder: Path) -> bytes:
    """A new TSA key and certificate from the same CA, as a TSA's yearly renewal gives."""
    folder.mkdir()
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], cwd=folder, check=True,  # noqa: E731
                                       capture_output=True, timeout=60)
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "tsa.key")
    run("req", "-new", "-key", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=linetap Test TSA 2")
    run("x509", "-req", "-in", "tsa.csr", "-CA", tsa_files / "ca.pem", "-CAkey", tsa_files / "ca.key",
        "-CAcreateserial", "-CAserial", folder / "ca.srl", "-out", "tsa.pem", "-days", "3650",
        "-extfile", tsa_files / "tsa.ext")
    return (folder / "tsa.pem").read_bytes()


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_stamps_keep_verifying_after_the_tsa_renews_its_certificate(box: Box, central: Path, clock, tsa,
                                                                    tsa_files: Path, tmp_path: Path,
                                                                    capsys) -> None:
    section = configure(central, tsa_files, tsa.url)
    rid = store_calls(central, box, clock, 1)[0]
    with central_index(central) as index:
        Stamper(central, section, index, clock=clock).stamp()
    old = (central / "tsa" / "tsa.pem").read_bytes()
    (central / "tsa" / "tsa.pem").write_bytes(renewed_tsa_certificate(tsa_files, tmp_path / "renewed"))
    code, report = verify_json(central, capsys)  # the token is checked against the certificate kept with it
    assert code == 0 and report["ok"] and kinds(report) == set(), report["timestamps"]
    bundle = tmp_path / "call.zip"
    assert cli(central, capsys, "evidence", rid, "-o", str(bundle))[0] == 0
    with zipfile.ZipFile(bundle) as z:
        assert z.read("timestamp/tsa.pem") == old
    assert cli(central, capsys, "evidence", "verify", str(bundle))[0] == 0
    with sqlite3.connect(central / INDEX_FILE) as db:  # a kept certificate from elsewhere does not verify it
        db.execute("UPDATE timestamps SET tsa_cert = ?", ((central / "tsa" / "tsa.pem").read_bytes(),))
    code, report = verify_json(central, capsys)
    assert code == 1 and kinds(report) == {"timestamp-invalid"}
