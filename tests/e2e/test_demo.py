"""`linetap demo` is the main job a newcomer runs: it must tell the truth about each call."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import soundfile

from linetap.firmware.spool.layout import RECEIPT_FILE


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_demo_records_syncs_verifies_and_exports_and_runs_again(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = _run("linetap.firmware.cli", "demo", "--data-dir", str(work))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    out = result.stdout
    calls = re.findall(r"^call (\S+): [\d.]+ s, (recorded|NOT recorded)", out, re.M)
    assert [state for _, state in calls] == ["recorded", "recorded", "NOT recorded"]
    assert out.count("DTMF masked until") >= 4  # the card digits of call 1, the opt-out key of call 3
    assert "pause-start" in out and "opt-out  by=caller" in out
    assert out.count(", synced, ") == 3
    assert re.search(r"verify --all: device \S+: 3 recordings, chain intact", out)

    # The central store, asked through its own command line, holds each call once, byte-identical.
    env = {**os.environ, "LINETAP_CENTRAL_DATA_DIR": str(work / "central")}
    listed = _run("linetap.sync.central.cli", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["recording_id"] for r in rows) == sorted(c for c, _ in calls)
    verified = _run("linetap.sync.central.cli", "verify", "--all", "--json", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with sqlite3.connect(work / "central" / "index.db") as db:
        receipts = dict(db.execute("SELECT recording_id, data FROM receipts").fetchall())
    db.close()
    for call_id, _ in calls:
        spool = work / "box" / "spool" / call_id
        # The box keeps the store's signed receipt beside the manifest, byte for byte as the store logged it.
        assert (spool / RECEIPT_FILE).read_bytes() == receipts[call_id]
        box_files = sorted(p.name for p in spool.iterdir() if p.name != RECEIPT_FILE)
        [central_folder] = (work / "central" / "objects").rglob(call_id)
        for name in box_files:
            assert (central_folder / name).read_bytes() == (spool / name).read_bytes()

    audio, rate = soundfile.read(work / "exports" / f"{calls[0][0]}.wav")
    assert audio.shape[1] == 2 and 59 < len(audio) / rate < 63
    # Nothing under the box's folder is plaintext audio.
    for path in (work / "box").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:64]
            assert not head.startswith((b"OggS", b"RIFF")), path

    # It ends by saying how to open the calls in the console, with an admin password made for this run.
    password = _console_password(out, work / "central")
    assert _password_works(work / "central", password)

    again = _run("linetap.firmware.cli", "demo", "--data-dir", str(work))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert calls[0][0] not in again.stdout  # a fresh run, not the old calls again
    new_password = _console_password(again.stdout, work / "central")
    assert new_password != password and not _password_works(work / "central", password)


def _console_password(out: str, central: Path) -> str:
    found = re.search(r"QA console:\n  linetap-central --data-dir (\S+) web\n  then http://127\.0\.0\.1:8080/ and log "
                      r"in as admin with the one-time password (\S+)\n", out)
    assert found and found[1] == str(central), out[-1500:]
    return found[2]


def _password_works(central: Path, password: str) -> bool:
    from linetap.sync.central.tools import StoreTools
    from linetap.sync.central.web.passwords import verify_password

    with StoreTools(central) as tools:
        user = tools.index.user("admin")
    assert user["role"] == "admin" and password not in user["password_hash"]  # only its argon2 hash is kept
    return verify_password(user["password_hash"], password)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = _run("linetap.firmware.cli", "demo", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "was not made by the demo" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
