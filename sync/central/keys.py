"""The central store's keys: the age identity that decrypts recordings, the operator and store signing keys.

Layout under the central data dir::

    keys/                 0700
      central.key         0600  age X25519 identity, in age-keygen's file format
      operator.key        0600  Ed25519 private key, PKCS#8 PEM (tombstones, fleet commands)
      store.key           0600  Ed25519 private key, PKCS#8 PEM (delivery receipts, firmware/receipt.py)

``central.key`` is a standard age identity file: ``age -d -i keys/central.key
000000.age`` decrypts a stored segment with no project code. Its public half
(``age1...``) is what every box is given by ``linetap keys init
--central-recipient``; the store key's public half is what every box is
given by ``linetap keys init --store-key``. The store key is kept apart from
the operator key: one signs what the store received, the other commands
boxes. Keys are never replaced by ``keys init``: a new identity would make
every stored recording unreadable, a new operator key would orphan every
tombstone, a new store key would leave every box distrusting its receipts.
``keys init`` on a store that has some of its keys adds only the missing ones.
The release key (``linetap-central release keygen --out PATH``) lives
wherever the operator keeps it, never under the data dir unless put there:
it signs what boxes run, so it is the key to keep offline; ``release build``
refuses it when it is the operator or store key. Key files readable by anyone but the owner are refused, and so is a file
holding another kind of key: the broker's TLS key (PEM, RSA or EC) copied
over ``central.key``, ``operator.key`` or ``store.key`` is named as
such, with where it belongs, rather than reported as a parse error. Nothing
here logs key material.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.durable import fsync_dir, write_new_private
from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import WrongKeyKind, fingerprint, pem_contents, public_key_b64, public_key_raw

logger = logging.getLogger(__name__)

KEYS_DIR = "keys"
IDENTITY_FILE = "central.key"
OPERATOR_FILE = "operator.key"
STORE_FILE = "store.key"
INIT_HINT = "run `linetap-central keys init` (or pass --data-dir of the store that has the keys)"
TLS_HINT = ("the broker's TLS key and certificate belong in the files central.toml's [broker] key_file and "
            "cert_file name (tls/central.key and tls/central.pem, say), never in keys/")


class CentralKeyMissing(ConfigError, FileNotFoundError):
    """A key the central store needs does not exist yet."""


@dataclass(frozen=True)
class CentralKeys:
    """What ``keys init`` left in place."""

    recipient: str  # age1...: give it to every box
    operator_public_key_b64: str
    identity_created: bool
    operator_created: bool
    store_public_key_b64: str = ""  # base64 raw Ed25519: give it to every box (--store-key)
    store_created: bool = False


def keys_init(data_dir: Path, import_identity: Path | None = None) -> CentralKeys:
    folder = Path(data_dir) / KEYS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    identity_path = folder / IDENTITY_FILE
    identity_created = False
    if import_identity is not None:
        imported = _parse_identity(Path(import_identity).read_text(encoding="utf-8"), Path(import_identity))
        if identity_path.exists():
            if str(load_identity(data_dir).to_public()) != str(imported.to_public()):
                raise ConfigError(f"{identity_path} already holds another age identity; refusing to replace "
                                  "it (recordings encrypted to it would become unreadable). Move it aside "
                                  "first if you really mean to change the central key")
        else:
            write_new_private(identity_path, _identity_file(imported))
            identity_created = True
    elif not identity_path.exists():
        write_new_private(identity_path, _identity_file(pyrage.x25519.Identity.generate()))
        identity_created = True
    operator_created = _new_ed25519(folder / OPERATOR_FILE)
    store_created = _new_ed25519(folder / STORE_FILE)
    fsync_dir(folder)
    operator = load_operator_key(data_dir)
    store = load_store_key(data_dir)
    keys = CentralKeys(str(load_identity(data_dir).to_public()), public_key_b64(operator.public_key()),
                       identity_created, operator_created, public_key_b64(store.public_key()), store_created)
    logger.info("central keys init identity_created=%s operator_created=%s store_created=%s operator=%s store=%s",
                identity_created, operator_created, store_created, fingerprint(operator.public_key()),
                fingerprint(store.public_key()))
    return keys


def show_keys(data_dir: Path) -> CentralKeys:
    """The public halves boxes need, from keys already made (nothing is created)."""
    return CentralKeys(str(load_identity(data_dir).to_public()),
                       public_key_b64(load_operator_key(data_dir).public_key()), False, False,
                       public_key_b64(load_store_key(data_dir).public_key()), False)


def _new_ed25519(path: Path) -> bool:
    """Write a new Ed25519 private key to ``path`` unless a file is there; True when written."""
    if path.exists():
        return False
    key = Ed25519PrivateKey.generate()
    write_new_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return True


def load_identity(data_dir: Path) -> pyrage.x25519.Identity:
    path = Path(data_dir) / KEYS_DIR / IDENTITY_FILE
    _check_private(path)
    data = path.read_bytes()
    contents = pem_contents(data)
    if contents.key is not None or contents.certificate:
        raise WrongKeyKind(f"{path} holds {contents.describe()} (TLS material for the broker?), not the age "
                           "identity that decrypts recordings",
                           f"{TLS_HINT}; restore {path} from its backup: without it no stored recording "
                           "decrypts")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not text; it must hold one AGE-SECRET-KEY-... line, as `age-keygen -o "
                          "FILE` writes: restore it from its backup") from None
    return _parse_identity(text, path)


def load_operator_key(data_dir: Path) -> Ed25519PrivateKey:
    return _load_ed25519(Path(data_dir) / KEYS_DIR / OPERATOR_FILE, "operator")


def load_store_key(data_dir: Path) -> Ed25519PrivateKey:
    """The store key that signs delivery receipts; :class:`CentralKeyMissing` names ``keys init``.

    The operator key copied over it is refused: the two are kept apart.
    """
    path = Path(data_dir) / KEYS_DIR / STORE_FILE
    key = _load_ed25519(path, "store")
    operator = Path(data_dir) / KEYS_DIR / OPERATOR_FILE
    if operator.exists() and pem_contents(operator.read_bytes()).public_raw == public_key_raw(key.public_key()):
        raise WrongKeyKind(f"store key {path} is the operator key (operator.key), which commands boxes",
                           f"the store key signs receipts and is kept apart: move {path} aside and run "
                           "`linetap-central keys init` to make a store key, then give boxes its public half")
    return key


def _load_ed25519(path: Path, role: str) -> Ed25519PrivateKey:
    _check_private(path)
    data = path.read_bytes()
    contents = pem_contents(data)
    trusted_by = "every box trusts its public half"
    if contents.key != "Ed25519" and (contents.key is not None or contents.certificate):
        raise WrongKeyKind(f"{role} key {path} holds {contents.describe()}"
                           + (" (TLS material for the broker?)" if contents.key in (None, "RSA", "EC") else "")
                           + f", not the Ed25519 {role} signing key",
                           f"{TLS_HINT}; restore {path} from its backup ({trusted_by})")
    if data.lstrip().startswith(b"AGE-SECRET-KEY-") or b"\nAGE-SECRET-KEY-" in data:
        raise WrongKeyKind(f"{role} key {path} holds an age identity (central.key?), not the Ed25519 "
                           f"{role} signing key", f"restore {path} from its backup ({trusted_by})")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise ConfigError(f"{role} key {path} is not a PEM private key ({e}); restore it from its "
                          f"backup ({trusted_by})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{role} key {path} is a {type(key).__name__}, not Ed25519")
    return key


def make_release_key(path: Path) -> Ed25519PublicKey:
    """Write a new release key to ``path`` (0600; never over a file there); its public half."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path} exists; refusing to replace a release key (boxes trust its public half). "
                          "Choose another --out, or move the old one aside if you really mean to")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _new_ed25519(path):
        raise ConfigError(f"{path} exists; refusing to replace it")
    fsync_dir(path.parent)
    key = _load_ed25519(path, "release")
    logger.info("release key made path=%s key=%s", path, fingerprint(key.public_key()))
    return key.public_key()


def load_release_key(path: Path, data_dir: Path | None = None) -> Ed25519PrivateKey:
    """The release key at ``path`` (0600, Ed25519); the data dir's operator or store key is refused."""
    if not Path(path).is_file():
        raise CentralKeyMissing(f"no release key at {path}: make one with `linetap-central release keygen "
                                "--out PATH` (and give boxes its public half), or give the path of yours")
    key = _load_ed25519(Path(path), "release")
    if data_dir is not None:
        raw = public_key_raw(key.public_key())
        for name, role in ((OPERATOR_FILE, "operator"), (STORE_FILE, "store")):
            other = Path(data_dir) / KEYS_DIR / name
            if other.exists() and pem_contents(other.read_bytes()).public_raw == raw:
                raise WrongKeyKind(f"release key {path} is the {role} key ({name})",
                                   "the release key is kept apart from the operator and store keys: make one "
                                   "with `linetap-central release keygen --out PATH` and give boxes its public "
                                   "half (linetap keys init --release-key)")
    return key


def operator_public_key(data_dir: Path) -> Ed25519PublicKey:
    return load_operator_key(data_dir).public_key()


def _parse_identity(text: str, source: Path) -> pyrage.x25519.Identity:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
    if len(lines) != 1:
        raise ConfigError(f"{source} holds {len(lines)} age identities (AGE-SECRET-KEY-... lines); "
                          "expected exactly one, as `age-keygen -o FILE` writes")
    try:
        return pyrage.x25519.Identity.from_str(lines[0])
    except pyrage.IdentityError as e:
        raise ConfigError(f"{source}: the AGE-SECRET-KEY line is not a valid age X25519 identity ({e})") from e


def _identity_file(identity: pyrage.x25519.Identity) -> bytes:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return (f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n").encode()


def _check_private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise CentralKeyMissing(f"no central key at {path}: {INIT_HINT}") from None
    if mode & 0o077:
        raise ConfigError(f"central key {path} has mode {mode:04o}, readable by others; fix it with "
                          f"`chmod 600 {path}` (and check who may have copied it)")
