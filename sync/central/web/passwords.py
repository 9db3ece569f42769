"""Console passwords: argon2id hashes (argon2-cffi's defaults), checked in constant work for unknown users."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from linetap.firmware.errors import ConfigError

_HASHER = PasswordHasher()  # argon2id, RFC 9106's second recommended parameters
_DUMMY = _HASHER.hash("no user has this password")
MIN_LENGTH = 10
MAX_LENGTH = 1024  # argon2 takes any length; a bound keeps a hostile form cheap


def hash_password(password: str) -> str:
    check_new(password)
    return _HASHER.hash(password)


def check_new(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ConfigError(f"a console password must be {MIN_LENGTH} to {MAX_LENGTH} characters "
                          f"(this one has {len(password)}); leave it out to have one generated")


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with no hash (unknown user) the same work is done and False returned."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A random password (about 120 bits), shown once."""
    return secrets.token_urlsafe(15)
