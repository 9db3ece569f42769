"""Fixtures of the central store's tests: one PostgreSQL, one local TSA and one S3 server (``s3.py``) for
the whole run; a fresh database or bucket per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3 import s3_bucket, s3_store, seaweed  # noqa: F401  (fixtures, shared once per session)

from linetap.sync.central.localpg import LocalPostgres
from local_tsa import LocalTsa, make_tsa_files

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


@pytest.fixture(scope="session")
def tsa_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and TSA certificate, made once per run."""
    return make_tsa_files(tmp_path_factory.mktemp("tsa"))


@pytest.fixture(scope="session")
def local_tsa(tsa_files: Path) -> Iterator[LocalTsa]:
    """``openssl ts -reply`` on loopback, shared by every test of the run (a test that breaks it on purpose
    sets ``mode`` back: see the ``tsa`` fixture of test_timestamps)."""
    tsa = LocalTsa(tsa_files).start()
    yield tsa
    tsa.close()
