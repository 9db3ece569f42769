"""Device signing key and central recipient: creation, permissions, refusal messages."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware import keys
from linetap.firmware.errors import ConfigError
from linetap.firmware import receipt


@pytest.fixture
def central() -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.generate()


def test_init_creates_private_key_and_recipient(tmp_path: Path, central) -> None:
    info = keys.keys_init(tmp_path, str(central.to_public()))
    folder = tmp_path / "keys"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(info.device_key.stat().st_mode) == 0o600
    assert info.created
    assert str(keys.load_recipient(tmp_path)) == str(central.to_public())
    key = keys.load_signing_key(tmp_path)
    assert keys.public_key_b64(key.public_key()) == info.public_key_b64
    assert len(base64.b64decode(info.public_key_b64)) == 32


def test_init_keeps_an_existing_signing_key_and_replaces_the_recipient(tmp_path: Path, central) -> None:
    first = keys.keys_init(tmp_path, str(central.to_public()))
    other = pyrage.x25519.Identity.generate().to_public()
    second = keys.keys_init(tmp_path, str(other))
    assert not second.created
    assert second.public_key_b64 == first.public_key_b64
    assert str(keys.load_recipient(tmp_path)) == str(other)


@pytest.mark.parametrize("bad", ["", "age1notvalid", "ssh-ed25519 AAAA", "AGE-SECRET-KEY-1XYZ"])
def test_init_refuses_a_bad_recipient_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="recipient"):
        keys.keys_init(tmp_path, bad)
    assert not (tmp_path / "keys").exists()


def test_missing_recipient_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyMissing, match=r"linetap keys init --central-recipient age1"):
        keys.load_recipient(tmp_path)
    with pytest.raises(keys.KeyMissing, match=r"linetap keys init"):
        keys.load_signing_key(tmp_path)


@pytest.mark.parametrize("target,mode", [("keys/device.key", 0o644), ("keys/device.key", 0o640),
                                         ("keys", 0o755)])
def test_looser_permissions_are_refused_with_the_chmod_fix(tmp_path: Path, central, target: str,
                                                           mode: int) -> None:
    keys.keys_init(tmp_path, str(central.to_public()))
    os.chmod(tmp_path / target, mode)
    with pytest.raises(keys.KeyPermissions, match=rf"chmod \d+ {tmp_path / target}"):
        keys.load_signing_key(tmp_path)


def test_a_key_file_of_the_wrong_kind_is_refused(tmp_path: Path, central) -> None:
    keys.keys_init(tmp_path, str(central.to_public()))
    (tmp_path / "keys/device.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        keys.load_signing_key(tmp_path)


def test_pem_export_round_trips(tmp_path: Path, central) -> None:
    keys.keys_init(tmp_path, str(central.to_public()))
    public = keys.load_signing_key(tmp_path).public_key()
    pem = keys.public_key_pem(public)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    loaded = serialization.load_pem_public_key(pem.encode())
    assert keys.public_key_raw(loaded) == keys.public_key_raw(public)
    assert keys.public_key_raw(keys.public_key_from_b64(keys.public_key_b64(public))) == \
        keys.public_key_raw(public)


def test_no_key_material_is_logged(tmp_path: Path, central, caplog) -> None:
    caplog.set_level("DEBUG")
    keys.keys_init(tmp_path, str(central.to_public()))
    pem = (tmp_path / "keys/device.key").read_text()
    secret_line = pem.splitlines()[1]
    assert "keys init" in caplog.text
    assert secret_line not in caplog.text
    assert str(central) not in caplog.text


# --------------------------------------------------------------- store key --

def linetap(*args: str) -> subprocess.CompletedProcess:
    """The real box CLI, as an installer runs it."""
    return subprocess.run([sys.executable, "-m", "linetap.firmware.cli", *args], capture_output=True, text=True)


def b64(key: Ed25519PrivateKey) -> str:
    return keys.public_key_b64(key.public_key())


def test_keys_init_store_key_through_the_cli_is_stored_shown_and_loaded(tmp_path: Path, central) -> None:
    store = Ed25519PrivateKey.generate()
    done = linetap("keys", "init", "--data-dir", str(tmp_path), "--central-recipient", str(central.to_public()),
                   "--store-key", b64(store))
    assert done.returncode == 0, done.stderr
    assert "store key stored in" in done.stdout and b64(store) in done.stdout
    assert (tmp_path / "keys" / "store.pub").read_text().strip() == b64(store)
    trusted = keys.load_store_keys(tmp_path)
    assert list(trusted) == [receipt.key_id(store.public_key())]
    shown = linetap("keys", "show", "--data-dir", str(tmp_path))
    assert shown.returncode == 0 and f"{b64(store)} (key id {receipt.key_id(store.public_key())})" in shown.stdout


def test_without_a_store_key_none_is_trusted_and_show_says_what_follows(tmp_path: Path, central) -> None:
    keys.keys_init(tmp_path, str(central.to_public()))
    assert keys.load_store_keys(tmp_path) == {}
    shown = linetap("keys", "show", "--data-dir", str(tmp_path))
    assert "no store key" in shown.stdout and "deleted on the stored ack alone" in shown.stdout


@pytest.mark.parametrize("kind", ["operator", "own", "recipient", "pem", "garbage"])
def test_keys_init_refuses_a_store_key_of_the_wrong_kind(tmp_path: Path, central, kind: str) -> None:
    operator = Ed25519PrivateKey.generate()
    keys.keys_init(tmp_path, str(central.to_public()), b64(operator))
    given = {"operator": b64(operator),
             "own": keys.public_key_b64(keys.load_signing_key(tmp_path).public_key()),
             "recipient": str(central.to_public()),
             "pem": keys.public_key_pem(operator.public_key()),
             "garbage": "not-a-key"}[kind]
    done = linetap("keys", "init", "--data-dir", str(tmp_path), "--central-recipient", str(central.to_public()),
                   "--store-key", given)
    assert done.returncode != 0 and "--store-key" in done.stderr and "linetap keys init" in done.stderr
    assert {"operator": "operator key", "own": "own signing key", "recipient": "age recipient",
            "pem": "PEM", "garbage": "not 32 base64"}[kind] in done.stderr
    assert not (tmp_path / "keys" / "store.pub").exists()
    # A store.pub damaged on the card is refused when loaded, naming the file.
    (tmp_path / "keys" / "store.pub").write_text(str(central.to_public()))
    with pytest.raises(ConfigError, match="store.pub"):
        keys.load_store_keys(tmp_path)


# ------------------------------------------------------------- release key --

def test_keys_init_release_key_is_stored_shown_and_loaded(tmp_path: Path, central) -> None:
    release = Ed25519PrivateKey.generate()
    done = linetap("keys", "init", "--data-dir", str(tmp_path), "--central-recipient", str(central.to_public()),
                   "--release-key", "ed25519:" + b64(release))
    assert done.returncode == 0, done.stderr
    assert "release key stored in" in done.stdout and b64(release) in done.stdout
    path = tmp_path / "keys" / "release.pub"
    assert path.read_text().strip() == b64(release) and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [keys.public_key_b64(k) for k in keys.load_release_keys(tmp_path)] == [b64(release)]


def test_without_a_release_key_show_says_offers_are_refused_and_how_to_provision_one(tmp_path: Path,
                                                                                      central) -> None:
    keys.keys_init(tmp_path, str(central.to_public()))
    assert keys.load_release_keys(tmp_path) == []
    shown = linetap("keys", "show", "--data-dir", str(tmp_path))
    assert "no release key: every update offer is refused" in shown.stdout and "--release-key" in shown.stdout


@pytest.mark.parametrize("kind", ["operator", "store", "own", "recipient"])
def test_keys_init_refuses_a_release_key_that_is_another_key(tmp_path: Path, central, kind: str) -> None:
    operator, store = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys.keys_init(tmp_path, str(central.to_public()), b64(operator), b64(store))
    given = {"operator": b64(operator), "store": b64(store), "recipient": str(central.to_public()),
             "own": keys.public_key_b64(keys.load_signing_key(tmp_path).public_key())}[kind]
    with pytest.raises(keys.WrongKeyKind, match="--release-key"):
        keys.keys_init(tmp_path, str(central.to_public()), release_key=given)
    assert not (tmp_path / "keys" / "release.pub").exists()


P = 2**255 - 19
Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022


def encoding(y: int, x_sign: int = 0) -> str:
    return base64.b64encode((y | x_sign << 255).to_bytes(32, "little")).decode()


def test_a_point_of_small_order_is_refused_as_a_public_key() -> None:
    identity = bytes([1]) + bytes(31)
    weak = Ed25519PublicKey.from_public_bytes  # what a key of small order would let anyone do:
    weak(identity).verify(identity + bytes(32), b"any receipt at all")  # a signature made with no private key
    for y, sign in [(1, 0), (0, 0), (0, 1), (P - 1, 0), (Y8, 0), (Y8, 1), (P - Y8, 0), (P - Y8, 1),
                    (P + 1, 0)]:  # the last: the identity again, encoded with y not reduced mod p
        with pytest.raises(ConfigError, match="small order"):
            keys.public_key_from_b64(encoding(y, sign))
    real = Ed25519PrivateKey.generate().public_key()
    assert keys.public_key_raw(keys.public_key_from_b64(keys.public_key_b64(real))) == keys.public_key_raw(real)
