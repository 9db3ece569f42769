"""The box's keys: its Ed25519 signing key and the central store's age recipient.

Layout under the data dir::

    keys/                 0700
      device.key          0600  Ed25519 private key, PKCS#8 PEM, unencrypted: signs manifests
      central.recipient   0644  the central store's X25519 recipient (age1...)
      operator.pub        0644  the fleet operator's Ed25519 public key (base64), optional
      store.pub           0644  the central store's Ed25519 store key (base64): checks receipts, optional
      release.pub         0644  the release key's Ed25519 public half (base64): checks updates, optional
      ca.pem              0644  the fleet CA                       } the broker connection
      tls.crt             0644  this box's client certificate      } (``sync.ca_file``,
      tls.key             0600  its private key (RSA or EC)        }  ``cert_file``, ``key_file``)

The box holds no key that decrypts its recordings: segments are encrypted to
the central recipient only. The signing key proves which box wrote a
manifest; its public half is enrolled with the central store
(:func:`public_key_b64`, :func:`public_key_pem`).

The signing key is unencrypted on disk on purpose: the box must sign after an
unattended reboot, and there is no secure element to hold a passphrase.
Protecting it is the file mode's job, so a key file that anyone but the owner
can read is refused rather than used.

The operator key is the one whose signed commands and configs the box
obeys (:mod:`linetap.sync.fleet`). Without it the box refuses every fleet
command and config: a box nobody enrolled an operator for takes orders from
nobody.

The store key is the one the central store signs delivery receipts with
(:mod:`linetap.firmware.receipt`). Without it the box cannot check a receipt, so
it keeps none, and retention deletes synced recordings on the stored ack
alone, as before receipts (waiting for a receipt it can never check would
only fill the spool). It is not the operator key (a key that
commands boxes must not also vouch for storage), and ``keys init`` refuses
the operator's key, the box's own key, an age recipient or PEM given as one.

The release key is the one releases are signed with (:mod:`linetap.sync.release`).
Without it every update offer is refused ``bad-signature``. It is neither
the operator key (which says which box installs when) nor the store key.

The two private keys have different jobs and different files: the signing
key is made on the box by ``keys init`` and enrolled once; the TLS key comes
from the fleet's CA with its certificate and may be renewed. Copying the TLS
key over ``device.key`` destroys the signing key, so each loader checks what
its file holds (:func:`pem_contents`) and says what it found and where it
belongs: an RSA or EC key or a certificate is refused as the signing key, and
an Ed25519 key or a certificate as the TLS key.

Nothing here logs key material; log records name files and fingerprints only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pyrage
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.durable import fsync_dir, write_durably, write_new_private
from linetap.firmware.errors import ConfigError

logger = logging.getLogger(__name__)

KEYS_DIR = "keys"
DEVICE_KEY = "device.key"
TLS_KEY = "tls.key"  # the defaults of sync.key_file and sync.cert_file (firmware.config)
TLS_CERT = "tls.crt"
MAX_KEY_FILE = 64 * 1024  # a PEM key or certificate chain is a few KiB
CENTRAL_RECIPIENT = "central.recipient"
OPERATOR_KEY = "operator.pub"
INIT_HINT = "run `linetap keys init --central-recipient age1...` with the central store's recipient"
STORE_KEY = "store.pub"
STORE_HINT = ("run `linetap keys init --central-recipient age1... --store-key <base64>` with the store "
              "public key `linetap-central keys init` prints")
RELEASE_KEY = "release.pub"
RELEASE_HINT = ("run `linetap keys init --central-recipient age1... --release-key <base64>` with the release "
                "public key `linetap-central release keygen` prints")
OPERATOR_HINT = ("run `linetap keys init --central-recipient age1... --operator-key <base64>` with the "
                 "operator public key `linetap-central keys init` prints")


class KeyMissing(ConfigError, FileNotFoundError):
    """A key file the box needs does not exist yet."""


class KeyPermissions(ConfigError, PermissionError):
    """A key file or folder is readable by more than its owner."""


class WrongKeyKind(ConfigError, ValueError):
    """A key file holds another kind of key (or a certificate) than the one that belongs there.

    ``finding`` says what the file holds, ``fix`` where that belongs and what
    to do; the message is both, joined by "; ".
    """

    def __init__(self, finding: str, fix: str) -> None:
        super().__init__(f"{finding}; {fix}")
        self.finding = finding
        self.fix = fix


@dataclass(frozen=True)
class PemContents:
    """What a PEM file holds: its private key's kind (``Ed25519``, ``RSA``, ``EC``, ...), if any, and
    whether it holds a certificate."""

    key: str | None  # None: no private key; "encrypted"; "unreadable": a PRIVATE KEY block that does not load
    certificate: bool
    public_raw: bytes | None = None  # of an Ed25519 key, to tell the box's own signing key

    def describe(self) -> str:
        if self.key == "encrypted":
            return "an encrypted private key"
        if self.key == "unreadable":
            return "a private key block that does not load"
        if self.key is not None:
            return f"{'an' if self.key[0] in 'AEIORSX' else 'a'} {self.key} private key"  # "an RSA", "a DSA"
        return "a certificate" if self.certificate else "no PEM key or certificate"


@dataclass(frozen=True)
class KeyInfo:
    """What ``keys init`` produced: paths and the public half for enrolment."""

    device_key: Path
    recipient_file: Path
    public_key_b64: str
    created: bool  # False when an existing signing key was kept
    operator_key_file: Path | None = None  # stored by this init; None when none was given
    store_key_file: Path | None = None  # likewise
    release_key_file: Path | None = None  # likewise


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / KEYS_DIR


def parse_recipient(text: str) -> pyrage.x25519.Recipient:
    """An ``age1...`` X25519 recipient, validated; ConfigError says what is wrong with it."""
    value = text.strip()
    if not value.startswith("age1"):
        raise ConfigError(f"central recipient {value[:12]!r}... is not an age X25519 recipient: "
                          "it must start with 'age1' (the output of `age-keygen -y central.key`)")
    try:
        return pyrage.x25519.Recipient.from_str(value)
    except pyrage.RecipientError as e:
        raise ConfigError(f"central recipient {value[:12]!r}... is not a valid age recipient ({e}); "
                          "copy it again from `age-keygen -y central.key` on the central store") from e


def keys_init(data_dir: Path, recipient: str, operator_key: str | None = None,
              store_key: str | None = None, release_key: str | None = None) -> KeyInfo:
    """Create the signing key (once), store the central recipient and, if given, the operator and store keys.

    An existing signing key is kept: the central store has enrolled its public
    half, and replacing it would orphan every manifest signed so far. The
    recipient and operator key are replaced, so a fleet can move to new ones.
    """
    parsed = parse_recipient(recipient)
    operator = None if operator_key is None else _parse_operator_key(operator_key)
    store = None if store_key is None else _parse_store_key(
        store_key, operators=[operator] if operator is not None else load_operator_keys(data_dir),
        own=_signing_public_raw(data_dir))
    others = [k for k in (operator, store) if k is not None] + load_operator_keys(data_dir) + list(
        load_store_keys(data_dir).values())
    releaser = None if release_key is None else _parse_release_key(release_key, others=others,
                                                                    own=_signing_public_raw(data_dir))
    folder = keys_dir(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask
    key_path = folder / DEVICE_KEY
    created = not key_path.exists()
    if created:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_new_private(key_path, pem)
    key = load_signing_key(data_dir)
    recipient_path = folder / CENTRAL_RECIPIENT
    write_durably(recipient_path, (str(parsed) + "\n").encode(), mode=0o644)
    operator_path = _keep_public(folder / OPERATOR_KEY, operator)
    if store is not None and public_key_raw(store) == public_key_raw(key.public_key()):
        raise WrongKeyKind("--store-key is this box's own signing key", STORE_HINT)
    store_path = _keep_public(folder / STORE_KEY, store)
    release_path = _keep_public(folder / RELEASE_KEY, releaser)
    fsync_dir(folder)
    info = KeyInfo(key_path, recipient_path, public_key_b64(key.public_key()), created, operator_path, store_path,
                   release_path)
    logger.info("keys init device_key=%s created=%s fingerprint=%s", key_path, created,
                fingerprint(key.public_key()))
    return info


def _keep_public(path: Path, key: Ed25519PublicKey | None) -> Path | None:
    """Write a public key file (base64, one line, 0644) when ``key`` is given."""
    if key is None:
        return None
    write_durably(path, (public_key_b64(key) + "\n").encode(), mode=0o644)
    logger.info("keys init %s fingerprint=%s", path.name, fingerprint(key))
    return path


def load_signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The device's signing key; refused if missing or readable by others."""
    folder = keys_dir(data_dir)
    path = folder / DEVICE_KEY
    if not path.exists():
        raise KeyMissing(f"no device signing key at {path}: {INIT_HINT}")
    _check_private(folder, 0o700, "folder")
    _check_private(path, 0o600, "file")
    data = _read_key_file(path)
    contents = pem_contents(data)
    replace = (f"restore {path} from a backup, or move it aside and {INIT_HINT}, then enrol the new "
               "public key at the central store again")
    if contents.key in ("RSA", "EC") or (contents.key is None and contents.certificate):
        held = contents.describe()
        belongs = (f"a TLS client key belongs at {KEYS_DIR}/{TLS_KEY} (sync.key_file)" if contents.key else
                   f"a TLS client certificate belongs at {KEYS_DIR}/{TLS_CERT} (sync.cert_file)")
        raise WrongKeyKind(f"device signing key {path} holds {held} (TLS material for the broker?), not the "
                           "box's Ed25519 signing key",
                           f"{belongs}: copy it there from the fleet's CA; the signing key it replaced "
                           f"cannot be recovered from it: {replace}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"device signing key {path} is not a PEM private key ({e}); move it "
                          f"aside and {INIT_HINT} (the new public key must be enrolled again)") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise WrongKeyKind(f"device signing key {path} holds {contents.describe()}, not the box's Ed25519 "
                           "signing key", replace)
    return key


def pem_contents(data: bytes) -> PemContents:
    """What PEM ``data`` holds, judged without trusting its labels alone."""
    labels = {m.group(1) for m in _PEM_LABEL.finditer(data)}
    certificate = b"CERTIFICATE" in labels or b"TRUSTED CERTIFICATE" in labels
    if b"ENCRYPTED PRIVATE KEY" in labels:
        return PemContents("encrypted", certificate)
    if not any(label.endswith(b"PRIVATE KEY") for label in labels):
        return PemContents(None, certificate)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted" (legacy PEM encryption)
        return PemContents("encrypted", certificate)
    except (ValueError, UnsupportedAlgorithm):
        return PemContents("unreadable", certificate)
    if isinstance(key, Ed25519PrivateKey):
        return PemContents("Ed25519", certificate, public_key_raw(key.public_key()))
    if isinstance(key, rsa.RSAPrivateKey):
        return PemContents("RSA", certificate)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return PemContents("EC", certificate)
    return PemContents(type(key).__name__.removesuffix("PrivateKey").lstrip("_") or "unknown", certificate)


def check_tls_key(path: Path, data_dir: Path) -> None:
    """Refuse a TLS client key file that holds the signing key, an Ed25519 key, a certificate or no key."""
    contents = pem_contents(_read_key_file(path))
    tls_key = f"{KEYS_DIR}/{TLS_KEY}"
    if contents.key == "Ed25519":
        own = contents.public_raw == _signing_public_raw(data_dir) or _same_file(path, keys_dir(data_dir) / DEVICE_KEY)
        raise WrongKeyKind(
            f"{path} holds " + ("the box's Ed25519 signing key, which signs its recordings" if own else
                                "an Ed25519 private key, the kind the box signs its recordings with") +
            ", not a TLS client key",
            f"copy the TLS key issued with the box's certificate (RSA or EC) to {tls_key} and point "
            f"sync.key_file at it (the default); leave {KEYS_DIR}/{DEVICE_KEY} where it is")
    if contents.key is None:
        raise WrongKeyKind(f"{path} holds {contents.describe()}, not a private key",
                           f"the TLS client key issued with the certificate belongs there ({tls_key}); a "
                           f"certificate goes to sync.cert_file ({KEYS_DIR}/{TLS_CERT})")
    if contents.key in ("encrypted", "unreadable"):
        raise WrongKeyKind(f"{path} holds {contents.describe()}",
                           f"the box needs the TLS client key unencrypted in PEM at {tls_key} (mode 0600)")


def check_tls_certificate(path: Path) -> None:
    """Refuse a TLS client certificate file that holds no certificate (a private key, say)."""
    contents = pem_contents(_read_key_file(path))
    if not contents.certificate:
        held = f"{contents.describe()} and no certificate" if contents.key else contents.describe()
        raise WrongKeyKind(f"{path} holds {held}",
                           f"the box's client certificate (PEM, CN = its device id) belongs there "
                           f"({KEYS_DIR}/{TLS_CERT}), its private key at sync.key_file ({KEYS_DIR}/{TLS_KEY})")


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")


def _read_key_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise WrongKeyKind(f"{path} is larger than {MAX_KEY_FILE} bytes: not a PEM key or certificate",
                           "check that sync.* and keys/ name the right files")
    return data


def _signing_public_raw(data_dir: Path) -> bytes | None:
    try:
        key = serialization.load_pem_private_key(_read_key_file(keys_dir(data_dir) / DEVICE_KEY), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm, ConfigError):
        return None
    return public_key_raw(key.public_key()) if isinstance(key, Ed25519PrivateKey) else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def load_recipient(data_dir: Path) -> pyrage.x25519.Recipient:
    """The central store's recipient; without it the box must not record."""
    path = keys_dir(data_dir) / CENTRAL_RECIPIENT
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyMissing(f"no central recipient at {path}: the box cannot encrypt recordings; "
                         f"{INIT_HINT}") from None
    return parse_recipient(text)


def _public_key_text(path: Path, what: str, hint: str) -> str | None:
    """The text of a public key file, None when there is none."""
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({e}); {hint}") from e


def load_operator_keys(data_dir: Path) -> list[Ed25519PublicKey]:
    """The operator public keys the box obeys: none until ``keys init --operator-key`` stored one."""
    path = keys_dir(data_dir) / OPERATOR_KEY
    text = _public_key_text(path, "operator key", OPERATOR_HINT)
    return [] if text is None else [_parse_operator_key(text, source=str(path))]


def load_store_keys(data_dir: Path) -> dict[str, Ed25519PublicKey]:
    """The store keys the box checks receipts with, by receipt key id: empty until ``keys init --store-key``."""
    path = keys_dir(data_dir) / STORE_KEY
    text = _public_key_text(path, "store key", STORE_HINT)
    if text is None:
        return {}
    key = _parse_store_key(text, source=str(path))
    return {store_key_id(key): key}


def load_release_keys(data_dir: Path) -> list[Ed25519PublicKey]:
    """The release keys updates must be signed with: none until ``keys init --release-key`` stored one."""
    path = keys_dir(data_dir) / RELEASE_KEY
    text = _public_key_text(path, "release key", RELEASE_HINT)
    return [] if text is None else [_parse_release_key(text, source=str(path))]


def _parse_release_key(text: str, *, source: str = "--release-key", others: list[Ed25519PublicKey] = (),
                       own: bytes | None = None) -> Ed25519PublicKey:
    """The release key's public half in base64 (``ed25519:`` before it is allowed); not the operator's,
    the store's or the box's own key."""
    value = text.strip().removeprefix("ed25519:")
    if value.startswith(("age1", "-----BEGIN")):
        raise WrongKeyKind(f"{source} is {'an age recipient' if value.startswith('age1') else 'PEM'}, not "
                           "the release key's Ed25519 public half in base64", RELEASE_HINT)
    try:
        key = public_key_from_b64(value)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}; {RELEASE_HINT}") from None
    raw = public_key_raw(key)
    if any(public_key_raw(k) == raw for k in others) or raw == own:
        raise WrongKeyKind(f"{source} is the operator, store or box key; releases are signed by a key of "
                           "their own", RELEASE_HINT)
    return key


def store_key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a store key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def _parse_store_key(text: str, *, source: str = "--store-key", operators: list[Ed25519PublicKey] = (),
                     own: bytes | None = None) -> Ed25519PublicKey:
    """The store's Ed25519 public key in base64; an age recipient, PEM, the operator's or the box's key refused."""
    value = text.strip()
    if value.startswith("age1"):
        raise WrongKeyKind(f"{source} is an age recipient (the central recipient), not the store's Ed25519 "
                           "public key", STORE_HINT)
    if value.startswith("-----BEGIN"):
        raise WrongKeyKind(f"{source} is PEM, not the store's public key in base64", STORE_HINT)
    try:
        key = public_key_from_b64(value)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}; {STORE_HINT}") from None
    raw = public_key_raw(key)
    if any(public_key_raw(k) == raw for k in operators):
        raise WrongKeyKind(f"{source} is the operator key, which commands boxes, not the store key that "
                           "signs receipts", STORE_HINT)
    if own is not None and raw == own:
        raise WrongKeyKind(f"{source} is this box's own signing key", STORE_HINT)
    return key


def _parse_operator_key(text: str, *, source: str = "--operator-key") -> Ed25519PublicKey:
    try:
        return public_key_from_b64(text.strip())
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}; {OPERATOR_HINT}") from None


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The 32 raw public key bytes in standard base64: the form manifests carry."""
    return base64.b64encode(public_key_raw(key)).decode("ascii")


def public_key_pem(key: Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM, for tools that want a standard file."""
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


_P = 2**255 - 19  # the field prime of Ed25519
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022  # y of a point of order 8
# y of every point of small order (1, 2, 4, 8): the identity, (0, -1), (±sqrt(-1), 0) and the four of order 8.
_SMALL_ORDER_Y = frozenset({1, _P - 1, 0, _Y8, _P - _Y8})


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """The Ed25519 public key in ``text``; a point of small order (all zeros, the identity...) is refused:
    it proves nothing, since signatures that verify under it can be made without any private key."""
    try:
        raw = base64.b64decode(text, validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise ConfigError(f"public key {text[:16]!r}... is not 32 base64-encoded Ed25519 bytes ({e})") from e
    if (int.from_bytes(raw, "little") & (2**255 - 1)) % _P in _SMALL_ORDER_Y:
        raise ConfigError(f"public key {text[:16]!r}... is a point of small order, not a real key; "
                          "copy the public key again from where it was made (keys show / keys init)")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short, loggable name for a public key (first 16 hex digits of its sha256)."""
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def _check_private(path: Path, wanted: int, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyPermissions(f"device key {what} {path} has mode {mode:04o}, readable by others; "
                             f"fix it with `chmod {wanted:o} {path}` (and check who may have copied it)")
