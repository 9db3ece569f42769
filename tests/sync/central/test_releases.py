"""Releases at the centre: the release key, build/list, and the chunk server answering real requests."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from update_boxes import OWN_SIZE, PahoBox, build_release, make_wheels

from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import WrongKeyKind, public_key_from_b64
from linetap.sync import release, updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central import cli
from linetap.sync.central.chunkserver import ChunkServer
from linetap.sync.central.keys import OPERATOR_FILE, keys_init, load_release_key
from linetap.sync.central.releases import FILES_DIR, MANIFEST_FILE, SIGNATURE_FILE, ReleaseStore
from linetap.sync.mqtt import BrokerSettings

pytestmark = pytest.mark.broker("session")
KEY = Ed25519PrivateKey.generate()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


# ------------------------------------------------------------------ the key --

def test_keygen_writes_a_private_key_once_and_prints_its_public_half(tmp_path: Path, capsys) -> None:
    path = tmp_path / "offline" / "release.key"
    code, out = run(capsys, "release", "keygen", "--out", str(path))
    assert code == 0 and path.stat().st_mode & 0o777 == 0o600
    (public,) = out.split()
    key = load_release_key(path)
    assert public_key_from_b64(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    assert "PRIVATE" not in out
    before = path.read_bytes()
    assert cli.main(["release", "keygen", "--out", str(path)]) == 1
    assert "refusing to replace" in capsys.readouterr().err and path.read_bytes() == before


def test_the_operator_key_is_refused_as_a_release_key(tmp_path: Path) -> None:
    data = tmp_path / "central"
    keys_init(data)
    with pytest.raises(WrongKeyKind, match="is the operator key"):
        load_release_key(data / "keys" / OPERATOR_FILE, data)


# ---------------------------------------------------------- build and list --

def test_build_keeps_a_signed_content_addressed_release_and_a_rebuild_is_a_no_op(tmp_path: Path, capsys) -> None:
    data, key_file = tmp_path / "central", tmp_path / "release.key"
    assert cli.main(["release", "keygen", "--out", str(key_file)]) == 0
    wheels = make_wheels(tmp_path / "wheels", "0.3.1")
    argv = ["release", "build", "--release-key", str(key_file), "--wheels", str(wheels), "--boards",
            "pi4-desk,pi4-wall", "--min-previous", "0.2", "--data-dir", str(data), "--json"]
    code, out = run(capsys, *argv)
    built = json.loads(out)
    assert code == 0 and built["new"] and built["version"] == "0.3.1" and built["files"] == 2
    folder = data / "releases" / built["release_id"]
    manifest, sig = (folder / MANIFEST_FILE).read_bytes(), (folder / SIGNATURE_FILE).read_bytes()
    rel = release.verify(manifest, sig, [load_release_key(key_file).public_key()])
    assert rel.release_id == built["release_id"] and rel.boards == ("pi4-desk", "pi4-wall")
    assert rel.min_previous == "0.2"
    for file in rel.files:
        assert release.describe_file(file.name, (folder / FILES_DIR / file.sha256).read_bytes()) == file

    code, out = run(capsys, *argv)
    assert code == 0 and json.loads(out)["new"] is False and json.loads(out)["release_id"] == rel.release_id
    assert [p.name for p in (data / "releases").iterdir()] == [rel.release_id]
    code, out = run(capsys, "release", "list", "--data-dir", str(data))
    assert code == 0 and f"0.3.1        {rel.release_id}" in out and f"{OWN_SIZE + 5000:>12}     2" in out


def test_a_tampered_release_is_refused_by_verify(tmp_path: Path) -> None:
    kept = build_release(tmp_path / "central", KEY)
    manifest = (kept.folder / MANIFEST_FILE).read_bytes()
    with pytest.raises(release.BadSignature):
        release.verify(manifest.replace(b'"min_previous":"0"', b'"min_previous":"1"'), kept.signature,
                       [KEY.public_key()])
    # A file changed on disk no longer matches the signed hashes the box checks.
    own = kept.release.files[0]
    path = kept.folder / FILES_DIR / own.sha256
    path.write_bytes(b"X" + path.read_bytes()[1:])
    assert release.describe_file(own.name, path.read_bytes()).sha256 != own.sha256
    with pytest.raises(OSError, match="does not match its release at chunk 0"):
        ReleaseStore(tmp_path / "central").chunk(kept.release_id, own.sha256, 0)


@pytest.mark.parametrize("names, words", [
    ((), "holds no .whl files"),
    (("dep-1.0-py3-none-any.whl",), "exactly one linetap-VERSION"),
    (("linetap-0.2.0-py3-none-any.whl", "linetap-0.2.1-py3-none-any.whl"), "exactly one linetap-VERSION"),
])
def test_a_folder_without_exactly_one_linetap_wheel_is_refused(tmp_path: Path, names, words) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=words):
        ReleaseStore(tmp_path / "central").build(KEY, folder, now_ms=1)


def test_a_version_other_than_the_wheels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is version 0.2.0"):
        ReleaseStore(tmp_path / "central").build(KEY, make_wheels(tmp_path / "w"), now_ms=1, version="0.2.1")


# ------------------------------------------------------------ chunk server --

@pytest.fixture
def chunks(tmp_path: Path, broker: LocalBroker):
    kept = build_release(tmp_path / "central", KEY)
    settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10, reconnect_min_s=0.2,
                              reconnect_max_s=2.0)
    with ChunkServer(ReleaseStore(tmp_path / "central"), settings, client_id=f"test-chunks-{tmp_path.name}",
                     rate=2.0, burst=2) as server:
        server.wait_ready(10)
        yield server, kept


def own_wheel(kept) -> release.ReleaseFile:
    return next(f for f in kept.release.files if f.name.startswith("linetap-"))


def test_a_request_is_answered_with_the_chunk_the_signed_release_names(chunks, broker: LocalBroker) -> None:
    server, kept = chunks
    box = PahoBox(broker, "upd-box-1", updatewire.chunk_topic("upd-box-1"))
    try:
        file = own_wheel(kept)
        box.get(kept.release_id, file.sha256, 2)
        chunk = release.unpack_chunk(box.wait_for(updatewire.chunk_topic("upd-box-1")).payload)
        assert release.check_chunk(kept.release, chunk) == file
        assert (chunk.index, len(chunk.data)) == (2, OWN_SIZE - 2 * release.CHUNK_SIZE)
    finally:
        box.close()


def test_bad_requests_are_dropped_and_the_server_keeps_serving(chunks, broker: LocalBroker, caplog) -> None:
    server, kept = chunks
    bad = PahoBox(broker, "upd-bad", updatewire.chunk_topic("upd-bad"))
    good = PahoBox(broker, "upd-good", updatewire.chunk_topic("upd-good"))
    try:
        file = own_wheel(kept)
        bad.send("update/get", b"{not json")
        bad.get("0" * 64, file.sha256, 0)  # no such release
        bad.get(kept.release_id, file.sha256, 3)  # out of range
        bad.send("update/get", json.dumps({"chunk": 0, "file": "../../keys/operator.key",
                                           "release": kept.release_id}).encode())
        good.get(kept.release_id, file.sha256, 0)
        assert release.unpack_chunk(good.wait_for(updatewire.chunk_topic("upd-good")).payload).index == 0
        bad.get(kept.release_id, file.sha256, 1)  # after its bad ones, in its own order
        assert release.unpack_chunk(bad.wait_for(updatewire.chunk_topic("upd-bad")).payload).index == 1
        with pytest.raises(queue.Empty):
            bad.received.get_nowait()
        assert server.counts.refused == 4 and server.failure is None
        refusals = [r for r in caplog.records if "update request refused device_id=upd-bad" in r.getMessage()]
        assert len(refusals) == 1  # once per box per minute
    finally:
        bad.close()
        good.close()


def test_a_box_flooding_requests_does_not_starve_another(chunks, broker: LocalBroker) -> None:
    server, kept = chunks  # 2 chunks a second per box, a burst of 2
    flood = PahoBox(broker, "upd-flood", updatewire.chunk_topic("upd-flood"))
    calm = PahoBox(broker, "upd-calm", updatewire.chunk_topic("upd-calm"))
    try:
        file = own_wheel(kept)
        started = time.monotonic()
        for _ in range(60):
            flood.get(kept.release_id, file.sha256, 0)
        calm.get(kept.release_id, file.sha256, 1)
        assert release.unpack_chunk(calm.wait_for(updatewire.chunk_topic("upd-calm"), 5).payload).index == 1
        # The flooding box had its burst and its rate meanwhile, no more; the calm box waited for none of it.
        allowed = 2 + 2 * (time.monotonic() - started) + 1
        served_to_flood = flood.received.qsize()
        assert served_to_flood <= allowed, f"{served_to_flood} chunks to the flooding box before the calm one's"
        assert server.counts.dropped >= 60 - 32 - 4
    finally:
        flood.close()
        calm.close()
