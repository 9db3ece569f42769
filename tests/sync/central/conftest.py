"""Fixtures of the central store's tests: one PostgreSQL for the whole run, a fresh database per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from linetap.sync.central.localpg import LocalPostgres

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL on loopback for the run (a test that stops it starts it again)."""
    with LocalPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    """The URL of an empty database of the session's PostgreSQL, this test's alone."""
    return postgres.create_database(f"test_{next(_databases)}")
