"""Fixtures shared by the sync tests (box side and central store).

Brokers: a test asks for ``broker``; its module says which one with a marker,

    pytestmark = pytest.mark.broker("session")                    # one broker for the whole run
    pytestmark = pytest.mark.broker("test")                       # a fresh one per test, persistence on
    pytestmark = pytest.mark.broker("test", persistence=False)    # a fresh one per test that forgets on restart

``session`` is for tests that use their own client ids, groups and devices and never stop the
broker, so what earlier tests left in it cannot matter. A test that stops or restarts the broker,
or counts what it holds, takes its own (``test``); ``persistence`` then decides whether sessions
and queued messages survive a restart, as on a real broker with or without its persistence file.
A module-scoped fixture cannot use the per-test ``broker``; it asks for ``shared_broker``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import keys_init
from linetap.sync.pki import CertificateAuthority

SCOPES = ("session", "test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", 'broker(scope, *, persistence=True): which broker the `broker` fixture gives this module\'s '
                   'tests: "session" (shared, never restarted) or "test" (fresh per test); see tests/sync/conftest.py')


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One broker for the whole run; never stopped by a test, so it needs no persistence file."""
    with LocalBroker(tmp_path_factory.mktemp("shared-broker"), persistence=False) as running:
        yield running


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalBroker]:
    """The broker the module's ``broker`` marker names (a fresh one with persistence if it names none)."""
    marker = request.node.get_closest_marker("broker")
    scope = marker.args[0] if marker and marker.args else "test"
    persistence = marker.kwargs.get("persistence", True) if marker else True
    if scope not in SCOPES:
        raise pytest.UsageError(f"pytest.mark.broker scope must be one of {SCOPES}, not {scope!r}")
    if scope == "session":
        if marker and "persistence" in marker.kwargs:
            raise pytest.UsageError("the shared broker is never restarted: pytest.mark.broker('session') "
                                    "takes no persistence")
        yield request.getfixturevalue("shared_broker")
        return
    with LocalBroker(tmp_path / "broker", persistence=persistence) as running:
        yield running


@pytest.fixture(scope="module")
def certificate_authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A test CA for one module's TLS broker and clients (its folder holds the issued files)."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def central(tmp_path: Path) -> Path:
    """A central store data dir with its keys made and nothing enrolled."""
    folder = tmp_path / "central"
    keys_init(folder)
    return folder


@pytest.fixture(scope="session")
def update_kit(tmp_path_factory: pytest.TempPathFactory):
    """Release and operator keys and the working tree's wheel at the next version (tests/update_helpers.py)."""
    import update_helpers

    return update_helpers.Kit(tmp_path_factory.mktemp("update-kit"))
