"""The operator's tools through the real CLI: keys, enroll, list, export, verify, import, erase, retention."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from central_boxes import BIG_CODEC, RATE, Box, add_config, central_store, make_box, stored_keys, stored_object
from linetap.firmware.encoder import segments_to_pcm
from linetap.sync.central.cli import main
from linetap.sync.central.keys import load_identity
from linetap.sync.central.store import segment_key
from linetap.sync import wire
from linetap.sync.central.tools import StoreTools


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


@pytest.fixture
def central(central: Path, capsys) -> Path:
    """The conftest's store on its backend; `keys init` again through the CLI keeps its keys."""
    assert cli(central, "keys", "init") == 0
    assert "age1" in capsys.readouterr().out
    return central


def alter(central: Path, key: str, change) -> None:
    """Replace the stored object under ``key`` with ``change(its bytes)``, as an intruder in the store would."""
    store = central_store(central)
    store.put(key, change(store.get(key)))


@pytest.fixture
def box(tmp_path: Path, central: Path, capsys) -> Box:
    made = make_box(tmp_path / "boxes", "desk-1", load_identity(central))
    assert cli(central, "enroll", made.device_id, "--signing-key", made.public_key_b64) == 0
    capsys.readouterr()
    yield made
    made.spool.close()


def imported(central: Path, box: Box, capsys) -> list[dict]:
    assert cli(central, "import", str(box.data_dir), "--json") == 0
    return json.loads(capsys.readouterr().out)


def verify_json(central: Path, capsys, *which: str) -> tuple[int, dict]:
    code = cli(central, "verify", *(which or ("--all",)), "--json")
    return code, json.loads(capsys.readouterr().out)


def test_keys_init_makes_private_keys_and_keeps_them(central: Path, capsys, tmp_path: Path) -> None:
    keys = central / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "central.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "operator.key").stat().st_mode) == 0o600
    recipient = str(load_identity(central).to_public())
    assert cli(central, "keys", "init") == 0
    assert recipient in capsys.readouterr().out  # kept, not replaced
    other = tmp_path / "other"
    assert cli(other, "keys", "init", "--import-identity", str(keys / "central.key")) == 0
    assert str(load_identity(other).to_public()) == recipient


def test_age_decrypts_a_stored_segment_with_the_identity_file(central: Path, box: Box, capsys,
                                                              tmp_path: Path) -> None:
    rid = box.call(1.5)
    imported(central, box, capsys)
    segment = tmp_path / "000000.age"
    segment.write_bytes(stored_object(central, segment_key(box.device_id, rid, 0)))
    out = tmp_path / "plain.ogg"
    subprocess.run(["age", "-d", "-i", str(central / "keys" / "central.key"), "-o", str(out), str(segment)],
                   check=True)
    assert out.read_bytes()[:4] == b"OggS"


def test_enroll_refuses_a_bad_key_and_a_silent_replacement(central: Path, box: Box, capsys) -> None:
    assert cli(central, "enroll", "desk-2", "--signing-key", "not-base64") == 1
    assert cli(central, "enroll", "Desk 2", "--signing-key", box.public_key_b64) == 1
    other = make_box(box.data_dir.parent.parent / "x", "desk-9", load_identity(central))
    assert cli(central, "enroll", box.device_id, "--signing-key", other.public_key_b64) == 1
    assert "--replace" in capsys.readouterr().err
    other.spool.close()


def test_import_then_list_with_filters(central: Path, box: Box, capsys) -> None:
    short = box.call(1.5, number="+15550000007", name="Jane Roe")
    long = box.call(4.0, flagged=True)
    results = imported(central, box, capsys)
    assert [(r["recording_id"], r["status"]) for r in results] == [(short, "stored"), (long, "stored")]
    assert imported(central, box, capsys)[0]["status"] == "stored"  # a second import is harmless

    def listed(*filters: str) -> list[str]:
        assert cli(central, "list", "--json", *filters) == 0
        return [r["recording_id"] for r in json.loads(capsys.readouterr().out)]

    assert listed() == [short, long]
    assert listed("--caller", "jane") == [short]
    assert listed("--caller", "0000007") == [short]
    assert listed("--flagged") == [long]
    assert listed("--min-duration", "3") == [long]
    assert listed("--device", "desk-2") == []
    assert listed("--since", "2026-01-01T00:16:41") == [long]  # the clock starts at 00:16:40
    assert listed("--until", "2026-01-01T00:16:41") == [short]
    assert cli(central, "list") == 0
    assert short in capsys.readouterr().out


def test_import_reports_what_it_refused(central: Path, box: Box, capsys) -> None:
    rid = box.call(1.5)
    (box.folder(rid) / "000000.age").unlink()
    assert cli(central, "import", str(box.data_dir)) == 1
    out = capsys.readouterr().out
    assert f"{rid}  rejected missing-segments" in out


def test_export_to_wav_and_ogg(central: Path, box: Box, capsys, tmp_path: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    imported(central, box, capsys)
    out = tmp_path / "call.wav"
    assert cli(central, "export", rid, "-o", str(out)) == 0
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, RATE, 25 * RATE)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
    assert pcm[RATE:, 0].std() > 1000 and pcm[RATE:, 1].std() > 1000  # both sides carry the tones
    ogg = tmp_path / "call.ogg"
    assert cli(central, "export", rid, "-o", str(ogg)) == 0
    assert len(segments_to_pcm([ogg.read_bytes()], RATE)) == 25 * RATE


def test_export_refuses_an_altered_segment(central: Path, box: Box, capsys, tmp_path: Path) -> None:
    rid = box.call(1.5)
    imported(central, box, capsys)
    alter(central, segment_key(box.device_id, rid, 0), lambda data: data[:-1] + b"\0")
    assert cli(central, "export", rid, "-o", str(tmp_path / "x.wav")) == 1
    assert "altered" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_verify_is_clean_then_finds_an_altered_object_and_a_bad_signature(central: Path, box: Box,
                                                                          capsys) -> None:
    first, second = box.call(1.5), box.call(1.5)
    imported(central, box, capsys)
    assert verify_json(central, capsys)[0] == 0
    alter(central, segment_key(box.device_id, first, 0), lambda data: b"\0" + data[1:])
    code, report = verify_json(central, capsys, first)
    assert code == 1 and [p["kind"] for p in report["devices"][0]["problems"]] == ["altered"]
    with StoreTools(central) as tools:
        manifest = tools.index.recording(second)["manifest_key"]

    def forge(data: bytes) -> bytes:
        body = json.loads(data)
        body["signature"]["value"] = body["signature"]["value"][::-1]
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    alter(central, manifest, forge)
    code, report = verify_json(central, capsys)
    kinds = {p["kind"] for p in report["devices"][0]["problems"]}
    assert code == 1 and {"altered"} <= kinds and any("signature" in p["detail"] or "sha256" in p["detail"]
                                                       for p in report["devices"][0]["problems"]
                                                       if p["seq"] == 2)


def test_verify_finds_a_missing_seq(central: Path, box: Box, capsys) -> None:
    box.call(1.5)
    lost = box.call(1.5)
    box.call(1.5)
    for path in box.folder(lost).iterdir():
        path.unlink()
    box.folder(lost).rmdir()
    imported(central, box, capsys)
    code, report = verify_json(central, capsys)
    assert code == 1 and report["devices"][0]["missing"] == [2]


def test_erase_leaves_a_tombstone_and_verify_sees_erased_not_missing(central: Path, box: Box, capsys) -> None:
    box.call(1.5)
    gone = box.call(1.5, number="+15559990000")
    box.call(1.5)
    imported(central, box, capsys)
    assert cli(central, "erase", gone, "--reason", "data subject request") == 0
    capsys.readouterr()
    files = sorted(k.rsplit("/", 1)[1] for k in stored_keys(central) if f"/{gone}/" in k)
    assert files == ["tombstone.json"]
    code, report = verify_json(central, capsys)
    device = report["devices"][0]
    assert code == 0, device["problems"]
    assert (device["erased"], device["missing"]) == ([2], [])
    assert cli(central, "list", "--caller", "9990000", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli(central, "export", gone, "-o", str(central / "x.wav")) == 1
    assert "erased" in capsys.readouterr().err


def test_verify_reports_a_tombstone_that_was_tampered_with(central: Path, box: Box, capsys) -> None:
    gone = box.call(1.5)
    box.call(1.5)
    imported(central, box, capsys)
    assert cli(central, "erase", gone, "--reason", "test") == 0
    tombstone = next(k for k in stored_keys(central) if k.endswith("/tombstone.json"))
    alter(central, tombstone, lambda data: data.replace(b'"reason":"test"', b'"reason":"other"'))
    capsys.readouterr()
    code, report = verify_json(central, capsys)
    assert code == 1 and report["devices"][0]["problems"][0]["kind"] == "bad-tombstone"


def test_retention_erases_what_is_due_except_under_legal_hold(central: Path, box: Box, capsys) -> None:
    plain_old, held_old = box.call(1.5), box.call(1.5)
    flagged_old = box.call(1.5, flagged=True)
    imported(central, box, capsys)
    add_config(central, "[retention]\ndefault_days = 30\nflagged_days = 365\n")
    assert cli(central, "hold", "set", held_old, "--reason", "litigation 42") == 0
    assert cli(central, "erase", held_old, "--reason", "x") == 1
    assert "legal hold" in capsys.readouterr().err
    # The recordings are from 2026-01-01 and this test runs later than 2026-01-31 by the system clock.
    assert cli(central, "retention", "run", "--dry-run", "--json") == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["due"], dry["held"]) == ([plain_old], [held_old])
    with StoreTools(central) as tools:
        assert tools.index.recording(plain_old)["erased_ms"] is None
    assert cli(central, "retention", "run") == 0
    with StoreTools(central) as tools:
        assert tools.index.recording(plain_old)["erased_ms"] is not None
        assert tools.index.recording(held_old)["erased_ms"] is None
        assert tools.index.recording(flagged_old)["erased_ms"] is None
    assert cli(central, "hold", "clear", held_old) == 0
    assert cli(central, "retention", "run", "--json") == 0
    capsys.readouterr()
    assert verify_json(central, capsys)[0] == 0


def test_config_refuses_unknown_keys(central: Path, capsys) -> None:
    add_config(central, "[retention]\ndefault_dayz = 30\n")
    assert cli(central, "retention", "run", "--dry-run") == 1
    assert "default_dayz" in capsys.readouterr().err


def test_the_data_dir_comes_from_the_environment(central: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LINETAP_CENTRAL_DATA_DIR", str(central))
    assert main(["verify", "--all"]) == 0
    monkeypatch.delenv("LINETAP_CENTRAL_DATA_DIR")
    assert main(["verify", "--all"]) == 1
    assert "LINETAP_CENTRAL_DATA_DIR" in capsys.readouterr().err
    assert os.environ.get("LINETAP_CENTRAL_DATA_DIR") is None


# -- hostile boxes and hostile files: import --


def _objects_hold(central: Path, needle: bytes) -> bool:
    return any(needle in stored_object(central, key) for key in stored_keys(central))


def test_import_never_follows_a_symlinked_segment(central: Path, box: Box, capsys) -> None:
    stolen, kept = box.call(1.5), box.call(1.5)
    segment = box.folder(stolen) / "000000.age"
    segment.unlink()
    segment.symlink_to(central / "keys" / "central.key")
    results = {r["recording_id"]: r for r in _import_json(central, box, capsys, expect=1)}
    assert results[stolen]["status"] == "rejected"
    assert str(segment) in results[stolen]["reason"] and "symbolic link" in results[stolen]["reason"]
    assert results[kept]["status"] == "stored"
    assert not _objects_hold(central, b"AGE-SECRET-KEY")
    with StoreTools(central) as tools:
        assert tools.index.objects(box.device_id, stolen) == []


def test_import_refuses_a_symlinked_spool_or_recording_folder(central: Path, box: Box, capsys,
                                                              tmp_path: Path) -> None:
    rid = box.call(1.5)
    elsewhere = tmp_path / "elsewhere"
    box.folder(rid).rename(elsewhere)
    box.folder(rid).symlink_to(elsewhere, target_is_directory=True)
    (result,) = _import_json(central, box, capsys, expect=1)
    assert result["status"] == "rejected" and str(box.folder(rid)) in result["reason"]
    spool = box.data_dir / "spool"
    spool.rename(tmp_path / "real-spool")
    spool.symlink_to(tmp_path / "real-spool", target_is_directory=True)
    assert cli(central, "import", str(box.data_dir)) == 1
    err = capsys.readouterr().err
    assert str(spool) in err and "symbolic link" in err


def test_import_stores_nothing_a_verified_manifest_does_not_vouch_for(central: Path, box: Box, capsys) -> None:
    forged = box.call(1.5)
    manifest = box.folder(forged) / "manifest.json"
    body = json.loads(manifest.read_bytes())
    body["signature"]["value"] = body["signature"]["value"][::-1]
    manifest.write_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    (result,) = _import_json(central, box, capsys, expect=1)
    assert (result["status"], result["code"]) == ("rejected", "bad-signature")
    with StoreTools(central) as tools:
        assert tools.index.objects(box.device_id, forged) == []
    assert not [k for k in stored_keys(central) if k.endswith(".age")]


def test_a_corrupt_segment_from_a_card_does_not_block_the_genuine_upload(central: Path, box: Box, capsys) -> None:
    from linetap.sync.central.ingest import Ingest

    damaged, fine = box.call(2.5), box.call(1.5)
    segment = box.folder(damaged) / "000001.age"
    genuine = segment.read_bytes()
    segment.write_bytes(genuine[:100] + bytes([genuine[100] ^ 0xFF]) + genuine[101:])
    results = {r["recording_id"]: r for r in _import_json(central, box, capsys, expect=1)}
    assert (results[damaged]["status"], results[damaged]["code"]) == ("rejected", "hash-mismatch")
    assert "000001.age" in results[damaged]["reason"]
    assert results[fine]["status"] == "stored"
    # The box still has the genuine bytes and uploads them: nothing of the card's copy is in the way.
    segment.write_bytes(genuine)
    with Ingest(central) as ingest:
        acks = [ack for part in box.parts(damaged) for ack in ingest.receive(part)]
    assert all(ack.status == "stored" for ack in acks), [(a.object, a.code, a.reason) for a in acks]
    assert acks[-1].object == wire.ObjectRef.manifest() and acks[-1].part is None
    assert {r["recording_id"]: r["status"] for r in _import_json(central, box, capsys)} == \
        {damaged: "stored", fine: "stored"}
    assert verify_json(central, capsys)[0] == 0


def test_a_corrupt_segment_can_be_imported_again_once_restored(central: Path, box: Box, capsys) -> None:
    rid = box.call(1.5)
    segment = box.folder(rid) / "000000.age"
    genuine = segment.read_bytes()
    segment.write_bytes(b"\0" * len(genuine))
    assert _import_json(central, box, capsys, expect=1)[0]["code"] == "hash-mismatch"
    segment.write_bytes(genuine)
    assert _import_json(central, box, capsys)[0]["status"] == "stored"


def _hostile(box: Box, serial: int, content: bytes) -> str:
    from central_boxes import uuid7_at

    rid = uuid7_at(box.clock.wall(), 900 + serial)
    folder = box.data_dir / "spool" / rid
    folder.mkdir()
    (folder / "manifest.json").write_bytes(content)
    return rid


def test_import_refuses_hostile_manifests_one_by_one_and_goes_on(central: Path, box: Box, capsys) -> None:
    good = box.call(1.5)
    hostile = {
        _hostile(box, 1, b"[" * 200_000 + b"]" * 200_000): "nests deeper",
        _hostile(box, 2, json.dumps({"device_id": box.device_id, "seq": 2, "recording_id": "x",
                                     "segments": [{"index": "zero", "sha256": 5, "bytes": None}]}).encode()): "",
        _hostile(box, 3, json.dumps({"device_id": 5, "seq": "two", "segments": "abc"}).encode()): "",
        _hostile(box, 4, json.dumps({"device_id": box.device_id, "seq": 10 ** 30, "segments": []}).encode()): "",
        _hostile(box, 5, b"\xff\xfe not text"): "UTF-8",
        _hostile(box, 6, json.dumps([1, 2, 3]).encode()): "",
    }
    results = {r["recording_id"]: r for r in _import_json(central, box, capsys, expect=1)}
    assert results[good]["status"] == "stored"
    for rid, says in hostile.items():
        assert results[rid]["status"] == "rejected", results[rid]
        assert results[rid]["code"] == "malformed" and "manifest.json" in results[rid]["reason"]
        assert says in results[rid]["reason"]


def test_import_reads_no_more_than_a_manifest_or_segment_can_be(central: Path, box: Box, capsys) -> None:
    import tracemalloc

    from linetap.firmware.manifest import MAX_BYTES as MAX_MANIFEST

    swollen, good = box.call(1.5), box.call(1.5)
    with open(box.folder(swollen) / "000000.age", "r+b") as f:
        f.truncate(130 * 1024 * 1024)  # sparse: costs no disk, only whoever reads it whole
    huge = _hostile(box, 1, b"")
    with open(box.data_dir / "spool" / huge / "manifest.json", "r+b") as f:
        f.truncate(130 * 1024 * 1024)
    tracemalloc.start()
    try:
        code = cli(central, "import", str(box.data_dir), "--json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 1
    results = {r["recording_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert results[good]["status"] == "stored"
    assert results[swollen]["code"] == "hash-mismatch" and "000000.age" in results[swollen]["reason"]
    assert results[huge]["code"] == "too-large" and str(MAX_MANIFEST) in results[huge]["reason"]
    assert peak < 3 * MAX_MANIFEST, f"import held {peak} bytes at once"


def _import_json(central: Path, box: Box, capsys, *, expect: int = 0) -> list[dict]:
    assert cli(central, "import", str(box.data_dir), "--json") == expect
    return json.loads(capsys.readouterr().out)


# -- hostile boxes and hostile files: export --


def test_export_refuses_to_overwrite_without_force(central: Path, box: Box, capsys, tmp_path: Path) -> None:
    rid = box.call(1.5)
    imported(central, box, capsys)
    out = tmp_path / "call.ogg"
    out.write_bytes(b"an earlier export")
    assert cli(central, "export", rid, "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert out.read_bytes() == b"an earlier export"
    assert cli(central, "export", rid, "-o", str(out), "--force") == 0
    assert out.read_bytes()[:4] == b"OggS"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("suffix", [".ogg", ".wav"])
def test_export_never_writes_through_a_symlink(central: Path, box: Box, capsys, tmp_path: Path,
                                               suffix: str) -> None:
    rid = box.call(1.5)
    imported(central, box, capsys)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / f"call{suffix}"
    out.symlink_to(victim)
    assert cli(central, "export", rid, "-o", str(out)) == 1
    assert "--force" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious"
    dangling = tmp_path / f"dangling{suffix}"
    dangling.symlink_to(tmp_path / "nowhere")
    assert cli(central, "export", rid, "-o", str(dangling)) == 1
    assert not (tmp_path / "nowhere").exists()
    assert cli(central, "export", rid, "-o", str(out), "--force") == 0
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and out.stat().st_size > 44


@pytest.mark.parametrize("suffix", [".ogg", ".wav"])
def test_exported_audio_is_readable_by_its_owner_only(central: Path, box: Box, capsys, tmp_path: Path,
                                                      suffix: str) -> None:
    rid = box.call(1.5)
    imported(central, box, capsys)
    old = os.umask(0o022)
    try:
        out = tmp_path / f"call{suffix}"
        assert cli(central, "export", rid, "-o", str(out)) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        out.chmod(0o644)
        assert cli(central, "export", rid, "-o", str(out), "--force") == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_import_says_when_a_recording_breaks_the_chain(central: Path, box: Box, capsys) -> None:
    from linetap.firmware import keys as box_keys
    from linetap.firmware import manifest as mf

    first, second = box.call(1.5), box.call(1.5)
    path = box.folder(second) / "manifest.json"
    body = json.loads(path.read_bytes())
    del body["signature"]
    body["prev"] = "f" * 64  # signed by the box itself: only the chain can tell
    path.write_bytes(mf.sign(body, box_keys.load_signing_key(box.data_dir)))
    results = {r["recording_id"]: r for r in _import_json(central, box, capsys)}
    assert (results[first]["status"], results[first]["code"]) == ("stored", None)
    assert (results[second]["status"], results[second]["code"]) == ("stored", "chain-break")
    assert "seq 1" in results[second]["reason"] and "verify" in results[second]["reason"]


# -- keys of the wrong kind --


def _tls_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_a_tls_key_over_the_central_identity_is_named_not_parsed(central: Path, capsys) -> None:
    (central / "keys" / "central.key").write_bytes(_tls_key_pem())
    assert cli(central, "keys", "init") == 1
    err = capsys.readouterr().err
    assert "holds an EC private key" in err and "TLS" in err and "not the age identity" in err
    assert "[broker] key_file" in err and "backup" in err


def test_a_tls_key_or_certificate_over_the_operator_key_is_named(central: Path, capsys, tmp_path: Path) -> None:
    from linetap.sync.pki import CertificateAuthority

    operator = central / "keys" / "operator.key"
    operator.write_bytes(_tls_key_pem())
    assert cli(central, "keys", "init") == 1
    err = capsys.readouterr().err
    assert "holds an EC private key" in err and "TLS" in err and "Ed25519" in err
    operator.write_bytes(CertificateAuthority.create(tmp_path / "pki").issue_client("central").cert_file.read_bytes())
    assert cli(central, "keys", "init") == 1
    assert "holds a certificate" in capsys.readouterr().err
