"""Fixtures of the central store's tests: one PostgreSQL, one local TSA and one S3 server (``s3.py``) for
the whole run; a fresh database or bucket per test.

Backends. A test that takes the ``central`` data dir runs once per backend:
``embedded`` (the SQLite index and files under the data dir) and ``pg-s3`` (a
fresh database of the session's PostgreSQL and a fresh bucket of its
SeaweedFS, named in the data dir's ``central.toml``, which the ingest core,
the tools and the CLI read as ``serve`` does). ``--central-backend embedded``
or ``pg-s3`` runs one. A test that looks at the SQLite file or the object files
themselves says so with ``@pytest.mark.embedded_only("why")`` and runs on the
embedded store alone. A test that writes its own sections to ``central.toml``
adds them with :func:`add_config`, which keeps the backend's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3 import s3_bucket, s3_store, seaweed  # noqa: F401  (fixtures, shared once per session)

from s3 import store_toml

from central_boxes import add_config

from linetap.sync.central.keys import keys_init
from linetap.sync.central.localpg import LocalPostgres
from local_tsa import LocalTsa, make_tsa_files

_databases = itertools.count(1)
BACKENDS = ("embedded", "pg-s3")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "embedded_only(reason): a central test that reads the SQLite file or the "
                                       "object files directly; it runs on the embedded backend alone")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``central`` (through ``central_backend``) once per chosen backend."""
    if "central_backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--central-backend")
    backends = [b for b in BACKENDS if chosen in (b, "both")]
    if metafunc.definition.get_closest_marker("embedded_only") is not None:
        backends = [b for b in backends if b == "embedded"]
    if not backends:  # --central-backend pg-s3 and an embedded-only test
        backends = [pytest.param("embedded", marks=pytest.mark.skip(reason="embedded only; --central-backend "
                                                                           f"{chosen}"))]
    metafunc.parametrize("central_backend", backends, indirect=True)


@pytest.fixture
def central_backend(request: pytest.FixtureRequest) -> str:
    """``embedded`` or ``pg-s3``: the backend of this test's ``central`` (set by :func:`pytest_generate_tests`)."""
    return request.param


@pytest.fixture
def central(tmp_path: Path, central_backend: str, request: pytest.FixtureRequest) -> Path:
    """A central store data dir with its keys made and nothing enrolled, on this test's backend."""
    folder = tmp_path / "central"
    keys_init(folder)
    if central_backend == "pg-s3":
        bucket = request.getfixturevalue("s3_bucket")
        add_config(folder, f'[index]\nurl = "{request.getfixturevalue("pg_url")}"\npool_size = 2\n'
                           + store_toml(request.getfixturevalue("seaweed"), bucket, folder))
    return folder


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
