"""The push policy's table: every config key decided, and what it leaves in each call while in force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from linetap.drivers.events import HookChanged
from linetap.firmware.callflow import CallFlow
from linetap.firmware.callloop import policy_from
from linetap.firmware.clock import ManualClock
from linetap.firmware.config import Config
from linetap.sync import pushpolicy
from linetap.sync.pushpolicy import POLICY, BoxFacts, consent_note, judge, key_paths, prompt_problem

LOCAL = Config.model_validate({"device": {"id": "lt-desk-1"}, "sync": {"broker": "broker.example.net"}})


def pushed(**sections: dict) -> Config:
    data = LOCAL.model_dump()
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return Config.model_validate(data)


def test_every_config_key_has_exactly_one_rule() -> None:
    """A key added to the schema cannot be pushed until someone decides what a push may do with it."""
    assert set(POLICY) == set(key_paths(Config()))


def test_a_key_without_a_rule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(POLICY, "sync.window")
    verdict = judge(LOCAL, pushed(sync={"window": 64}), BoxFacts())
    assert verdict.refusals == ("sync.window 32 -> 64: refused, no rule decides what a push may do with this key",)


def test_the_same_value_as_the_local_file_is_no_change() -> None:
    verdict = judge(LOCAL, pushed(sync={"tls": True, "ca_file": LOCAL.sync.ca_file}), BoxFacts())
    assert verdict.changes == () and verdict.refusals == ()


def test_a_new_broker_keeps_the_boxs_own_trust_anchor() -> None:
    verdict = judge(LOCAL, pushed(sync={"broker": "other.example.net", "port": 8884}), BoxFacts())
    assert verdict.refusals == () and [c.key for c in verdict.changes] == ["sync.broker", "sync.port"]
    assert all(c.rule.guarded and c.rule.alarm is None for c in verdict.changes)


def test_several_refusals_are_all_named() -> None:
    verdict = judge(LOCAL, pushed(consent={"announce": False, "warning_tone": False},
                                  sync={"ca_file": "/tmp/ca.pem"}), BoxFacts())
    assert [r.split(" ", 1)[0] for r in verdict.refusals] == ["consent.announce", "consent.warning_tone",
                                                              "sync.ca_file"]


def test_the_packaged_prompts_are_inside_the_prompt_folders(tmp_path: Path) -> None:
    packaged = pushpolicy.prompt_folders(None)[0]
    assert prompt_problem(str(packaged / "prompt-en.ogg"), None, os.path.realpath) is None
    assert prompt_problem(str(packaged / ".." / "config.py"), None, os.path.realpath) is not None
    assert prompt_problem(str(tmp_path / "prompts" / "x.ogg"), None, os.path.realpath) is not None  # no data folder given
    assert prompt_problem(str(tmp_path / "prompts" / "x.ogg"), tmp_path, os.path.realpath) is None
    assert prompt_problem("builtin:en", None, None) is None and prompt_problem("builtin:", None, None) is not None


def test_a_symlinked_folder_inside_the_prompt_folder_may_not_lead_out(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "etc").symlink_to("/etc")
    assert "symbolic link" in prompt_problem(str(tmp_path / "prompts" / "etc" / "passwd"), tmp_path, os.path.realpath)


def test_secrets_are_masked_when_shown() -> None:
    assert pushpolicy._show(SecretStr("hunter2")) == pushpolicy.MASK
    assert len(pushpolicy._show("x" * 1000)) == 120


def test_the_consent_note_names_the_pushed_consent_keys_only() -> None:
    running = pushed(consent={"warning_interval_s": 10.0, "opt_out_key": "5"}, sync={"window": 64})
    assert consent_note(LOCAL, running, 7) == {
        "source": "fleet", "changed": ["consent.warning_interval_s", "consent.opt_out_key"], "config_version": 7}
    assert consent_note(LOCAL, pushed(sync={"window": 64}), 7) is None


def test_every_call_opens_with_the_policy_event_while_pushed_consent_is_in_force(clock: ManualClock) -> None:
    running = pushed(consent={"warning_interval_s": 10.0})
    flow = CallFlow(policy_from(running, None, consent_note(LOCAL, running, 3)), clock)
    flow.handle(HookChanged(off_hook=True, source="gpio"))
    kinds = [(e.kind, e.detail) for e in flow.call.events]
    assert kinds[:2] == [("call-start", {"source": "gpio"}),
                         ("policy", {"source": "fleet", "changed": ["consent.warning_interval_s"],
                                     "config_version": 3})]
    plain = CallFlow(policy_from(LOCAL, None, consent_note(LOCAL, LOCAL, 0)), clock)
    plain.handle(HookChanged(off_hook=True, source="gpio"))
    assert all(e.kind != "policy" for e in plain.call.events)


def test_without_the_box_s_view_of_its_files_no_pushed_path_is_taken(tmp_path: Path) -> None:
    """The policy does no I/O itself: with no resolver it cannot show a path stays inside, so it refuses."""
    assert "cannot be checked" in prompt_problem(str(tmp_path / "prompts" / "x.ogg"), tmp_path, None)
