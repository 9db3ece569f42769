"""The gate's decisions from values alone: switch, count, promote, each rollback, and every cut-short state."""

from __future__ import annotations

import pytest

from linetap.sync import slotgate
from linetap.sync.slotgate import (CountStart, DropSwitch, FinishRollBack, Health, Named, Nothing, Outcome, Promote,
                                   Request, RollBack, StartTrial, Trial, View)

NEW, OLD = "ab" * 32, "cd" * 32
TRIAL = Trial(version="0.2.0", release_id=NEW, previous="0.1.0", deadline_ms=10_000, starts=0)


def view(**fields) -> View:
    return View(**{"now_ms": 1_000, "current": "0.2.0", "trial": TRIAL, **fields})


def test_a_switch_to_the_prepared_version_starts_a_trial_at_start_only() -> None:
    prepared = Named(NEW, "0.2.0")
    before = View(now_ms=1_000, current="0.1.0", prepared=prepared, switch=prepared)
    decision = slotgate.decide(before, at_start=True, trial_ms=300_000)
    assert decision == StartTrial(Trial(version="0.2.0", release_id=NEW, previous="0.1.0", deadline_ms=301_000,
                                        starts=0))
    assert isinstance(slotgate.decide(before, at_start=False), Nothing)  # the step never switches


def test_from_the_factory_the_trial_has_no_previous() -> None:
    prepared = Named(NEW, "0.2.0")
    decision = slotgate.decide(View(now_ms=0, current=None, prepared=prepared, switch=prepared), at_start=True)
    assert isinstance(decision, StartTrial) and decision.trial.previous is None


@pytest.mark.parametrize("prepared, current", [(None, "0.1.0"), (Named(OLD, "0.2.0"), "0.1.0"),
                                               (Named(NEW, "0.2.0"), "0.2.0")])
def test_a_switch_naming_anything_but_a_new_prepared_version_is_dropped(prepared, current) -> None:
    decision = slotgate.decide(View(now_ms=0, current=current, prepared=prepared, switch=Named(NEW, "0.2.0")),
                               at_start=True)
    assert isinstance(decision, DropSwitch)


def test_each_start_counts_and_the_fourth_restart_rolls_back() -> None:
    assert slotgate.decide(view(), at_start=True) == CountStart(Trial("0.2.0", NEW, "0.1.0", 10_000, 1))
    assert isinstance(slotgate.decide(view(trial=Trial("0.2.0", NEW, "0.1.0", 10_000, 2)), at_start=True),
                      CountStart)
    decision = slotgate.decide(view(trial=Trial("0.2.0", NEW, "0.1.0", 10_000, 3)), at_start=True)
    assert isinstance(decision, RollBack) and decision.outcome.code == "crash-loop"
    assert "back to 0.1.0" in decision.outcome.reason
    assert isinstance(slotgate.decide(view(), at_start=False), Nothing)  # the step counts nothing


def test_healthy_promotes_and_unhealthy_rolls_back_with_its_code() -> None:
    promoted = slotgate.decide(view(healthy=Health("0.2.0", True)), at_start=False)
    assert isinstance(promoted, Promote) and promoted.outcome.outcome == "installed"
    bad = Health("0.2.0", False, code="selftest-failed", reason="spool not writable")
    rolled = slotgate.decide(view(unhealthy=bad, healthy=Health("0.2.0", True)), at_start=False)
    assert isinstance(rolled, RollBack)
    assert (rolled.outcome.outcome, rolled.outcome.code) == ("rolled-back", "selftest-failed")
    assert rolled.outcome.reason.startswith("spool not writable")


def test_a_verdict_on_another_version_is_not_this_trials() -> None:
    assert isinstance(slotgate.decide(view(healthy=Health("0.1.9", True)), at_start=False), Nothing)


def test_a_passed_deadline_rolls_back_not_ready() -> None:
    decision = slotgate.decide(view(now_ms=10_000), at_start=False)
    assert isinstance(decision, RollBack) and decision.outcome.code == "not-ready"
    assert decision.outcome.at_ms == 10_000


def test_a_switch_cut_short_is_finished_by_the_gate() -> None:
    state = view(current="0.1.0", switch=Named(NEW, "0.2.0"))
    assert slotgate.decide(state, at_start=True) == StartTrial(TRIAL)
    assert isinstance(slotgate.decide(state, at_start=False), Nothing)


def test_a_rollback_cut_short_after_its_flip_is_finished() -> None:
    written = Outcome("0.2.0", NEW, "rolled-back", "not-ready", "late", 5)
    assert slotgate.decide(view(current="0.1.0", outcome=written), at_start=True) == FinishRollBack(TRIAL, None)
    unexplained = slotgate.decide(view(current="0.1.0"), at_start=True)
    assert isinstance(unexplained, FinishRollBack) and unexplained.outcome.outcome == "rolled-back"


def test_a_request_already_handled_is_named() -> None:
    request = Request(release_id=NEW, version="0.2.0", allow_downgrade=False, at_ms=100)
    assert slotgate.already_handled(request, View(now_ms=0, current=None), None) is None
    assert "prepared" in slotgate.already_handled(request, View(0, None, prepared=Named(NEW, "0.2.0")), None)
    assert "current" in slotgate.already_handled(request, View(0, "0.2.0", trial=None), NEW)
    judged = Outcome("0.2.0", NEW, "refused", "no-room", "full", 200)
    assert "judged" in slotgate.already_handled(request, View(0, None, outcome=judged), None)
    retried = Request(release_id=NEW, version="0.2.0", allow_downgrade=False, at_ms=300)
    assert slotgate.already_handled(retried, View(0, None, outcome=judged), None) is None


def test_keep_names_every_linked_version() -> None:
    assert slotgate.keep(view(prepared=Named(OLD, "0.3.0")), "0.0.9") == {"0.2.0", "0.1.0", "0.3.0", "0.0.9"}
    assert slotgate.keep(View(now_ms=0, current=None), None) == set()


def test_every_decision_has_words() -> None:
    for decision in (Nothing("x"), StartTrial(TRIAL), CountStart(TRIAL), DropSwitch("y"),
                     FinishRollBack(TRIAL, None)):
        assert slotgate.describe(decision)
