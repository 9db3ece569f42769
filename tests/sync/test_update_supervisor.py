"""The update under a supervisor that plays systemd: a real ``linetap run`` switched to a new version and kept,
and a version that cannot start rolled back by the gate after its crash loop."""

from __future__ import annotations

import time
from pathlib import Path

import pyrage
import pytest
import update_helpers as uh
from update_supervisor import Supervisor

from linetap.sync import appslots
from linetap.sync.appslots import Named, Request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a real venv of every dependency, twice


def _box(tmp_path: Path, kit: uh.Kit) -> tuple[Path, Path]:
    app, data = tmp_path / "app", tmp_path / "data"
    uh.trust(app, kit.key)
    uh.keys_init(data, str(pyrage.x25519.Identity.generate().to_public()))
    return app, data


def _offer(data: Path, rel: uh.Release) -> None:
    """What the box process does once it has fetched a release: stage it and ask root."""
    uh.stage(data, rel)
    appslots.write_request(data, Request(release_id=rel.release_id, version=rel.version, allow_downgrade=False,
                                         at_ms=1))


def test_a_running_recorder_is_switched_to_a_new_version_and_keeps_it(tmp_path, update_kit) -> None:
    app, data = _box(tmp_path, update_kit)
    rel = update_kit.full()
    sup = Supervisor(app, data, ["run"]).start()
    try:
        sup.wait_for(lambda e: e[:2] == ("ready", "factory"))
        mark = len(sup.events)
        _offer(data, rel)
        prepared = sup.wait_for(lambda e: e[0] == "step" and "prepared" in e[1], after=mark, timeout=300)
        assert appslots.read_prepared(app) == Named(rel.release_id, rel.version)
        mark = len(sup.events)
        appslots.write_switch(data, Named(rel.release_id, rel.version))
        began = time.monotonic()
        sup.restart()  # the box stops itself once the line is idle; systemd starts it again
        ready = sup.wait_for(lambda e: e[:2] == ("ready", rel.version), after=mark)
        mark = len(sup.events)
        # The new version self-tests and says healthy.json; the step promotes it.
        sup.wait_for(lambda e: e[0] in ("step", "gate") and f"{rel.version} installed" in e[1], after=mark)
        outcome = appslots.read_outcome(app)
        assert (outcome.outcome, outcome.version) == ("installed", rel.version)
        mark = len(sup.events)
        sup.restart()
        sup.wait_for(lambda e: e[:2] == ("ready", rel.version), after=mark)  # kept across restarts
        assert not any(e[0] == "gate" and "rolled back" in e[1] for e in sup.events)
    finally:
        sup.stop()
    print(f"step {prepared[2]:.1f} s, switch to READY {ready[2] - began:.1f} s")


def test_a_version_that_cannot_start_is_rolled_back_after_its_crash_loop(tmp_path, update_kit) -> None:
    app, data = _box(tmp_path, update_kit)
    mini = update_kit.mini()  # linetap alone: `run` fails on its first import of a dependency
    sup = Supervisor(app, data, ["run"]).start()
    try:
        sup.wait_for(lambda e: e[:2] == ("ready", "factory"))
        _offer(data, mini)
        sup.wait_for(lambda e: e[0] == "step" and "prepared" in e[1], timeout=300)
        mark = len(sup.events)
        appslots.write_switch(data, Named(mini.release_id, mini.version))
        sup.restart()
        rolled = sup.wait_for(lambda e: e[0] == "gate" and "rolled back (crash-loop)" in e[1], after=mark)
        sup.wait_for(lambda e: e[:2] == ("ready", "factory"), after=sup.events.index(rolled))
        starts = [e for e in sup.events[mark:sup.events.index(rolled)] if e[:2] == ("started", mini.version)]
        assert len(starts) == 4  # the switch's start and three restarts
        outcome = appslots.read_outcome(app)
        assert (outcome.outcome, outcome.code) == ("rolled-back", "crash-loop")
        assert appslots.read_link(app, appslots.CURRENT) is None
    finally:
        sup.stop()
