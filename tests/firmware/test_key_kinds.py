"""The box's two private keys live apart and are never taken for each other.

The Ed25519 signing key (``keys/device.key``) signs manifests; the TLS client
key and certificate (``keys/tls.key``, ``keys/tls.crt``) open the broker
connection. Following the setup guide must not put one where the other
belongs, and a file holding the wrong kind is refused where it is loaded
(``keys show``, the link, ``doctor``) with what it holds and where it goes.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from linetap.firmware import cli, doctor, keys
from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import ConfigError
from linetap.sync.link import Link
from linetap.sync.mqtt import tls_files
from linetap.sync.pki import CertificateAuthority

DEVICE_ID = "lt-desk-1"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ec_key() -> bytes:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _rsa_key() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue_client(DEVICE_ID)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    keys.keys_init(data, str(pyrage.x25519.Identity.generate().to_public()))
    return data


def provision_tls(data: Path, fleet, settings: SyncSection | None = None) -> None:
    """What the setup guide says: the CA, the certificate and the TLS key where sync.* names them."""
    ca, issued = fleet
    settings = settings or SyncSection()
    for name, source in ((settings.ca_file, ca.cert_file), (settings.cert_file, issued.cert_file),
                         (settings.key_file, issued.key_file)):
        (data / name).write_bytes(source.read_bytes())
    (data / settings.key_file).chmod(0o600)


def run(*argv: str) -> int:
    return cli.main(list(argv))


def test_the_tls_files_and_the_signing_key_have_separate_default_names(box: Path, fleet, capsys) -> None:
    settings = SyncSection()
    assert (settings.key_file, settings.cert_file) == ("keys/tls.key", "keys/tls.crt")
    assert f"{keys.KEYS_DIR}/{keys.DEVICE_KEY}" not in (settings.key_file, settings.cert_file, settings.ca_file)
    assert run("keys", "show", "--data-dir", str(box)) == 0
    before = capsys.readouterr().out
    provision_tls(box, fleet)
    assert run("keys", "show", "--data-dir", str(box)) == 0
    assert capsys.readouterr().out == before  # the signing key is still the one enrolled
    ca, cert, key = tls_files(SyncSection(broker="broker.example"), box)
    assert key.read_bytes() == fleet[1].key_file.read_bytes()


@pytest.mark.parametrize("kind,make", [("EC", _ec_key), ("RSA", _rsa_key)])
def test_keys_show_refuses_a_tls_key_where_the_signing_key_belongs(box: Path, capsys, kind: str, make) -> None:
    (box / "keys/device.key").write_bytes(make())
    assert run("keys", "show", "--data-dir", str(box)) == 1
    err = capsys.readouterr().err
    assert f"holds an {kind} private key" in err and "TLS" in err
    assert "keys/tls.key" in err and "Ed25519" in err and "enrol" in err


def test_keys_show_refuses_a_certificate_where_the_signing_key_belongs(box: Path, fleet, capsys) -> None:
    (box / "keys/device.key").write_bytes(fleet[1].cert_file.read_bytes())
    assert run("keys", "show", "--data-dir", str(box)) == 1
    err = capsys.readouterr().err
    assert "holds a certificate" in err and "keys/tls.crt" in err


def test_keys_init_does_not_take_a_tls_key_for_the_signing_key(box: Path, capsys) -> None:
    (box / "keys/device.key").write_bytes(_ec_key())
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    assert run("keys", "init", "--data-dir", str(box), "--central-recipient", recipient) == 1
    assert "TLS" in capsys.readouterr().err


def test_the_link_refuses_the_signing_key_as_its_tls_key(box: Path, fleet) -> None:
    settings = SyncSection(broker="broker.example", key_file="keys/device.key")
    provision_tls(box, fleet, SyncSection(key_file="keys/unused.key"))
    with pytest.raises(ConfigError, match=r"sync.key_file = 'keys/device.key'.*Ed25519 signing key.*keys/tls.key"):
        Link(settings, client_id=DEVICE_ID, data_dir=box, clock=SystemClock())


def test_the_link_refuses_a_certificate_as_its_key_and_a_key_as_its_certificate(box: Path, fleet) -> None:
    provision_tls(box, fleet)
    (box / "keys/tls.key").write_bytes(fleet[1].cert_file.read_bytes())
    with pytest.raises(ConfigError, match=r"sync.key_file = 'keys/tls.key'.*holds a certificate"):
        tls_files(SyncSection(broker="broker.example"), box)
    provision_tls(box, fleet)
    (box / "keys/tls.crt").write_bytes(fleet[1].key_file.read_bytes())
    with pytest.raises(ConfigError, match=r"sync.cert_file = 'keys/tls.crt'.*private key.*no certificate"):
        tls_files(SyncSection(broker="broker.example"), box)


def _context(tmp_path: Path, data: Path, config: str) -> doctor.Context:
    path = tmp_path / "linetap.toml"
    path.write_text(f'[device]\nid = "{DEVICE_ID}"\n' + config)
    now = datetime.datetime.now(datetime.UTC).timestamp()  # the certificates are made today
    return doctor.Context(path, data, parts=doctor.BoardParts(), say=lambda text: None,
                          clock=ManualClock(start=0.0, wall_offset=now))


def test_doctor_fails_the_keys_check_on_a_tls_key_in_place_of_the_signing_key(tmp_path: Path, box: Path) -> None:
    (box / "keys/device.key").write_bytes(_ec_key())
    result = doctor.check_keys(_context(tmp_path, box, ""))
    assert result.status == "fail" and "holds an EC private key" in result.finding
    assert "keys/tls.key" in result.fix


def test_doctor_fails_the_broker_check_on_the_signing_key_as_tls_key(tmp_path: Path, box: Path, fleet) -> None:
    provision_tls(box, fleet, SyncSection(key_file="keys/unused.key"))
    result = doctor.check_broker(_context(tmp_path, box, '[sync]\nbroker = "127.0.0.1"\nport = 1\n'
                                                         'key_file = "keys/device.key"\n'))
    assert result.status == "fail" and "Ed25519 signing key" in result.finding
    assert "keys/tls.key" in result.fix


def test_a_box_set_up_with_the_old_names_is_told_where_its_certificate_goes(box: Path, fleet) -> None:
    provision_tls(box, fleet)
    (box / "keys/tls.crt").rename(box / "keys/device.crt")
    with pytest.raises(ConfigError, match=r"keys/device.crt is there from an older setup: move it to .*keys/tls.crt"):
        tls_files(SyncSection(broker="broker.example"), box)
