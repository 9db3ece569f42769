"""The throwaway PostgreSQL of the tests and the scale demo: found, refused clearly, restarted with its data."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from linetap.firmware.errors import DeviceMissing
from linetap.sync.central.localpg import LocalPostgres, server_bin


def test_missing_server_programs_name_the_package(tmp_path: Path) -> None:
    (tmp_path / "14" / "bin").mkdir(parents=True)  # a version folder without initdb
    with pytest.raises(DeviceMissing, match="apt-get install postgresql"):
        server_bin(tmp_path)
    with pytest.raises(DeviceMissing, match="apt-get install postgresql"):
        server_bin(tmp_path / "none")  # no PostgreSQL folder at all


def test_the_newest_version_is_taken(tmp_path: Path) -> None:
    for version in ("9", "15", "13"):
        folder = tmp_path / version / "bin"
        folder.mkdir(parents=True)
        for program in ("initdb", "pg_ctl"):
            (folder / program).touch()
    assert server_bin(tmp_path) == tmp_path / "15" / "bin"


def test_a_restart_keeps_what_was_committed(postgres: LocalPostgres, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("CREATE TABLE kept (n BIGINT)")
        db.execute("INSERT INTO kept VALUES (7)")
    postgres.restart(mode="immediate")  # a crash: recovery replays the log
    assert postgres.running
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT n FROM kept").fetchall() == [(7,)]
    with pytest.raises(ValueError, match="stop mode"):
        postgres.stop("now")
