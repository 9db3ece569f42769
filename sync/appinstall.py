"""The install step: root builds a staged release into ``<app>/versions/<v>/`` and settles trials.

``linetap update step`` runs as root when the box's hand-over files change
(a path unit on the image) and now and then (a timer: a trial's deadline
passes without any file changing). In order:

1. a trial's verdict: ``healthy.json``/``unhealthy.json`` or a passed
   deadline promote or roll back (:mod:`linetap.sync.slotgate`); after a
   rollback the recorder is restarted (``restart``);
2. ``request.json`` names a staged release: it is checked again as if the box
   were hostile — the signature with root's own ``<app>/release.pub``, every
   file's SHA-256 as it is copied, the version against the running one
   (:func:`linetap.sync.release.judge`), a downgrade only with the operator's
   signed offer (``staged/<id>/offer.env``, checked with ``<app>/operator.pub``),
   room on the disk — then built in ``versions/<v>.tmp/`` (wheels kept by
   SHA-256, a venv filled by the factory's pip with ``--no-index --no-deps``,
   an import check), renamed into place and named in ``prepared.json``.

A refusal or failure is ``outcome.json`` (``refused``/``failed``, a code and
a reason) and leaves everything else as it was. The build runs without the
gate's lock (it takes seconds; the recorder's start must not wait), only the
rename and ``prepared.json`` take it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linetap.firmware.clock import Clock
from linetap.firmware.durable import fsync_dir
from linetap.sync import appgate, appslots, release, slotgate
from linetap.sync.appgate import crash_point, now_ms
from linetap.sync.appslots import Named, Outcome, Request, SlotFileError

logger = logging.getLogger(__name__)

ROOM_FACTOR = 5  # the wheels kept plus the venv they unpack into: about 4.5 times the wheels' size
ROOM_RESERVE = 64 * 1024 * 1024  # left free for the spool, whatever the release
PIP_TIMEOUT_S = 900
TAIL_LINES = 6
READ_BLOCK = 1024 * 1024


class Refused(Exception):
    def __init__(self, code: str, reason: str, *, outcome: str = "refused") -> None:
        super().__init__(reason)
        self.code, self.reason, self.outcome = code, reason, outcome


@dataclass
class Platform:
    """What :func:`release.judge` compares a release with, and where the factory is."""

    board: str
    device_id: str
    machine: str = platform.machine()
    python: str = f"cp{sys.version_info.major}{sys.version_info.minor}"
    factory_version: str = ""
    factory_python: str = sys.executable

    def __post_init__(self) -> None:
        if not self.factory_version:
            from linetap.firmware import __version__
            self.factory_version = __version__


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class StepResult:
    health: slotgate.Decision
    prepared: Named | None = None
    outcome: Outcome | None = None
    skipped: str | None = None


def step(app_root: Path, data_dir: Path, clock: Clock, box: Platform, *, restart: Callable[[], None],
         free: Callable[[Path], int] = free_space) -> StepResult:
    """What ``linetap update step`` does: settle a trial, then prepare a requested release."""
    with appgate.locked(app_root):
        view = appgate.read_view(app_root, data_dir, now_ms(clock))
        decision = slotgate.decide(view, at_start=False)
        must_restart = appgate.apply(decision, app_root, data_dir)
        if must_restart:
            view = appgate.read_view(app_root, data_dir, now_ms(clock))
    appgate.log_decision("step", decision)
    if must_restart:
        restart()  # outside the lock: the restart runs the gate, which takes it
    result = StepResult(health=decision)
    try:
        request = appslots.read_request(data_dir)
    except SlotFileError as e:
        result.outcome = _judged(app_root, clock, None, "refused", "malformed", str(e))
        appslots.remove(appslots.update_dir(data_dir) / appslots.REQUEST)  # judged once, not at every change
        return result
    if request is None:
        return result
    current_rid = _current_release_id(app_root, view.current)
    result.skipped = slotgate.already_handled(request, view, current_rid)
    if result.skipped is not None:
        return result
    try:
        result.prepared = prepare(app_root, data_dir, request, box, view.current, free=free)
    except Refused as e:
        result.outcome = _judged(app_root, clock, request, e.outcome, e.code, e.reason)
    return result


def _judged(app_root: Path, clock: Clock, request: Request | None, outcome: str, code: str,
            reason: str) -> Outcome:
    value = Outcome(version=request.version if request else None,
                    release_id=request.release_id if request else None,
                    outcome=outcome, code=code, reason=reason, at_ms=now_ms(clock))
    appslots.write_outcome(app_root, value)
    logger.error("update step: release %s %s (%s): %s", value.version, outcome, code, reason)
    return value


def _current_release_id(app_root: Path, current: str | None) -> str | None:
    if current is None:
        return None
    named = appslots.read_version_file(app_root, current)
    return named.release_id if named else None


# --------------------------------------------------------------- checking --

def check_release(app_root: Path, data_dir: Path, request: Request, box: Platform,
                  current: str | None) -> release.Release:
    """The staged release if root's own checks pass; else :class:`Refused` with the code."""
    folder = appslots.staged_dir(data_dir, request.release_id)
    try:
        manifest = appslots.read_bounded(folder / appslots.STAGED_MANIFEST, max_bytes=release.MAX_MANIFEST)
        signature = appslots.read_bounded(folder / appslots.STAGED_SIGNATURE,
                                          max_bytes=release.SIGNATURE_BYTES)
        if manifest is None or signature is None:
            raise Refused("malformed", f"release {request.version} is not staged in {folder} "
                                       "(release.json and release.sig); fetch it again")
        keys = appslots.read_trusted_key(app_root, appslots.RELEASE_KEY)
        if not keys:
            raise Refused("bad-signature", f"{app_root / appslots.RELEASE_KEY} is missing: this box trusts no "
                                           "release key (provisioning copies it there)")
        rel = release.verify(manifest, signature, keys)
    except SlotFileError as e:
        raise Refused("malformed", str(e)) from None
    except release.ReleaseError as e:
        raise Refused(e.code, str(e)) from None
    if rel.release_id != request.release_id or rel.version != request.version:
        raise Refused("malformed", f"request.json names {request.version} ({request.release_id[:16]}...), "
                                   f"the staged release is {rel.version} ({rel.release_id[:16]}...)")
    running = current or box.factory_version
    refusal = release.judge(rel, current=running, board=box.board, machine=box.machine, python=box.python)
    if refusal is not None and refusal.code == "downgrade" and request.allow_downgrade:
        _check_downgrade_offer(app_root, folder, rel, box)
        refusal = release.judge(rel, current=running, board=box.board, machine=box.machine, python=box.python,
                                allow_downgrade=True)
    if refusal is not None:
        raise Refused(refusal.code, refusal.reason)
    return rel


def _check_downgrade_offer(app_root: Path, folder: Path, rel: release.Release, box: Platform) -> None:
    """A downgrade needs the operator's offer for this box, this release and ``allow_downgrade``."""
    from linetap.sync import signed, updatewire

    why = "the operator's offer allowing a downgrade"
    try:
        data = appslots.read_bounded(folder / appslots.STAGED_OFFER, max_bytes=updatewire.MAX_OFFER_BYTES)
        if data is None:
            raise Refused("downgrade", f"{why} is not staged ({appslots.STAGED_OFFER}); it is refused")
        keys = signed.key_table(appslots.read_trusted_key(app_root, appslots.OPERATOR_KEY))
        envelope = signed.open_envelope(data, trusted_keys=keys, device_id=box.device_id, kind="update",
                                        now_ms=None, max_bytes=updatewire.MAX_OFFER_BYTES)
        offer = updatewire.read_offer(envelope.body)
    except (SlotFileError, signed.EnvelopeRefused, release.ReleaseError) as e:
        raise Refused("downgrade", f"{why} does not verify with {appslots.OPERATOR_KEY}: {e}") from None
    if offer.manifest != rel.data or not offer.allow_downgrade:
        raise Refused("downgrade", f"{why} is for another release or does not allow a downgrade")


def check_room(app_root: Path, rel: release.Release, free: Callable[[Path], int]) -> None:
    need = ROOM_FACTOR * rel.size + ROOM_RESERVE
    have = free(app_root)
    if have < need:
        raise Refused("no-room", f"release {rel.version} needs about {need // 2**20} MiB free on {app_root} "
                                 f"({rel.size // 2**20} MiB of wheels, unpacked); {have // 2**20} MiB are free")


# --------------------------------------------------------------- building --

def prepare(app_root: Path, data_dir: Path, request: Request, box: Platform, current: str | None, *,
            free: Callable[[Path], int] = free_space) -> Named:
    """Check and build the requested release; its name once ``prepared.json`` says it."""
    rel = check_release(app_root, data_dir, request, box, current)
    versions = app_root / appslots.VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    for stale in versions.glob("*.tmp"):  # builds cut short (one step runs at a time)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = versions / f"{rel.version}.tmp"
    check_room(app_root, rel, free)
    named = Named(release_id=rel.release_id, version=rel.version)
    try:
        build(tmp, appslots.staged_dir(data_dir, rel.release_id), rel, box)
        appslots.write_version_file(tmp, named)
        os.sync()  # every byte of the tree on disk before its name says it is complete
        with appgate.locked(app_root):
            _move_into_place(app_root, tmp, named)
    except OSError as e:
        code = "no-room" if e.errno == errno.ENOSPC else "prepare-failed"
        raise Refused(code, f"building {rel.version} in {tmp} failed: {e}", outcome="failed") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.warning("update step: release %s prepared in %s", rel.version, appslots.version_dir(app_root, rel.version))
    return named


def _move_into_place(app_root: Path, tmp: Path, named: Named) -> None:
    final = appslots.version_dir(app_root, named.version)
    if final.exists():  # a build a power cut kept from prepared.json, or one superseded: unless linked
        prepared = appslots.read_prepared(app_root)
        if prepared is not None and prepared.version == named.version:
            appslots.remove(app_root / appslots.PREPARED)
        appgate.tidy(app_root)
        if final.exists():
            raise Refused("already-installed", f"version {named.version} is current, previous or on trial; "
                                               "it is not built again")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    crash_point("after-rename")
    appslots.write_prepared(app_root, named)
    crash_point("after-prepared")


def build(tmp: Path, staged: Path, rel: release.Release, box: Platform) -> None:
    wheels = tmp / appslots.WHEELS
    named = tmp / "pip"
    wheels.mkdir(parents=True)
    named.mkdir()
    for file in rel.files:
        copy_checked(staged / file.sha256, wheels / file.sha256, file)
        os.link(wheels / file.sha256, named / file.name)  # pip reads a wheel's tags from its name
    crash_point("after-copy")
    venv = tmp / appslots.VENV
    _run([box.factory_python, "-m", "venv", "--without-pip", str(venv)], "creating the venv")
    crash_point("after-venv")
    _run([box.factory_python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index",
          "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
          *sorted(str(p) for p in named.iterdir())], "pip install")
    crash_point("after-pip")
    shutil.rmtree(named)
    relocate(venv / "bin", str(tmp), str(appslots.version_dir(tmp.parent.parent, rel.version)))
    check = (f"import importlib.metadata as m, linetap.firmware.cli; v = m.version('linetap'); "
             f"assert v == {rel.version!r}, 'linetap ' + v + ' installed, not {rel.version}'")
    _run([str(venv / "bin" / "python"), "-I", "-c", check], "the import check")


def copy_checked(source: Path, target: Path, file: release.ReleaseFile) -> None:
    """Copy a staged file (never through a symlink) while hashing it; a file not as signed is refused."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Refused("hash-mismatch", f"{file.name} is not staged as {source} ({e.strerror}); fetch it again") \
            from None
    digest, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as src, open(target, "wb") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("hash-mismatch", f"{source} is not a plain file")
        while block := src.read(min(READ_BLOCK, file.size + 1 - size)):
            size += len(block)
            if size > file.size:
                break
            digest.update(block)
            out.write(block)
    if size != file.size or digest.hexdigest() != file.sha256:
        raise Refused("hash-mismatch", f"{file.name} as staged does not match the signed release "
                                       f"(changed after it was fetched); fetch it again")


def relocate(bin_dir: Path, old: str, new: str) -> None:
    """Point the venv's scripts at the folder it is renamed to (their ``#!`` lines name the build folder)."""
    old_b, new_b = old.encode(), new.encode()
    for path in bin_dir.iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old_b in data and b"\0" not in data[:1024]:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old_b, new_b))
            path.chmod(mode)


def _run(argv: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != appgate.CRASH_ENV}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Refused("prepare-failed", f"{what} failed: {e}", outcome="failed") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-TAIL_LINES:])
        raise Refused("prepare-failed", f"{what} failed (exit {done.returncode}): {tail}", outcome="failed")
