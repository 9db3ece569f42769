"""The S3 server of the store tests: one SeaweedFS per test session, a fresh bucket per test.

Imported by ``conftest.py`` of this folder, so every module shares the one
server. A test that stops the server restarts it before it ends
(``seaweed.restart()``); the buckets and objects of other tests survive that.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from linetap.firmware.durable import write_new_private
from linetap.sync.central.config import StoreSection
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


CREDENTIALS_FILE = "keys/s3.credentials"


def store_section(seaweed: LocalSeaweed, bucket: str, data_dir: Path, **options: object) -> StoreSection:
    """``[store]`` for ``bucket`` under the prefix ``site-a``, its credentials in a 0600 file under ``data_dir``."""
    write_credentials(seaweed, data_dir)
    return StoreSection(url=f"s3://{bucket}/site-a", endpoint_url=seaweed.endpoint,
                        credentials_file=CREDENTIALS_FILE, **options)


def store_toml(seaweed: LocalSeaweed, bucket: str, data_dir: Path, object_lock: str = "off") -> str:
    """The same as a ``[store]`` section of ``central.toml``."""
    write_credentials(seaweed, data_dir)
    return (f'[store]\nurl = "s3://{bucket}/site-a"\nendpoint_url = "{seaweed.endpoint}"\n'
            f'credentials_file = "{CREDENTIALS_FILE}"\nobject_lock = "{object_lock}"\n')


def write_credentials(seaweed: LocalSeaweed, data_dir: Path) -> Path:
    path = Path(data_dir) / CREDENTIALS_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new_private(path, f"[default]\naws_access_key_id = {seaweed.access_key}\n"
                                f"aws_secret_access_key = {seaweed.secret_key}\n".encode())
    return path
