"""Device signing key and central recipient: creation, permissions, refusal messages."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization

from linetap.firmware import keys
from linetap.firmware.errors import ConfigError


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
