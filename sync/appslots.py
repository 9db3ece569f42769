"""The app root's A/B slots and the files the box and root hand each other during an update.

Two owners, two folders:

* ``<box data>/update/`` belongs to the ``linetap`` user (the box process):
  it stages a release at ``staged/<release_id>/`` (``release.json``,
  ``release.sig``, each file as ``<sha256>``, and for a downgrade the operator's
  offer envelope as ``offer.env``), then asks root through ``request.json``;
  once the version is prepared and the line idle it writes ``switch.json``;
  the new version, once running, says ``healthy.json`` or ``unhealthy.json``.
* ``<app>`` (``LINETAP_APP_ROOT``, ``/data/app`` on the image) belongs to root:
  ``versions/<v>/`` (``venv/``, ``wheels/<sha256>``, ``version.json``), the
  symlinks ``current`` and ``previous`` (``versions/<v>``, switched by renaming
  a new link over the old), ``prepared.json``, ``trial.json``,
  ``outcome.json`` (readable by all), ``release.pub`` and ``operator.pub``
  (the keys root trusts), ``gate.lock``.

Formats (compact JSON, sorted keys, ids are 64 lower-case hex, versions as
:func:`linetap.sync.release.parse_version` takes them)::

    request.json    {"allow_downgrade": bool, "at_ms": int, "release_id": id, "version": v}
    switch.json     {"release_id": id, "version": v}
    healthy.json    {"version": v}
    unhealthy.json  {"code": code, "reason": text, "version": v}
    prepared.json   {"release_id": id, "version": v}
    version.json    {"release_id": id, "version": v}          (in versions/<v>/)
    trial.json      {"deadline_ms": int, "previous": v|null, "release_id": id, "starts": int, "version": v}
    outcome.json    {"at_ms": int, "code": code|null, "outcome": o, "reason": text,
                     "release_id": id|null, "version": v|null}

Every reader here is for hostile bytes: the ``update/`` files are written by
a less trusted user and read by root, and even root's own files may be
half-made by a power cut. Each is at most :data:`MAX_SLOT_FILE` bytes, read
without following a symlink, parsed by :func:`linetap.firmware.untrusted.loads`
and checked member by member; a path is never taken from one. A bad file is a
:class:`SlotFileError` naming the file and what is wrong. Writers are atomic
(:mod:`linetap.firmware.durable`).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware.durable import DurableFiles, fsync_dir
from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import public_key_from_b64
from linetap.firmware.manifest import canonical
from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, loads
from linetap.sync.release import HEX64, VERSION
from linetap.sync.slotgate import APP_ROOT_ENV, DEFAULT_APP_ROOT, Health, Named, Outcome, Request, Trial
from linetap.sync.updatewire import CODES, MAX_REASON, OUTCOMES

MAX_SLOT_FILE = 4096

# <box data>/update/
UPDATE_DIR = "update"
STAGED = "staged"
REQUEST = "request.json"
SWITCH = "switch.json"
HEALTHY = "healthy.json"
UNHEALTHY = "unhealthy.json"
STAGED_MANIFEST = "release.json"
STAGED_SIGNATURE = "release.sig"
STAGED_OFFER = "offer.env"

# <app>/
VERSIONS = "versions"
CURRENT = "current"
PREVIOUS = "previous"
PREPARED = "prepared.json"
TRIAL = "trial.json"
OUTCOME = "outcome.json"
RELEASE_KEY = "release.pub"
OPERATOR_KEY = "operator.pub"
LOCK = "gate.lock"
VERSION_FILE = "version.json"
VENV = "venv"
WHEELS = "wheels"


class SlotFileError(Untrusted):
    """An update hand-over file is unreadable or does not hold what its format says."""


# ----------------------------------------------------------------- paths --

def update_dir(data_dir: Path) -> Path:
    return Path(data_dir) / UPDATE_DIR


def staged_dir(data_dir: Path, release_id: str) -> Path:
    """``staged/<release_id>/``; the id is checked, so a path is never made from hostile text."""
    return update_dir(data_dir) / STAGED / _check_id(release_id, "release id")


def staged_file(data_dir: Path, release_id: str, sha256: str) -> Path:
    return staged_dir(data_dir, release_id) / _check_id(sha256, "file sha256")


def version_dir(app_root: Path, version: str) -> Path:
    return Path(app_root) / VERSIONS / _check_version(version, "version")


def version_link(version: str) -> str:
    """What ``current`` and ``previous`` hold: relative, so the app root may move."""
    return f"{VERSIONS}/{_check_version(version, 'version')}"


def wheel_path(app_root: Path, version: str, sha256: str) -> Path:
    """A kept release file: the box looks here before it fetches a file again."""
    return version_dir(app_root, version) / WHEELS / _check_id(sha256, "file sha256")


# ------------------------------------------------------- checks (values) --

def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise SlotFileError(f"{what} {str(value)[:70]!r} is not 64 lower-case hex digits")
    return value


def _check_version(value: Any, what: str) -> str:
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise SlotFileError(f"{what} {str(value)[:40]!r} is not 1-4 dotted whole numbers such as 0.1.2")
    return value


def _check_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
        raise SlotFileError(f"{what} {str(value)[:40]!r} is not a whole number from 0 to {MAX_SAFE_INT}")
    return value


def _check_code(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if value not in CODES:
        raise SlotFileError(f"{what} {str(value)[:40]!r} is not one of the update codes ({', '.join(CODES)})")
    return value


def _check_reason(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise SlotFileError(f"{what} is not a text of at most {MAX_REASON} characters")
    return value


# ------------------------------------------------------------- reading --

def read_bounded(path: Path, *, max_bytes: int = MAX_SLOT_FILE) -> bytes | None:
    """The bytes of regular file ``path`` (never through a symlink), None when absent.

    More than ``max_bytes``, a symlink or anything but a regular file is a
    :class:`SlotFileError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SlotFileError(f"{path} is a symbolic link; remove it (update files are plain files)") from None
        raise SlotFileError(f"{path} cannot be read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SlotFileError(f"{path} is not a plain file; remove it")
        data = b""
        while len(data) <= max_bytes:
            block = os.read(fd, max_bytes + 1 - len(data))
            if not block:
                break
            data += block
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SlotFileError(f"{path} is over {max_bytes} bytes; remove it")
    return data


def _read_object(path: Path, members: set[str], *, optional: set[str] = frozenset()) -> dict[str, Any] | None:
    data = read_bounded(path)
    if data is None:
        return None
    try:
        value = loads(data, what=str(path), max_bytes=MAX_SLOT_FILE, max_depth=2)
    except Untrusted as e:
        raise SlotFileError(str(e)) from None
    if not isinstance(value, dict) or not members - optional <= set(value) <= members:
        raise SlotFileError(f"{path} must be a JSON object with {', '.join(sorted(members))}; remove it")
    return value


def _read_named(path: Path) -> Named | None:
    value = _read_object(path, {"release_id", "version"})
    if value is None:
        return None
    return Named(release_id=_check_id(value["release_id"], f"{path} release_id"),
                 version=_check_version(value["version"], f"{path} version"))


def read_request(data_dir: Path) -> Request | None:
    path = update_dir(data_dir) / REQUEST
    value = _read_object(path, {"allow_downgrade", "at_ms", "release_id", "version"})
    if value is None:
        return None
    if not isinstance(value["allow_downgrade"], bool):
        raise SlotFileError(f"{path} allow_downgrade is not true or false")
    return Request(release_id=_check_id(value["release_id"], f"{path} release_id"),
                   version=_check_version(value["version"], f"{path} version"),
                   allow_downgrade=value["allow_downgrade"], at_ms=_check_int(value["at_ms"], f"{path} at_ms"))


def read_switch(data_dir: Path) -> Named | None:
    return _read_named(update_dir(data_dir) / SWITCH)


def read_healthy(data_dir: Path) -> Health | None:
    path = update_dir(data_dir) / HEALTHY
    value = _read_object(path, {"version"})
    return None if value is None else Health(_check_version(value["version"], f"{path} version"), healthy=True)


def read_unhealthy(data_dir: Path) -> Health | None:
    path = update_dir(data_dir) / UNHEALTHY
    value = _read_object(path, {"code", "reason", "version"})
    if value is None:
        return None
    return Health(_check_version(value["version"], f"{path} version"), healthy=False,
                  code=_check_code(value["code"], f"{path} code"),
                  reason=_check_reason(value["reason"], f"{path} reason"))


def read_health(data_dir: Path) -> tuple[Health | None, Health | None]:
    """(healthy.json, unhealthy.json), each None when absent."""
    return read_healthy(data_dir), read_unhealthy(data_dir)


def read_prepared(app_root: Path) -> Named | None:
    return _read_named(Path(app_root) / PREPARED)


def read_version_file(app_root: Path, version: str) -> Named | None:
    return _read_named(version_dir(app_root, version) / VERSION_FILE)


def read_trial(app_root: Path) -> Trial | None:
    path = Path(app_root) / TRIAL
    value = _read_object(path, {"deadline_ms", "previous", "release_id", "starts", "version"})
    if value is None:
        return None
    previous = value["previous"]
    return Trial(version=_check_version(value["version"], f"{path} version"),
                 release_id=_check_id(value["release_id"], f"{path} release_id"),
                 previous=None if previous is None else _check_version(previous, f"{path} previous"),
                 deadline_ms=_check_int(value["deadline_ms"], f"{path} deadline_ms"),
                 starts=_check_int(value["starts"], f"{path} starts"))


def read_outcome(app_root: Path) -> Outcome | None:
    path = Path(app_root) / OUTCOME
    value = _read_object(path, {"at_ms", "code", "outcome", "reason", "release_id", "version"})
    if value is None:
        return None
    if value["outcome"] not in OUTCOMES:
        raise SlotFileError(f"{path} outcome {str(value['outcome'])[:40]!r} is not one of {', '.join(OUTCOMES)}")
    return Outcome(version=None if value["version"] is None else _check_version(value["version"], f"{path} version"),
                   release_id=None if value["release_id"] is None
                   else _check_id(value["release_id"], f"{path} release_id"),
                   outcome=value["outcome"], code=_check_code(value["code"], f"{path} code", optional=True),
                   reason=_check_reason(value["reason"], f"{path} reason"),
                   at_ms=_check_int(value["at_ms"], f"{path} at_ms"))


def read_trusted_key(app_root: Path, name: str) -> list[Ed25519PublicKey]:
    """The key in ``<app>/release.pub`` or ``operator.pub`` (one line of base64, as ``keys/operator.pub``).

    Absent: an empty list (everything it would check is refused).
    """
    path = Path(app_root) / name
    data = read_bounded(path)
    if data is None:
        return []
    text = data.decode("ascii", errors="replace").strip().removeprefix("ed25519:")
    try:
        return [public_key_from_b64(text)]
    except ConfigError as e:
        raise SlotFileError(f"{path}: {e}") from None


def read_link(app_root: Path, name: str) -> str | None:
    """The version ``current`` or ``previous`` points at, if it is a complete version folder; else None.

    None means the factory version runs (the link is absent, or names
    something that is not a finished ``versions/<v>``).
    """
    try:
        target = os.readlink(Path(app_root) / name)
    except (FileNotFoundError, OSError):
        return None
    prefix = f"{VERSIONS}/"
    version = target[len(prefix):] if target.startswith(prefix) else ""
    if not VERSION.fullmatch(version):
        return None
    try:
        named = read_version_file(app_root, version)
    except SlotFileError:
        return None
    return version if named is not None and named.version == version else None


# ------------------------------------------------------------- writing --

_FILES = DurableFiles(mode=0o644)


def _write(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _FILES.write(path, canonical(value))


def write_request(data_dir: Path, request: Request) -> None:
    _check_id(request.release_id, "release id")
    _check_version(request.version, "version")
    _write(update_dir(data_dir) / REQUEST, asdict(request))


def write_switch(data_dir: Path, named: Named) -> None:
    _write(update_dir(data_dir) / SWITCH, asdict(_checked(named)))


def write_health(data_dir: Path, health: Health) -> None:
    """healthy.json or unhealthy.json as ``health.healthy`` says (the other one is removed first)."""
    _check_version(health.version, "version")
    folder = update_dir(data_dir)
    if health.healthy:
        remove(folder / UNHEALTHY)
        _write(folder / HEALTHY, {"version": health.version})
    else:
        _check_code(health.code, "code")
        remove(folder / HEALTHY)
        _write(folder / UNHEALTHY, {"code": health.code, "reason": _check_reason(health.reason[:MAX_REASON],
                                                                                 "reason"),
                                    "version": health.version})


def write_prepared(app_root: Path, named: Named) -> None:
    _write(Path(app_root) / PREPARED, asdict(_checked(named)))


def write_version_file(folder: Path, named: Named) -> None:
    _write(folder / VERSION_FILE, asdict(_checked(named)))


def write_trial(app_root: Path, trial: Trial) -> None:
    _check_version(trial.version, "version")
    _write(Path(app_root) / TRIAL, asdict(trial))


def write_outcome(app_root: Path, outcome: Outcome) -> None:
    value = asdict(outcome)
    value["reason"] = outcome.reason[:MAX_REASON]
    _write(Path(app_root) / OUTCOME, value)


def remove(path: Path) -> None:
    """Delete ``path`` durably if it is there (a file or a symlink, never followed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def flip(app_root: Path, name: str, version: str | None) -> None:
    """Point link ``name`` at ``versions/<version>`` atomically (new link renamed over it); None removes it."""
    link = Path(app_root) / name
    if version is None:
        remove(link)
        return
    new = link.with_name(f".{name}.new")
    try:
        os.unlink(new)
    except FileNotFoundError:
        pass
    os.symlink(version_link(version), new)
    os.replace(new, link)
    fsync_dir(link.parent)


def _checked(named: Named) -> Named:
    _check_id(named.release_id, "release id")
    _check_version(named.version, "version")
    return named
