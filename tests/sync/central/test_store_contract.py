"""One contract for every object store: the file store and the S3 store behave alike.

Each test runs on both (``store`` is parametrised); the S3 one runs on the
session's SeaweedFS in a bucket of its own. Hostile keys are refused before
any request: the S3 client is wrapped in a spy that counts the calls made.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import (BadKey, DurableFiles, FileStore, ObjectMissing, ObjectStore,
                                        StoreUnavailable, manifest_key, segment_key)

DEVICE = "box-a"
RECORDING = "01890a5d-ac96-774b-bcce-b302099a8057"  # a UUIDv7 of 2023-06-30
KEY = segment_key(DEVICE, RECORDING, 0)
HOSTILE_KEYS = ["", "/etc/passwd", "../escape", "box-a/../../escape", "box-a/./x", "box-a//x", "box-a/x/",
                "box-a/nul\x00here", "box-a/new\nline", "a/" + "x" * 256, "a/" * 600, "box-a/.tmp-1-2-x"]


class Spy:
    """A boto3 client that counts the calls made through it (and makes them)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)
        return call


class FullDisk(DurableFiles):
    """Writes fail like a full disk while ``full`` is set."""

    full = False

    def write(self, path: Path, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(path, data)


@pytest.fixture(params=["files", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, Callable[[], Any]]]:
    """(store, outage): ``outage()`` is a context manager during which the store cannot be reached."""
    if request.param == "files":
        files = FullDisk()

        @contextmanager
        def full_disk() -> Iterator[None]:
            files.full = True
            yield
            files.full = False
        yield FileStore(tmp_path / "objects", files=files), full_disk
        return
    seaweed: LocalSeaweed = request.getfixturevalue("seaweed")
    store = S3Store(Spy(seaweed.client()), request.getfixturevalue("s3_bucket"), "site-a")

    @contextmanager
    def stopped() -> Iterator[None]:
        seaweed.stop()
        try:
            yield
        finally:
            seaweed.start()
    yield store, stopped


@pytest.fixture
def store(backend: tuple[ObjectStore, Callable[[], Any]]) -> ObjectStore:
    return backend[0]


def test_put_get_exists(store: ObjectStore) -> None:
    assert not store.exists(KEY)
    store.put(KEY, b"segment bytes")
    assert store.exists(KEY)
    assert store.get(KEY) == b"segment bytes"
    assert not store.exists(manifest_key(DEVICE, RECORDING))


def test_repeated_put_of_the_same_bytes_is_harmless(store: ObjectStore) -> None:
    store.put(KEY, b"same")
    store.put(KEY, b"same")
    assert store.get(KEY) == b"same"


def test_put_of_other_bytes_replaces(store: ObjectStore) -> None:
    store.put(KEY, b"first signed tombstone")
    store.put(KEY, b"second signed tombstone")
    assert store.get(KEY) == b"second signed tombstone"


def test_empty_and_binary_objects_round_trip(store: ObjectStore) -> None:
    data = bytes(range(256)) * 1000
    store.put(KEY, data)
    store.put(manifest_key(DEVICE, RECORDING), b"")
    assert store.get(KEY) == data
    assert store.get(manifest_key(DEVICE, RECORDING)) == b""


def test_missing_keys(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing, match="not in the store"):
        store.get(KEY)
    assert not store.exists(KEY)
    store.erase(KEY)  # absent: nothing to do
    with pytest.raises(ObjectMissing):
        store.hold(KEY, True)


def test_erase_removes_the_object(store: ObjectStore) -> None:
    store.put(KEY, b"to be erased")
    store.put(KEY, b"to be erased, replaced")
    assert store.retained(KEY) is None  # nothing locks it
    store.erase(KEY)
    assert not store.exists(KEY)
    with pytest.raises(ObjectMissing):
        store.get(KEY)
    store.put(KEY, b"stored again")  # the key is free again
    assert store.get(KEY) == b"stored again"


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_keys_are_refused_before_any_request(store: ObjectStore, key: str, tmp_path: Path) -> None:
    calls = store._client.calls if isinstance(store, S3Store) else []
    for action in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
                   lambda: store.erase(key), lambda: store.hold(key, True), lambda: store.retained(key)):
        with pytest.raises(BadKey, match="object key"):
            action()
    assert calls == []
    assert not (tmp_path.parent / "escape").exists()


def test_unreachable_store_then_working_again(backend: tuple[ObjectStore, Callable[[], Any]]) -> None:
    store, outage = backend
    store.put(KEY, b"before")
    with outage():
        with pytest.raises(StoreUnavailable, match="retry"):
            store.put(manifest_key(DEVICE, RECORDING), b"during")
    assert not store.exists(manifest_key(DEVICE, RECORDING))  # nothing half-written
    store.put(manifest_key(DEVICE, RECORDING), b"after")
    assert store.get(manifest_key(DEVICE, RECORDING)) == b"after"
    assert store.get(KEY) == b"before"
