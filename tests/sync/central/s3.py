"""The S3 server of the store tests: one SeaweedFS per test session, a fresh bucket per test.

Imported by ``conftest.py`` of this folder, so every module shares the one
server. A test that stops the server restarts it before it ends
(``seaweed.restart()``); the buckets and objects of other tests survive that.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.s3store import S3Store

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSeaweed]:
    """SeaweedFS (``weed mini``) on loopback for the whole run."""
    with LocalSeaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweed: LocalSeaweed) -> str:
    """A new bucket with object lock (so versioned) for this test alone."""
    return seaweed.create_bucket(f"test-{next(_numbers)}")


@pytest.fixture
def s3_store(seaweed: LocalSeaweed, s3_bucket: str) -> S3Store:
    """An :class:`S3Store` on this test's bucket under a prefix, failing fast (one attempt per call)."""
    return S3Store(seaweed.client(), s3_bucket, "site-a")
