"""Root's install step and gate on real releases built from this working tree: prepare, switch, promote,
every refusal, each rollback, and SIGKILL at every step leaving a runnable version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import update_helpers as uh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.clock import ManualClock
from linetap.sync import appgate, appinstall, appslots, signed, slotgate, updatewire
from linetap.sync.appslots import CURRENT, Health, Named, Request

FACTORY = uh.tree_version()
NEXT = uh.next_version(FACTORY)
OLDER = "0.0.1"
DEVICE = "lt-test-1"
BOX = appinstall.Platform(board="sim", device_id=DEVICE)


@pytest.fixture
def kit(update_kit: uh.Kit) -> uh.Kit:
    return update_kit


@pytest.fixture
def mini(update_kit: uh.Kit) -> uh.Release:
    return update_kit.mini()


@pytest.fixture
def older_wheel(update_kit: uh.Kit) -> Path:
    return update_kit.wheel(OLDER)


@pytest.fixture
def box(tmp_path: Path, kit: uh.Kit) -> tuple[Path, Path]:
    app, data = tmp_path / "app", tmp_path / "data"
    uh.trust(app, kit.key, kit.operator)
    return app, data


def request(data: Path, rel: uh.Release, *, allow_downgrade: bool = False, at_ms: int | None = None) -> None:
    appslots.write_request(data, Request(release_id=rel.release_id, version=rel.version,
                                         allow_downgrade=allow_downgrade,
                                         at_ms=int(time.time() * 1000) if at_ms is None else at_ms))


def step(app: Path, data: Path, clock=None, **kw) -> appinstall.StepResult:
    restarts = kw.pop("restarts", [])
    return appinstall.step(app, data, clock or ManualClock(), BOX, restart=lambda: restarts.append(1), **kw)


def launch_version(app: Path) -> str:
    """What the image's launcher would run, run: ``current``'s linetap if complete, else the factory's."""
    version = appslots.read_link(app, CURRENT)
    program = app / CURRENT / "venv" / "bin" / "linetap" if version else Path(sys.executable).parent / "linetap"
    done = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != appgate.CRASH_ENV})
    assert done.returncode == 0, f"{program} --version failed: {done.stderr[-1500:]}"
    return done.stdout.split()[-1]


def prepared(app: Path, data: Path, rel: uh.Release) -> None:
    uh.stage(data, rel)
    request(data, rel, at_ms=1)  # older than any outcome: a rollback's outcome stands
    result = step(app, data)
    assert result.prepared == Named(rel.release_id, rel.version), result


# ------------------------------------------------------------------ the whole way --

def test_a_release_is_prepared_switched_and_promoted(box, mini) -> None:
    app, data = box
    rel = mini
    uh.stage(data, rel)
    request(data, rel)
    result = step(app, data)
    assert result.prepared == Named(rel.release_id, NEXT) and appslots.read_prepared(app) == result.prepared
    folder = appslots.version_dir(app, NEXT)
    assert sorted(p.name for p in (folder / "wheels").iterdir()) == sorted(rel.files)
    assert not list((app / "versions").glob("*.tmp"))
    assert launch_version(app) == FACTORY
    appslots.write_switch(data, Named(rel.release_id, NEXT))
    clock = ManualClock()
    assert isinstance(appgate.gate(app, data, clock), slotgate.StartTrial)
    assert launch_version(app) == NEXT and appslots.read_prepared(app) is None
    assert appslots.read_switch(data) is None and appslots.read_trial(app).starts == 0
    appslots.write_health(data, Health(NEXT, healthy=True))
    assert isinstance(step(app, data, clock).health, slotgate.Promote)
    outcome = appslots.read_outcome(app)
    assert (outcome.outcome, outcome.version, outcome.code) == ("installed", NEXT, None)
    assert appslots.read_trial(app) is None and launch_version(app) == NEXT
    assert step(app, data, clock).skipped  # the request is done: nothing is built again


# ---------------------------------------------------------------------- refusals --

def _stage_other(data: Path, kit: uh.Kit, **release_args) -> uh.Release:
    rel = uh.make_release(kit.wheel(NEXT), kit.key, extra=[], **release_args)
    uh.stage(data, rel)
    return rel


def _fake_wheel(kit: uh.Kit, version: str, content: bytes = b"not a wheel") -> Path:
    path = kit.folder / f"fake-{version}" / f"linetap-{version}-py3-none-any.whl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def _refused(app: Path, data: Path, rel: uh.Release | None, code: str, outcome: str = "refused", **kw) -> str:
    if rel is not None:
        request(data, rel)
    result = step(app, data, **kw)
    assert result.prepared is None and result.outcome is not None, result
    assert (result.outcome.outcome, result.outcome.code) == (outcome, code), result.outcome
    assert appslots.read_outcome(app) == result.outcome
    assert appslots.read_link(app, CURRENT) is None and appslots.read_prepared(app) is None
    assert not [p for p in (app / "versions").glob("*")] if (app / "versions").exists() else True
    assert launch_version(app) == FACTORY
    return result.outcome.reason


def test_a_release_signed_by_another_key_is_refused(box, kit, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    forged = Ed25519PrivateKey.generate().sign(mini.manifest)
    (appslots.staged_dir(data, mini.release_id) / "release.sig").write_bytes(forged)
    assert "does not verify" in _refused(app, data, mini, "bad-signature")
    (app / "release.pub").unlink()
    request(data, mini)
    assert "trusts no release key" in _refused(app, data, None, "bad-signature")


def test_a_file_changed_after_staging_is_refused(box, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    staged = appslots.staged_file(data, mini.release_id, next(iter(mini.files)))
    data_bytes = staged.read_bytes()
    staged.unlink()  # the staged file is a hard link to the session's wheel: replace it, never edit it
    staged.write_bytes(data_bytes[:-1] + bytes([data_bytes[-1] ^ 1]))
    assert "does not match the signed release" in _refused(app, data, mini, "hash-mismatch")


def test_a_symlink_in_the_stage_is_not_followed(box, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    staged = appslots.staged_file(data, mini.release_id, next(iter(mini.files)))
    staged.unlink()
    staged.symlink_to(mini.files[next(iter(mini.files))])
    _refused(app, data, mini, "hash-mismatch")


def test_an_older_version_is_refused_without_the_operators_offer(box, kit) -> None:
    app, data = box
    rel = uh.make_release(_fake_wheel(kit, OLDER), kit.key, extra=[])
    uh.stage(data, rel)
    assert "older than the running" in _refused(app, data, rel, "downgrade")
    request(data, rel, allow_downgrade=True)  # the box says it may; root wants the operator's signature
    assert "not staged" in _refused(app, data, None, "downgrade")
    offer = _offer(kit, rel, allow_downgrade=False)
    uh.stage(data, rel, offer=offer)
    request(data, rel, allow_downgrade=True)
    assert "does not allow" in _refused(app, data, None, "downgrade")
    uh.stage(data, rel, offer=_offer(kit, rel, allow_downgrade=True, key=Ed25519PrivateKey.generate()))
    request(data, rel, allow_downgrade=True)
    assert "does not verify" in _refused(app, data, None, "downgrade")


def _offer(kit: uh.Kit, rel: uh.Release, *, allow_downgrade: bool, key: Ed25519PrivateKey | None = None) -> bytes:
    body = updatewire.offer_body(rel.manifest, rel.signature, rollout="r1", allow_downgrade=allow_downgrade)
    return signed.seal("update", DEVICE, body, key or kit.operator, seq=1, now_ms=int(time.time() * 1000),
                       ttl_ms=3_600_000)


def test_a_downgrade_the_operator_signed_is_prepared(box, kit, older_wheel) -> None:
    app, data = box
    rel = uh.make_release(older_wheel, kit.key, extra=[])
    uh.stage(data, rel, offer=_offer(kit, rel, allow_downgrade=True))
    request(data, rel, allow_downgrade=True)
    assert step(app, data).prepared == Named(rel.release_id, OLDER)


@pytest.mark.parametrize("args, code", [({"machine": "s390x"}, "wrong-platform"),
                                        ({"python": "cp39"}, "wrong-platform"),
                                        ({"boards": ("pi4-other",)}, "wrong-board"),
                                        ({"min_previous": "9.0"}, "too-old-to-update")])
def test_a_release_for_another_box_is_refused(box, kit, args, code) -> None:
    app, data = box
    rel = _stage_other(data, kit, **args)
    _refused(app, data, rel, code)


def test_no_room_is_refused_before_anything_is_written(box, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    reason = _refused(app, data, mini, "no-room", free=lambda path: 10 * 2**20)
    assert "MiB free" in reason


def test_a_release_pip_cannot_install_fails_with_pips_words(box, kit) -> None:
    app, data = box
    rel = uh.make_release(_fake_wheel(kit, NEXT + ".1"), kit.key, extra=[])
    uh.stage(data, rel)
    reason = _refused(app, data, rel, "prepare-failed", outcome="failed")
    assert "pip install failed" in reason and not list((app / "versions").glob("*"))


def test_a_hostile_or_dangling_request_is_an_outcome_not_a_crash(box, mini) -> None:
    app, data = box
    folder = appslots.update_dir(data)
    folder.mkdir(parents=True)
    (folder / "request.json").write_text('{"release_id": "../../../etc", "version": "1"}')
    _refused(app, data, None, "malformed")
    assert not (folder / "request.json").exists()
    request(data, mini)  # names a release nobody staged
    assert "not staged" in _refused(app, data, None, "malformed")


def test_a_request_is_judged_once_and_again_when_renewed(box, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    request(data, mini, at_ms=1)
    assert step(app, data, free=lambda p: 0).outcome.code == "no-room"
    assert step(app, data).skipped  # judged since it was made: not retried at every file change
    request(data, mini)  # the box asks again (room was made)
    assert step(app, data).prepared is not None


# ------------------------------------------------------------------- rollbacks --

def _on_trial(app: Path, data: Path, rel: uh.Release, clock: ManualClock) -> None:
    prepared(app, data, rel)
    appslots.write_switch(data, Named(rel.release_id, rel.version))
    assert isinstance(appgate.gate(app, data, clock, trial_ms=60_000), slotgate.StartTrial)
    assert launch_version(app) == rel.version


def _rolled_back(app: Path, code: str) -> None:
    outcome = appslots.read_outcome(app)
    assert (outcome.outcome, outcome.code) == ("rolled-back", code), outcome
    assert appslots.read_trial(app) is None and appslots.read_link(app, CURRENT) is None
    assert launch_version(app) == FACTORY
    assert not list((app / "versions").iterdir())  # the rolled-back version is removed


def test_unhealthy_rolls_back_and_restarts(box, mini, clock) -> None:
    app, data = box
    _on_trial(app, data, mini, clock)
    appslots.write_health(data, Health(NEXT, healthy=False, code="selftest-failed", reason="spool not writable"))
    restarts: list[int] = []
    assert isinstance(step(app, data, clock, restarts=restarts).health, slotgate.RollBack)
    assert restarts == [1]
    _rolled_back(app, "selftest-failed")
    assert appslots.read_outcome(app).reason.startswith("spool not writable")


def test_a_crash_loop_rolls_back_at_the_fourth_restart(box, mini, clock) -> None:
    app, data = box
    _on_trial(app, data, mini, clock)
    for starts in (1, 2, 3):
        assert isinstance(appgate.gate(app, data, clock), slotgate.CountStart)
        assert appslots.read_trial(app).starts == starts
    assert isinstance(appgate.gate(app, data, clock), slotgate.RollBack)
    _rolled_back(app, "crash-loop")


def test_no_healthy_before_the_deadline_rolls_back_not_ready(box, mini, clock) -> None:
    app, data = box
    _on_trial(app, data, mini, clock)
    clock.advance(59)
    assert isinstance(step(app, data, clock).health, slotgate.Nothing)
    clock.advance(1)
    restarts: list[int] = []
    assert isinstance(step(app, data, clock, restarts=restarts).health, slotgate.RollBack) and restarts
    _rolled_back(app, "not-ready")


def test_an_older_version_stays_as_previous_and_is_rolled_back_to(box, kit, mini, clock, older_wheel) -> None:
    app, data = box
    older = uh.make_release(older_wheel, kit.key, extra=[])
    uh.stage(data, older, offer=_offer(kit, older, allow_downgrade=True))
    request(data, older, allow_downgrade=True, at_ms=1)
    assert step(app, data).prepared is not None
    appslots.write_switch(data, Named(older.release_id, OLDER))
    appgate.gate(app, data, clock)
    appslots.write_health(data, Health(OLDER, healthy=True))
    step(app, data, clock)
    assert launch_version(app) == OLDER
    _on_trial(app, data, mini, clock)
    assert os.readlink(app / "previous") == f"versions/{OLDER}"
    appslots.write_health(data, Health(NEXT, healthy=False, code="not-ready", reason="no READY"))
    step(app, data, clock)
    assert launch_version(app) == OLDER and sorted(p.name for p in (app / "versions").iterdir()) == [OLDER]


# ---------------------------------------------------------------------- SIGKILL --

def _cli(app: Path, data: Path, action: str, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, appgate.CRASH_ENV: crash} if crash else dict(os.environ)
    argv = [str(Path(sys.executable).parent / "linetap"), "update", action, "--app-root", str(app),
            "--data-dir", str(data)]
    if action == "step":
        argv += ["--restart-command", "true"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def _killed_at(app: Path, data: Path, action: str, point: str) -> None:
    done = _cli(app, data, action, point)
    assert done.returncode == -9, f"{action} was not killed at {point}: {done.returncode} {done.stderr[-800:]}"


PREPARE_POINTS = ("after-copy", "after-venv", "after-pip", "after-rename", "after-prepared")
SWITCH_POINTS = ("after-trial", "after-previous", "after-flip", "after-switch")
ROLLBACK_POINTS = ("rollback-after-outcome", "after-flip-back")


def test_every_crash_point_is_killed_at_by_a_test() -> None:
    assert {*PREPARE_POINTS, *SWITCH_POINTS, *ROLLBACK_POINTS, "promote-after-outcome"} == set(appgate.CRASH_POINTS)


def test_sigkill_at_every_step_leaves_a_runnable_version(box, mini) -> None:
    app, data = box
    uh.stage(data, mini)
    request(data, mini, at_ms=1)
    for point in PREPARE_POINTS:
        _killed_at(app, data, "step", point)
        assert launch_version(app) == FACTORY, point
    assert _cli(app, data, "step").returncode == 0
    assert appslots.read_prepared(app) == Named(mini.release_id, NEXT)
    assert launch_version(app) == FACTORY and not list((app / "versions").glob("*.tmp"))
    appslots.write_switch(data, Named(mini.release_id, NEXT))
    for point in SWITCH_POINTS:
        _killed_at(app, data, "gate", point)
        assert launch_version(app) in (FACTORY, NEXT), point
    assert _cli(app, data, "gate").returncode == 0
    assert launch_version(app) == NEXT and appslots.read_trial(app).version == NEXT
    appslots.write_health(data, Health(NEXT, healthy=False, code="selftest-failed", reason="no audio"))
    for point in ROLLBACK_POINTS:
        _killed_at(app, data, "step", point)
        assert launch_version(app) in (FACTORY, NEXT), point
    assert _cli(app, data, "gate").returncode == 0
    _rolled_back(app, "selftest-failed")


def test_sigkill_while_promoting_leaves_the_new_version_installed(box, mini, clock) -> None:
    app, data = box
    _on_trial(app, data, mini, clock)
    appslots.write_health(data, Health(NEXT, healthy=True))
    _killed_at(app, data, "step", "promote-after-outcome")
    assert launch_version(app) == NEXT
    assert _cli(app, data, "gate").returncode == 0  # the next start finishes the promotion
    assert appslots.read_trial(app) is None and appslots.read_outcome(app).outcome == "installed"
    assert launch_version(app) == NEXT
