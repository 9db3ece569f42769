"""What the gate and the install step do, decided from what the app root and the box's files say.

Sans-IO: :func:`decide` takes a :class:`View` (the files, already read and
checked by :mod:`linetap.sync.appslots`, and the time) and returns one
decision; :mod:`linetap.sync.appgate` carries it out, each write atomic, in
the order the decision's docstring gives, so that a power cut between any two
writes leaves a state :func:`decide` finishes on the next run.

The trial of a new version: the gate (``ExecStartPre``, before every start of
the recorder) starts it when ``switch.json`` names the prepared version; each
later start counts one more; it ends in a promotion when ``healthy.json``
names the version, or in a rollback when ``unhealthy.json`` does, when the
deadline passes first (``not-ready``) or when the version has been started
more than ``max_starts`` times (``crash-loop``). The deadline is on the wall
clock (a Pi has no battery clock, but a restart resets every monotonic one):
a clock that jumps forward during a trial can only cause a rollback, the safe
side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

APP_ROOT_ENV = "LINETAP_APP_ROOT"  # where the versions live: /data/app on the image
DEFAULT_APP_ROOT = "/data/app"

# ------------------------------------------------------ the files, read --
# What the hand-over files hold (linetap.sync.appslots reads and writes them).

@dataclass(frozen=True)
class Request:
    release_id: str
    version: str
    allow_downgrade: bool
    at_ms: int


@dataclass(frozen=True)
class Named:
    """What switch.json, prepared.json and version.json hold: one release."""

    release_id: str
    version: str


@dataclass(frozen=True)
class Health:
    version: str
    healthy: bool
    code: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Trial:
    version: str
    release_id: str
    previous: str | None
    deadline_ms: int
    starts: int


@dataclass(frozen=True)
class Outcome:
    version: str | None
    release_id: str | None
    outcome: str
    code: str | None
    reason: str
    at_ms: int



TRIAL_MS = 5 * 60_000
MAX_STARTS = 3


@dataclass(frozen=True)
class View:
    now_ms: int
    current: str | None  # the version ``current`` names; None: the factory's runs
    prepared: Named | None = None
    trial: Trial | None = None
    switch: Named | None = None
    healthy: Health | None = None
    unhealthy: Health | None = None
    outcome: Outcome | None = None


# ------------------------------------------------------------- decisions --

@dataclass(frozen=True)
class Nothing:
    why: str


@dataclass(frozen=True)
class StartTrial:
    """Remove the health files, write trial.json, point ``previous`` at trial.previous (when a version),
    point ``current`` at the new version, remove switch.json, then prepared.json. Safe to repeat."""

    trial: Trial


@dataclass(frozen=True)
class CountStart:
    """Write trial.json with one more start."""

    trial: Trial


@dataclass(frozen=True)
class Promote:
    """Write outcome.json (installed), remove trial.json, remove versions no link names."""

    trial: Trial
    outcome: Outcome


@dataclass(frozen=True)
class RollBack:
    """Write outcome.json (rolled-back), point ``current`` at trial.previous (none: the factory),
    remove trial.json, remove versions no link names; then restart the recorder if it runs."""

    trial: Trial
    outcome: Outcome


@dataclass(frozen=True)
class FinishRollBack:
    """A rollback cut short after its flip: write the outcome if given, remove trial.json, tidy."""

    trial: Trial
    outcome: Outcome | None


@dataclass(frozen=True)
class DropSwitch:
    """Remove a switch.json that names no prepared version."""

    why: str


Decision = Nothing | StartTrial | CountStart | Promote | RollBack | FinishRollBack | DropSwitch


def decide(view: View, *, at_start: bool, trial_ms: int = TRIAL_MS, max_starts: int = MAX_STARTS) -> Decision:
    """The gate's decision (``at_start``: the recorder is about to start) or the step's (health only)."""
    trial = view.trial
    if trial is not None:
        return _during_trial(view, trial, at_start=at_start, max_starts=max_starts)
    if view.switch is None or not at_start:
        return Nothing("no trial and no switch asked for")
    prepared = view.prepared
    if prepared is None or prepared != view.switch:
        return DropSwitch(f"switch.json names {view.switch.version}, which is not the prepared version "
                          f"({prepared.version if prepared else 'none'})")
    if prepared.version == view.current:
        return DropSwitch(f"version {prepared.version} is already current")
    return StartTrial(Trial(version=prepared.version, release_id=prepared.release_id, previous=view.current,
                            deadline_ms=view.now_ms + trial_ms, starts=0))


def _during_trial(view: View, trial: Trial, *, at_start: bool, max_starts: int) -> Decision:
    if view.switch == Named(trial.release_id, trial.version):
        return StartTrial(trial) if at_start else Nothing("a switch cut short; the gate finishes it")
    if view.current != trial.version:
        done = view.outcome is not None and view.outcome.release_id == trial.release_id
        return FinishRollBack(trial, None if done else _rolled_back(
            view, trial, "crash-loop", f"the switch to {trial.version} was cut short and undone"))
    bad = view.unhealthy
    if bad is not None and bad.version == trial.version:
        return RollBack(trial, _rolled_back(view, trial, bad.code or "selftest-failed",
                                            bad.reason or f"version {trial.version} said it is unhealthy"))
    if view.healthy is not None and view.healthy.version == trial.version:
        return Promote(trial, Outcome(version=trial.version, release_id=trial.release_id, outcome="installed",
                                      code=None, reason=f"version {trial.version} reached READY and passed "
                                                        "its self-test", at_ms=view.now_ms))
    if view.now_ms >= trial.deadline_ms:
        return RollBack(trial, _rolled_back(view, trial, "not-ready",
                                            f"version {trial.version} did not report healthy before its "
                                            "trial deadline"))
    if not at_start:
        return Nothing(f"trial of {trial.version} in progress (started {trial.starts + 1} times)")
    if trial.starts + 1 > max_starts:
        return RollBack(trial, _rolled_back(view, trial, "crash-loop",
                                            f"version {trial.version} was started {trial.starts + 1} times "
                                            f"without reporting healthy (at most {max_starts} restarts)"))
    return CountStart(replace(trial, starts=trial.starts + 1))


def _rolled_back(view: View, trial: Trial, code: str, reason: str) -> Outcome:
    back = trial.previous or "the factory version"
    return Outcome(version=trial.version, release_id=trial.release_id, outcome="rolled-back", code=code,
                   reason=f"{reason}; back to {back}", at_ms=view.now_ms)


def describe(decision: Decision) -> str:
    """The decision in words, for the log and the command's output."""
    match decision:
        case Nothing(why=why):
            return f"nothing to do ({why})"
        case StartTrial(trial=t):
            return f"switched to {t.version} (previous {t.previous or 'factory'}), on trial"
        case CountStart(trial=t):
            return f"{t.version} on trial, start {t.starts + 1}"
        case Promote(trial=t):
            return f"{t.version} installed"
        case RollBack(outcome=o):
            return f"{o.version} rolled back ({o.code}): {o.reason}"
        case FinishRollBack(trial=t):
            return f"rollback of {t.version} finished"
        case DropSwitch(why=why):
            return f"switch request dropped ({why})"
    raise AssertionError(f"unknown decision {decision!r}")


# ----------------------------------------------------------------- step --

def already_handled(request: Request, view: View, current_release_id: str | None) -> str | None:
    """Why ``request`` needs no work (prepared, on trial, running, or judged since it was made), or None."""
    rid = request.release_id
    if view.prepared is not None and view.prepared.release_id == rid:
        return f"release {request.version} is prepared"
    if view.trial is not None and view.trial.release_id == rid:
        return f"release {request.version} is on trial"
    if current_release_id == rid:
        return f"release {request.version} is the current version"
    outcome = view.outcome
    if outcome is not None and outcome.release_id == rid and outcome.at_ms >= request.at_ms:
        return f"release {request.version} was judged already ({outcome.outcome}: {outcome.code})"
    return None


def keep(view: View, previous: str | None) -> set[str]:
    """The versions whose folders must stay: what the links, the trial and prepared.json name."""
    names = {view.current, previous, view.prepared.version if view.prepared else None}
    if view.trial is not None:
        names |= {view.trial.version, view.trial.previous}
    return {name for name in names if name is not None}
