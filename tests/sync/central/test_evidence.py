"""Evidence bundles: made from real recordings, checked by following VERIFY.md literally, tampering caught by name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_boxes import Box, enrolled
from local_tsa import ingest_stamped, make_tsa_files, stamping_store
from linetap.firmware import receipt
from linetap.firmware.clock import ManualClock
from linetap.firmware.keys import public_key_b64
from linetap.sync.central import evidence_format as ef
from linetap.sync.central.cli import main
from linetap.sync.central.evidence import pem
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init, load_store_key
from linetap.sync.central.tools import StoreTools

PYTHON_BIN = str(Path(sys.executable).parent)
SKEW_S = 3600


@dataclass
class Evidence:
    central: Path
    box: Box
    rids: list[str]  # seq 1 synced, 2 unsynchronised, 3 and 4 box clock an hour ahead
    bundles: dict[int, Path]  # by seq


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    root = tmp_path_factory.mktemp("evidence")
    central = root / "central"
    keys_init(central)
    box = enrolled(root, central, "desk-1")
    rids = [box.call(2.5), box.call(1.5, synced=False)]
    box.clock.advance(SKEW_S)
    rids += [box.call(1.5), box.call(1.0)]
    clock = ManualClock()
    clock.advance(200)  # the store's time: after calls 1 and 2 ended by the box's clock, before call 3 began
    with Ingest(central, clock=clock) as core:
        for rid in rids:
            for part in box.parts(rid):
                core.receive(part)
    box.spool.close()
    bundles = {}
    for seq in (1, 2, 3):
        bundles[seq] = root / f"call-{seq}.zip"
        assert cli(central, "evidence", rids[seq - 1], "-o", str(bundles[seq])) == 0
    return Evidence(central, box, rids, bundles)


def unzipped(bundle: Path, folder: Path) -> Path:
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(folder)
    return folder


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewritten(bundle: Path, out: Path, changes: dict[str, bytes | None], *, resum: bool = True) -> Path:
    """The bundle with members replaced (None: removed), SHA256SUMS recomputed as a forger would."""
    files = {**members(bundle), **changes}
    files = {name: data for name, data in files.items() if data is not None}
    if resum:
        files[ef.SUMS] = ef.sums_text({n: hashlib.sha256(d).hexdigest() for n, d in files.items()
                                       if n != ef.SUMS}).encode()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out


def evidence_verify(bundle: Path, capsys, *options: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["evidence", "verify", str(bundle), "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def kinds(result: dict, what: str = "problems") -> set[str]:
    return {p["kind"] for check in result["checks"] for p in check[what]}


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


# -- making --

def test_bundle_holds_the_originals_byte_for_byte_the_receipt_keys_and_log(made: Evidence) -> None:
    bundle = made.bundles[1]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    files = members(bundle)
    with StoreTools(made.central) as tools:
        row = tools.recording(made.rids[0])
        assert files[ef.MANIFEST] == tools.store.get(row["manifest_key"])
        for index, data in made.box.segments(made.rids[0]):
            assert files[f"original/{index:06d}.age"] == data
        assert files[ef.RECEIPT] == tools.index.receipt("desk-1", made.rids[0])["data"]
        assert files[ef.STORE_KEY] == pem(load_store_key(made.central).public_key())
        later = [tools.store.get(tools.recording(rid)["manifest_key"]) for rid in made.rids[1:]]
    assert [files[ef.chain_name(seq)] for seq in (2, 3, 4)] == later
    assert files[ef.AUDIO][:4] == b"RIFF"
    log = [json.loads(line) for line in files[ef.ACCESS_LOG].splitlines()]
    assert [(e["action"], e["origin"]) for e in log] == [("evidence", "cli")]
    report = json.loads(files[ef.REPORT])
    assert report["chain"]["head_seq"] == 4 and report["timestamp"] is None
    assert set(files) - {ef.SUMS} == set(ef.parse_sums(files[ef.SUMS].decode())[0])


def test_an_existing_bundle_is_kept_unless_forced(made: Evidence, tmp_path: Path, capsys) -> None:
    before = made.bundles[1].read_bytes()
    assert cli(made.central, "evidence", made.rids[0], "-o", str(made.bundles[1])) == 1
    assert "already exists" in capsys.readouterr().err
    assert made.bundles[1].read_bytes() == before
    target = tmp_path / "old.zip"
    target.write_bytes(b"an older file")
    target.chmod(0o644)
    assert cli(made.central, "evidence", made.rids[3], "-o", str(target), "--force") == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and evidence_verify(target, capsys)[0] == 0


# -- following VERIFY.md --

def test_verify_md_commands_pass_when_followed_literally(made: Evidence, tmp_path: Path) -> None:
    folder = unzipped(made.bundles[1], tmp_path / "bundle")
    blocks = shell_blocks((folder / ef.VERIFY).read_text())
    assert len(blocks) >= 6
    env = {"PATH": f"{PYTHON_BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "AGE_IDENTITY": str(made.central / "keys" / "central.key")}
    out = ""
    for block in blocks:
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{block}\n{run.stdout}\n{run.stderr}"
        out += run.stdout
    for expected in ("OK every file matches", "OK manifest of desk-1 seq 1", "OK chain from seq 1 to the head, seq 4",
                     "OK receipt signed", "OK the originals decrypt", "OK clock synchronised", "access: evidence"):
        assert expected in out
    assert (folder / "decrypted.ogg").read_bytes()[:4] == b"OggS"


def test_verify_md_commands_fail_on_a_forged_receipt(made: Evidence, tmp_path: Path, capsys) -> None:
    """The literal steps can fail too: a receipt signed by another key stops step 4."""
    forged = _forged_receipt(made, Ed25519PrivateKey.generate())
    folder = unzipped(rewritten(made.bundles[1], tmp_path / "f.zip", {ef.RECEIPT: forged}), tmp_path / "b")
    step4 = [b for b in shell_blocks((folder / ef.VERIFY).read_text()) if "receipt.json" in b][0]
    run = subprocess.run(["bash", "-e", "-c", step4], cwd=folder, capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{PYTHON_BIN}:/usr/bin:/bin"})
    assert run.returncode != 0 and "InvalidSignature" in run.stderr


# -- evidence verify --

def test_evidence_verify_passes_a_clean_bundle_and_says_whose_keys_it_trusts(made: Evidence, capsys) -> None:
    code, result = evidence_verify(made.bundles[1], capsys)
    assert code == 0 and result["ok"]
    keys = [c for c in result["checks"] if c["check"] == "keys"][0]
    assert "in the bundle" in keys["text"]
    assert kinds(result, "warnings") == {"no-timestamp"}
    assert main(["evidence", "verify", str(made.bundles[1])]) == 0
    assert "the bundle checks out" in capsys.readouterr().out


def test_any_byte_changed_in_any_member_is_file_altered(made: Evidence, tmp_path: Path, capsys) -> None:
    original = members(made.bundles[1])
    for name, data in original.items():
        if name == ef.SUMS:
            continue
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        bundle = rewritten(made.bundles[1], tmp_path / "t.zip", {name: bytes(changed)}, resum=False)
        code, result = evidence_verify(bundle, capsys)
        assert code == 1, name
        assert {"kind": "file-altered", "detail": f"{name} does not match its SHA-256 in SHA256SUMS: changed"} in \
            [p for c in result["checks"] for p in c["problems"]], name


def _forged_receipt(made: Evidence, key: Ed25519PrivateKey, rid_index: int = 0) -> bytes:
    with StoreTools(made.central) as tools:
        logged = tools.index.receipt("desk-1", made.rids[rid_index])
    return receipt.sign(key, device_id="desk-1", recording_id=made.rids[rid_index], seq=logged["seq"],
                        manifest_sha256=logged["manifest_sha256"], stored_ms=logged["stored_ms"],
                        prev=logged["prev"]).data


def test_a_receipt_for_another_manifest_is_receipt_mismatch(made: Evidence, tmp_path: Path, capsys) -> None:
    with StoreTools(made.central) as tools:
        other = tools.index.receipt("desk-1", made.rids[1])["data"]  # genuine, signed, about seq 2
    code, result = evidence_verify(rewritten(made.bundles[1], tmp_path / "t.zip", {ef.RECEIPT: other}), capsys)
    assert code == 1 and kinds(result) == {"receipt-mismatch"}


def test_a_receipt_signed_by_an_unknown_key_is_receipt_unknown_key(made: Evidence, tmp_path: Path, capsys) -> None:
    forger = Ed25519PrivateKey.generate()
    forged = _forged_receipt(made, forger)
    code, result = evidence_verify(rewritten(made.bundles[1], tmp_path / "t.zip", {ef.RECEIPT: forged}), capsys)
    assert code == 1 and kinds(result) == {"receipt-unknown-key"}
    # A forger who also swaps the bundle's store key is caught by a verifier naming the store's real key.
    swapped = rewritten(made.bundles[1], tmp_path / "s.zip", {ef.RECEIPT: forged, ef.STORE_KEY: pem(forger.public_key())})
    assert evidence_verify(swapped, capsys)[0] == 0  # the bundle's own keys prove nothing: VERIFY.md step 0
    real = public_key_b64(load_store_key(made.central).public_key())
    code, result = evidence_verify(swapped, capsys, "--store-key", real)
    assert code == 1 and kinds(result) == {"receipt-unknown-key"}


def test_a_chain_with_a_missing_link_is_chain_broken(made: Evidence, tmp_path: Path, capsys) -> None:
    bundle = rewritten(made.bundles[1], tmp_path / "t.zip", {ef.chain_name(3): None})
    code, result = evidence_verify(bundle, capsys)
    assert code == 1 and kinds(result) == {"chain-broken"}
    short = rewritten(made.bundles[1], tmp_path / "s.zip", {ef.chain_name(4): None})
    code, result = evidence_verify(short, capsys)
    assert code == 1 and kinds(result) == {"chain-broken"}  # stops short of the head the report names


def test_altered_signed_content_is_named_even_with_new_checksums(made: Evidence, tmp_path: Path, capsys) -> None:
    files = members(made.bundles[1])
    cases = {
        ef.MANIFEST: (files[ef.MANIFEST].replace(b'"hang-up"', b'"hang-uq"'), "manifest-altered"),
        "original/000000.age": (files["original/000000.age"][:-1] + b"\0", "segment-altered"),
        ef.chain_name(2): (files[ef.chain_name(2)].replace(b'"hang-up"', b'"hang-uq"'), "chain-altered"),
        ef.ACCESS_LOG: (files[ef.ACCESS_LOG].replace(b'"cli"', b'"web"'), "access-log-altered"),
    }
    for name, (data, kind) in cases.items():
        assert data != files[name]
        code, result = evidence_verify(rewritten(made.bundles[1], tmp_path / "t.zip", {name: data}), capsys)
        assert code == 1 and kind in kinds(result), (name, kinds(result))


def test_a_manifest_signed_by_another_box_key_is_named(made: Evidence, tmp_path: Path, capsys) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    code, result = evidence_verify(made.bundles[1], capsys, "--box-key", public_key_b64(other))
    assert code == 1 and "manifest-unknown-key" in kinds(result)


@pytest.mark.parametrize("name", ["../evil", "/abs/path", "keys/../../x", "a\\b"])
def test_a_hostile_zip_is_unusable_exit_2(made: Evidence, tmp_path: Path, capsys, name: str) -> None:
    bundle = tmp_path / "bad.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr(ef.SUMS, b"")
        zf.writestr(name, b"x")
    assert main(["evidence", "verify", str(bundle)]) == 2
    assert "unusable" in capsys.readouterr().out


def test_not_a_zip_and_a_bomb_are_unusable(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    assert main(["evidence", "verify", str(junk)]) == 2
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"original/{i:06d}.age", b"")
    data = bytearray(bomb.read_bytes())  # each member declares 4 GiB in the central directory: 24 GiB in all
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 24:at + 28] = (0xFFFFFFFE).to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    bomb.write_bytes(bytes(data))
    assert main(["evidence", "verify", str(bomb)]) == 2


# -- clock honesty --

def test_clock_flags_an_unsynchronised_box_and_a_box_clock_ahead(made: Evidence, capsys) -> None:
    assert kinds(evidence_verify(made.bundles[1], capsys)[1], "warnings") == {"no-timestamp"}
    code, result = evidence_verify(made.bundles[2], capsys)
    assert code == 0 and kinds(result, "warnings") == {"no-timestamp", "clock-unsynchronised"}
    code, result = evidence_verify(made.bundles[3], capsys)
    assert code == 0 and kinds(result, "warnings") == {"no-timestamp", "clock-skew"}
    assert json.loads(members(made.bundles[3])[ef.REPORT])["clock"]["box_ahead_ms"] > (SKEW_S - 300) * 1000
    # a looser bound given to the verifier lets the hour pass
    code, result = evidence_verify(made.bundles[3], capsys, "--max-clock-skew", str(2 * SKEW_S))
    assert kinds(result, "warnings") == {"no-timestamp"}


def test_store_verify_shows_the_clock_and_its_warnings(made: Evidence, capsys) -> None:
    capsys.readouterr()
    assert cli(made.central, "verify", made.rids[2]) == 0  # warnings do not fail verify
    out = capsys.readouterr().out
    assert "clock: stored" in out and "warning clock-skew: seq 3" in out
    assert cli(made.central, "verify", "--all", "--json") == 0
    report = json.loads(capsys.readouterr().out)["devices"][0]
    assert {(w["kind"], w["seq"]) for w in report["warnings"]} == {("clock-unsynchronised", 2), ("clock-skew", 3),
                                                                    ("clock-skew", 4)}
    config = made.central / "loose.toml"
    config.write_text(f"[evidence]\nmax_clock_skew_s = {2 * SKEW_S}\n")
    assert cli(made.central, "verify", "--all", "--json", "--config", str(config)) == 0
    report = json.loads(capsys.readouterr().out)["devices"][0]
    assert {w["kind"] for w in report["warnings"]} == {"clock-unsynchronised"}
    os.unlink(config)


# -- a recording covered by a trusted timestamp --

@dataclass
class Stamped:
    central: Path
    rids: list[str]  # seq 1, 2 stamped (head seq 2); seq 3 stored after the first stamp
    bundle: Path  # of seq 1
    later: Path  # of seq 3, covered only by the second stamp
    tokens: list[bytes]
    commitments: list[bytes]


@pytest.fixture(scope="module")
def stamped(tmp_path_factory: pytest.TempPathFactory, local_tsa, tsa_files: Path) -> Stamped:
    root = tmp_path_factory.mktemp("stamped")
    central = stamping_store(root / "central", tsa_files, local_tsa.url)
    box = enrolled(root, central, "desk-2")
    rids = [box.call(1.5), box.call(1.0), box.call(1.0)]
    box.spool.close()
    ingest_stamped(central, box, rids, stamp_after=1)
    assert cli(central, "timestamp") == 0
    with StoreTools(central) as tools:
        stamps = tools.index.timestamps()
    assert cli(central, "evidence", rids[0], "-o", str(root / "stamped.zip")) == 0
    assert cli(central, "evidence", rids[2], "-o", str(root / "later.zip")) == 0
    return Stamped(central, rids, root / "stamped.zip", root / "later.zip", [bytes(s["token"]) for s in stamps],
                   [bytes(s["commitment"]) for s in stamps])


def run_verify_md(bundle: Path, folder: Path) -> tuple[int, str]:
    """Every shell block of the bundle's VERIFY.md in turn, as written; (exit of the first failing, output)."""
    folder = unzipped(bundle, folder)
    out = ""
    for block in shell_blocks((folder / ef.VERIFY).read_text()):
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=folder, capture_output=True,
                             text=True, timeout=60, env={"PATH": f"{PYTHON_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8"})
        out += run.stdout + run.stderr
        if run.returncode != 0:
            return run.returncode, out
    return 0, out


def test_a_stamped_bundle_carries_the_token_and_openssl_verifies_it(stamped: Stamped, tmp_path: Path,
                                                                    capsys) -> None:
    files = members(stamped.bundle)
    assert files[ef.TOKEN] == stamped.tokens[0] and files[ef.COMMITMENT] == stamped.commitments[0]
    assert ef.chain_name(2) in files and ef.chain_name(3) not in files  # to the nearest stamped head
    report = json.loads(files[ef.REPORT])
    assert report["chain"]["head_is"] == "timestamped" and report["timestamp"]["pos"] == 0
    code, out = run_verify_md(stamped.bundle, tmp_path / "b")
    assert code == 0, out
    assert "Verification: OK" in out and "OK the stamped commitment names the head of the chain, seq 2" in out
    code, result = evidence_verify(stamped.bundle, capsys)
    assert code == 0 and kinds(result, "warnings") == set()
    assert "over the commitment naming the head, seq 2" in [c for c in result["checks"]
                                                            if c["check"] == "timestamp"][0]["text"]
    later = members(stamped.later)
    assert later[ef.TOKEN] == stamped.tokens[1] and json.loads(later[ef.REPORT])["chain"]["head_seq"] == 3


def test_a_token_over_a_different_hash_is_timestamp_mismatch(stamped: Stamped, tmp_path: Path, capsys) -> None:
    other = stamped.commitments[0].replace(b'"seq":2', b'"seq":7')
    bundle = rewritten(stamped.bundle, tmp_path / "t.zip", {ef.COMMITMENT: other})
    code, result = evidence_verify(bundle, capsys)
    assert code == 1 and kinds(result) == {"timestamp-mismatch"}
    code, out = run_verify_md(bundle, tmp_path / "b")
    assert code != 0 and "Verification: FAILED" in out
    # another stamp's genuine token beside this commitment
    swapped = rewritten(stamped.bundle, tmp_path / "s.zip", {ef.TOKEN: stamped.tokens[1]})
    code, result = evidence_verify(swapped, capsys)
    assert code == 1 and kinds(result) == {"timestamp-mismatch"}


def test_a_stamp_that_names_another_head_or_another_tsa_is_named(stamped: Stamped, tmp_path: Path,
                                                                 capsys) -> None:
    later = rewritten(stamped.bundle, tmp_path / "t.zip", {ef.TOKEN: stamped.tokens[1],
                                                          ef.COMMITMENT: stamped.commitments[1]})
    code, result = evidence_verify(later, capsys)
    assert code == 1 and kinds(result) == {"timestamp-head-mismatch"}
    other_tsa = make_tsa_files(tmp_path / "other-tsa", name="Other")
    code, result = evidence_verify(stamped.bundle, capsys, "--tsa-ca", str(other_tsa / "ca.pem"))
    assert code == 1 and kinds(result) == {"timestamp-invalid"}
    gone = rewritten(stamped.bundle, tmp_path / "g.zip", {ef.TOKEN: None, ef.COMMITMENT: None, ef.TSA_CA: None,
                                                         ef.TSA_CERT: None})
    code, result = evidence_verify(gone, capsys)
    assert code == 1 and kinds(result) == {"timestamp-missing"}


def test_an_erased_recording_in_the_chain_is_bridged_by_its_tombstone(tmp_path: Path, central: Path,
                                                                      capsys) -> None:
    box = enrolled(tmp_path, central, "desk-3")
    rids = [box.call(1.0), box.call(1.0), box.call(1.0)]
    box.spool.close()
    assert cli(central, "import", str(box.data_dir)) == 0
    assert cli(central, "erase", rids[1], "--reason", "asked by the caller") == 0
    assert cli(central, "evidence", rids[0], "-o", str(tmp_path / "e.zip")) == 0
    files = members(tmp_path / "e.zip")
    assert {ef.chain_name(2, tombstone=True), ef.chain_name(3), ef.OPERATOR_KEY} <= set(files)
    code, out = run_verify_md(tmp_path / "e.zip", tmp_path / "b")
    assert code == 0 and "OK chain from seq 1 to the head, seq 3" in out, out
    assert evidence_verify(tmp_path / "e.zip", capsys)[0] == 0
    forged = files[ef.chain_name(2, tombstone=True)].replace(b"asked by the caller", b"asked by the police")
    code, result = evidence_verify(rewritten(tmp_path / "e.zip", tmp_path / "t.zip",
                                             {ef.chain_name(2, tombstone=True): forged}), capsys)
    assert code == 1 and kinds(result) == {"chain-altered"}
    assert cli(central, "evidence", rids[1], "-o", str(tmp_path / "gone.zip")) == 1
    assert "was erased" in capsys.readouterr().err
