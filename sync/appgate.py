"""The gate: run by root before every start of the recorder, it switches, counts starts and rolls back.

``linetap update gate`` runs from the factory venv on the read-only root
(``ExecStartPre=+``), so a broken release cannot break its own rollback. It
reads the app root and the box's hand-over files into a
:class:`linetap.sync.slotgate.View`, lets :func:`linetap.sync.slotgate.decide`
choose, and carries the decision out here, one atomic write at a time
(:mod:`linetap.sync.appslots`), under ``<app>/gate.lock``. The install step
(:mod:`linetap.sync.appinstall`) uses the same functions for the health
files between starts.

``LINETAP_UPDATE_CRASH_AT=<point>`` makes the process SIGKILL itself at a
named point (:data:`CRASH_POINTS`): the tests of what a power cut leaves.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from linetap.firmware.clock import Clock
from linetap.firmware.durable import fsync_dir
from linetap.sync import appslots, slotgate
from linetap.sync.appslots import CURRENT, PREVIOUS, SlotFileError
from linetap.sync.release import VERSION

logger = logging.getLogger(__name__)

CRASH_ENV = "LINETAP_UPDATE_CRASH_AT"
CRASH_POINTS = ("after-trial", "after-previous", "after-flip", "after-switch", "promote-after-outcome",
                "rollback-after-outcome", "after-flip-back", "after-copy", "after-venv", "after-pip",
                "after-rename", "after-prepared")
GONE_PREFIX = ".gone-"


def crash_point(name: str) -> None:
    """Die here, as a power cut would, when the test asks for it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def locked(app_root: Path) -> Iterator[None]:
    """Hold ``<app>/gate.lock`` (gate and step never act at once)."""
    app_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(app_root / appslots.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def now_ms(clock: Clock) -> int:
    return int(clock.wall() * 1000)


# ---------------------------------------------------------------- reading --

def _box_file(read: Callable[[Path], object], data_dir: Path, name: str) -> object:
    """A box-written file, or None: a bad one is logged and removed (it would be refused for ever)."""
    try:
        return read(data_dir)
    except SlotFileError as e:
        logger.warning("update: %s; removing it", e)
        appslots.remove(appslots.update_dir(data_dir) / name)
        return None


def _root_file(read: Callable[[Path], object], app_root: Path, name: str) -> object:
    try:
        return read(app_root)
    except SlotFileError as e:
        logger.error("update: %s (a file of root's own, half written?); removing it", e)
        appslots.remove(app_root / name)
        return None


def read_view(app_root: Path, data_dir: Path, at_ms: int) -> slotgate.View:
    return slotgate.View(
        now_ms=at_ms, current=appslots.read_link(app_root, CURRENT),
        prepared=_root_file(appslots.read_prepared, app_root, appslots.PREPARED),
        trial=_root_file(appslots.read_trial, app_root, appslots.TRIAL),
        outcome=_root_file(appslots.read_outcome, app_root, appslots.OUTCOME),
        switch=_box_file(appslots.read_switch, data_dir, appslots.SWITCH),
        healthy=_box_file(appslots.read_healthy, data_dir, appslots.HEALTHY),
        unhealthy=_box_file(appslots.read_unhealthy, data_dir, appslots.UNHEALTHY))


# ---------------------------------------------------------------- acting --

def apply(decision: slotgate.Decision, app_root: Path, data_dir: Path) -> bool:
    """Carry ``decision`` out; True when the running recorder must be restarted (a rollback between starts)."""
    trial = getattr(decision, "trial", None)
    if trial is not None and not isinstance(decision, slotgate.StartTrial):
        _drop_prepared(app_root, trial)  # left by a switch cut short after its flip
    match decision:
        case slotgate.StartTrial(trial=trial):
            _start_trial(trial, app_root, data_dir)
        case slotgate.CountStart(trial=trial):
            appslots.write_trial(app_root, trial)
        case slotgate.Promote(outcome=outcome):
            appslots.write_outcome(app_root, outcome)
            crash_point("promote-after-outcome")
            appslots.remove(app_root / appslots.TRIAL)
            tidy(app_root)
        case slotgate.RollBack(trial=trial, outcome=outcome):
            appslots.write_outcome(app_root, outcome)
            crash_point("rollback-after-outcome")
            appslots.flip(app_root, CURRENT, trial.previous)
            crash_point("after-flip-back")
            _finish_rollback(app_root)
            return True
        case slotgate.FinishRollBack(trial=trial, outcome=outcome):
            if outcome is not None:
                appslots.write_outcome(app_root, outcome)
            _finish_rollback(app_root)
        case slotgate.DropSwitch():
            appslots.remove(appslots.update_dir(data_dir) / appslots.SWITCH)
    return False


def _start_trial(trial: appslots.Trial, app_root: Path, data_dir: Path) -> None:
    folder = appslots.update_dir(data_dir)
    for name in (appslots.HEALTHY, appslots.UNHEALTHY):  # a stale verdict must not judge this trial
        appslots.remove(folder / name)
    appslots.write_trial(app_root, trial)
    crash_point("after-trial")
    if trial.previous is not None:
        appslots.flip(app_root, PREVIOUS, trial.previous)
    crash_point("after-previous")
    appslots.flip(app_root, CURRENT, trial.version)
    crash_point("after-flip")
    appslots.remove(folder / appslots.SWITCH)
    crash_point("after-switch")
    appslots.remove(app_root / appslots.PREPARED)


def _drop_prepared(app_root: Path, trial: appslots.Trial) -> None:
    prepared = _root_file(appslots.read_prepared, app_root, appslots.PREPARED)
    if prepared is not None and prepared.release_id == trial.release_id:
        appslots.remove(app_root / appslots.PREPARED)


def _finish_rollback(app_root: Path) -> None:
    appslots.remove(app_root / appslots.TRIAL)
    tidy(app_root)


def tidy(app_root: Path) -> list[str]:
    """Remove the version folders nothing names (old versions, a rolled-back one); what was removed."""
    folder = app_root / appslots.VERSIONS
    if not folder.is_dir():
        return []
    view = slotgate.View(now_ms=0, current=appslots.read_link(app_root, CURRENT),
                         prepared=_root_file(appslots.read_prepared, app_root, appslots.PREPARED),
                         trial=_root_file(appslots.read_trial, app_root, appslots.TRIAL))
    kept = slotgate.keep(view, appslots.read_link(app_root, PREVIOUS))
    removed = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith(GONE_PREFIX) or VERSION.fullmatch(name) and name not in kept:
            gone = entry if name.startswith(GONE_PREFIX) else entry.with_name(GONE_PREFIX + name)
            if gone != entry:
                os.replace(entry, gone)  # no half-removed folder ever carries a version's name
                fsync_dir(folder)
            shutil.rmtree(gone, ignore_errors=True)
            removed.append(name)
    return removed


# ------------------------------------------------------------------ gate --

def gate(app_root: Path, data_dir: Path, clock: Clock, *, trial_ms: int = slotgate.TRIAL_MS,
         max_starts: int = slotgate.MAX_STARTS) -> slotgate.Decision:
    """What ``linetap update gate`` does: one decision before a start, carried out."""
    with locked(app_root):
        view = read_view(app_root, data_dir, now_ms(clock))
        decision = slotgate.decide(view, at_start=True, trial_ms=trial_ms, max_starts=max_starts)
        apply(decision, app_root, data_dir)
    log_decision("gate", decision)
    return decision


def log_decision(who: str, decision: slotgate.Decision) -> None:
    quiet = isinstance(decision, slotgate.Nothing)
    logger.log(logging.INFO if quiet else logging.WARNING, "update %s: %s", who, slotgate.describe(decision))
