"""The update hand-over files: each round-trips, and each hostile variant is a named SlotFileError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linetap.sync import appslots
from linetap.sync.appslots import Health, Named, Outcome, Request, SlotFileError, Trial

RID = "ab" * 32


def test_box_files_round_trip(tmp_path: Path) -> None:
    request = Request(release_id=RID, version="0.2.0", allow_downgrade=False, at_ms=12)
    appslots.write_request(tmp_path, request)
    assert appslots.read_request(tmp_path) == request
    appslots.write_switch(tmp_path, Named(RID, "0.2.0"))
    assert appslots.read_switch(tmp_path) == Named(RID, "0.2.0")
    appslots.write_health(tmp_path, Health("0.2.0", healthy=False, code="selftest-failed", reason="no audio"))
    assert appslots.read_health(tmp_path) == (None, Health("0.2.0", False, "selftest-failed", "no audio"))
    appslots.write_health(tmp_path, Health("0.2.0", healthy=True))
    assert appslots.read_health(tmp_path) == (Health("0.2.0", True), None)


def test_root_files_round_trip(tmp_path: Path) -> None:
    assert appslots.read_prepared(tmp_path) is None and appslots.read_trial(tmp_path) is None
    appslots.write_prepared(tmp_path, Named(RID, "1.2"))
    assert appslots.read_prepared(tmp_path) == Named(RID, "1.2")
    trial = Trial(version="1.2", release_id=RID, previous=None, deadline_ms=5, starts=0)
    appslots.write_trial(tmp_path, trial)
    assert appslots.read_trial(tmp_path) == trial
    outcome = Outcome(version=None, release_id=None, outcome="refused", code="malformed", reason="x", at_ms=1)
    appslots.write_outcome(tmp_path, outcome)
    assert appslots.read_outcome(tmp_path) == outcome
    assert oct(os.stat(tmp_path / appslots.OUTCOME).st_mode & 0o777) == "0o644"  # readable by the box


def test_links_name_only_complete_versions(tmp_path: Path) -> None:
    assert appslots.read_link(tmp_path, appslots.CURRENT) is None
    folder = appslots.version_dir(tmp_path, "0.2.0")
    folder.mkdir(parents=True)
    appslots.flip(tmp_path, appslots.CURRENT, "0.2.0")
    assert os.readlink(tmp_path / "current") == "versions/0.2.0"
    assert appslots.read_link(tmp_path, appslots.CURRENT) is None  # no version.json: not complete
    appslots.write_version_file(folder, Named(RID, "0.2.0"))
    assert appslots.read_link(tmp_path, appslots.CURRENT) == "0.2.0"
    (tmp_path / "current").unlink()
    os.symlink("/etc", tmp_path / "current")
    assert appslots.read_link(tmp_path, appslots.CURRENT) is None
    appslots.flip(tmp_path, appslots.CURRENT, None)
    assert not os.path.lexists(tmp_path / "current")


@pytest.mark.parametrize("text, problem", [
    (b'{"allow_downgrade":false,"at_ms":1,"release_id":"../../etc","version":"0.2.0"}', "64 lower-case hex"),
    (b'{"allow_downgrade":false,"at_ms":1,"release_id":"' + RID.encode() + b'","version":"0.2.0rc1"}',
     "dotted whole numbers"),
    (b'{"allow_downgrade":1,"at_ms":1,"release_id":"' + RID.encode() + b'","version":"0.2.0"}', "true or false"),
    (b'{"allow_downgrade":false,"at_ms":-1,"release_id":"' + RID.encode() + b'","version":"0.2.0"}',
     "whole number"),
    (b'{"at_ms":1,"release_id":"' + RID.encode() + b'","version":"0.2.0"}', "JSON object with"),
    (b'[' * 100 + b']' * 100, "nests deeper"),
    (b'{"a":"' + b'x' * 5000 + b'"}', "over 4096 bytes"),
    (b'\xff\xfe', "not UTF-8"),
])
def test_hostile_request_is_refused_by_name(tmp_path: Path, text: bytes, problem: str) -> None:
    path = appslots.update_dir(tmp_path) / appslots.REQUEST
    path.parent.mkdir(parents=True)
    path.write_bytes(text)
    with pytest.raises(SlotFileError, match=problem):
        appslots.read_request(tmp_path)


def test_a_symlinked_or_special_file_is_not_read(tmp_path: Path) -> None:
    folder = appslots.update_dir(tmp_path)
    folder.mkdir(parents=True)
    os.symlink("/etc/passwd", folder / appslots.SWITCH)
    with pytest.raises(SlotFileError, match="symbolic link"):
        appslots.read_switch(tmp_path)
    os.mkfifo(folder / appslots.HEALTHY)
    with pytest.raises(SlotFileError, match="not a plain file"):
        appslots.read_health(tmp_path)


def test_unhealthy_code_must_be_an_update_code(tmp_path: Path) -> None:
    folder = appslots.update_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / appslots.UNHEALTHY).write_text('{"code":"rm -rf","reason":"","version":"1"}')
    with pytest.raises(SlotFileError, match="update codes"):
        appslots.read_health(tmp_path)


def test_paths_are_never_made_from_bad_names(tmp_path: Path) -> None:
    with pytest.raises(SlotFileError):
        appslots.staged_dir(tmp_path, "../x")
    with pytest.raises(SlotFileError):
        appslots.version_dir(tmp_path, "../../bin")
