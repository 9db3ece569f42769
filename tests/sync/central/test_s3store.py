"""The S3 store on a real S3 server (SeaweedFS on loopback): object lock, legal hold, versions, checksums,
credentials, the local server itself and the [store] config."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync.central.config import CentralConfig, StoreSection, load_config
from linetap.sync.central import s3store
from linetap.sync.central.locals3 import IDENTITY_FILE, LocalSeaweed
from linetap.sync.central.s3store import S3Store, credentials, read_credentials
from linetap.sync.central.store import (FileStore, Lock, LockUnsupported, ObjectLocked, StoreUnavailable,
                                        open_store, retention_lock, segment_key)

KEY = segment_key("box-a", "01890a5d-ac96-774b-bcce-b302099a8057", 3)
UTC = dt.timezone.utc
LATER = dt.datetime(2031, 5, 1, tzinfo=UTC)


def versions(seaweed: LocalSeaweed, bucket: str) -> tuple[list[str], list[str]]:
    """(object versions, delete markers) in the bucket, as version ids."""
    page = seaweed.client().list_object_versions(Bucket=bucket)
    return ([v["VersionId"] for v in page.get("Versions", [])],
            [m["VersionId"] for m in page.get("DeleteMarkers", [])])


def test_objects_are_laid_out_by_device_and_date_under_the_prefix(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"x")
    listed = seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["site-a/box-a/2023/06/30/01890a5d-ac96-774b-bcce-b302099a8057/000003.age"]


def test_a_repeated_put_writes_no_second_version(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"same bytes")
    s3_store.put(KEY, b"same bytes")
    assert len(versions(seaweed, s3_bucket)[0]) == 1
    s3_store.put(KEY, b"other bytes")
    assert len(versions(seaweed, s3_bucket)[0]) == 2


def test_a_compliance_locked_version_refuses_deletion_on_the_server(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"evidence")
    assert s3_store.retained(KEY) is None
    s3_store.lock(KEY, Lock("COMPLIANCE", LATER))
    assert s3_store.retained(KEY).until == LATER  # asked before acting, nothing deleted
    with pytest.raises(ObjectLocked, match=r"retained until 2031-05-01T00:00:00Z in COMPLIANCE mode") as refused:
        s3_store.erase(KEY)
    assert refused.value.until == LATER and refused.value.mode == "COMPLIANCE"
    [version], _ = versions(seaweed, s3_bucket)
    with pytest.raises(ClientError, match="AccessDenied"):  # the server itself, not only our check
        seaweed.client().delete_object(Bucket=s3_bucket, Key="site-a/" + KEY, VersionId=version)
    with pytest.raises(ClientError, match="AccessDenied"):  # nor can it be shortened
        seaweed.client().put_object_retention(Bucket=s3_bucket, Key="site-a/" + KEY, VersionId=version,
                                              Retention={"Mode": "COMPLIANCE", "RetainUntilDate": LATER.replace(year=2030)})
    assert s3_store.get(KEY) == b"evidence"


def test_the_servers_refusal_is_explained_when_our_clock_thinks_the_lock_is_over(seaweed, s3_bucket) -> None:
    ahead = ManualClock(wall_offset=LATER.timestamp() + 86400)  # our clock past the date, the server's not
    store = S3Store(seaweed.client(), s3_bucket, clock=ahead)
    store.put(KEY, b"evidence")
    store.lock(KEY, Lock("GOVERNANCE", dt.datetime.now(UTC) + dt.timedelta(days=2)))
    with pytest.raises(ObjectLocked, match="in GOVERNANCE mode; only an account allowed to bypass"):
        store.erase(KEY)
    assert store.get(KEY) == b"evidence"


def test_a_lock_is_never_shortened_or_weakened(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"x")
    s3_store.lock(KEY, Lock("GOVERNANCE", LATER))
    s3_store.lock(KEY, Lock("GOVERNANCE", LATER - dt.timedelta(days=30)))
    s3_store.lock(KEY, Lock("COMPLIANCE", LATER - dt.timedelta(days=30)))
    head = seaweed.client().head_object(Bucket=s3_bucket, Key="site-a/" + KEY)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] == LATER


def test_legal_hold_refuses_erasure_until_cleared_then_every_version_goes(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"first")
    s3_store.put(KEY, b"second")
    s3_store.hold(KEY, True)
    with pytest.raises(ObjectLocked, match="on legal hold") as refused:
        s3_store.erase(KEY)
    assert refused.value.legal_hold and refused.value.until is None
    held, _ = versions(seaweed, s3_bucket)
    assert len(held) == 2
    with pytest.raises(ClientError, match="AccessDenied"):
        seaweed.client().delete_object(Bucket=s3_bucket, Key="site-a/" + KEY, VersionId=held[0])
    s3_store.hold(KEY, False)
    assert s3_store.retained(KEY) is None
    s3_store.erase(KEY)
    assert versions(seaweed, s3_bucket) == ([], [])  # gone, not hidden behind a delete marker


def test_erase_removes_delete_markers_too(seaweed, s3_bucket, s3_store) -> None:
    s3_store.put(KEY, b"x")
    seaweed.client().delete_object(Bucket=s3_bucket, Key="site-a/" + KEY)  # hides it only
    assert versions(seaweed, s3_bucket)[1]
    s3_store.erase(KEY)
    assert versions(seaweed, s3_bucket) == ([], [])


def test_a_bucket_without_object_lock_says_how_to_get_one(seaweed) -> None:
    store = S3Store(seaweed.client(), seaweed.create_bucket("plain-bucket-lock", object_lock=False))
    store.put(KEY, b"x")
    with pytest.raises(LockUnsupported, match="make a new bucket with object lock"):
        store.lock(KEY, Lock("COMPLIANCE", LATER))
    with pytest.raises(LockUnsupported):
        store.hold(KEY, True)
    store.erase(KEY)  # an unversioned bucket erases too
    assert not store.exists(KEY)


def test_check_names_a_missing_bucket_or_one_that_cannot_lock(seaweed, s3_bucket) -> None:
    S3Store(seaweed.client(), s3_bucket).check(object_lock=True)
    plain = S3Store(seaweed.client(), seaweed.create_bucket("plain-bucket-check", object_lock=False))
    plain.check(object_lock=False)
    with pytest.raises(LockUnsupported, match="make a new bucket with object lock"):
        plain.check(object_lock=True)
    with pytest.raises(StoreUnavailable, match="bucket no-such-bucket does not exist.*create it with object lock"):
        S3Store(seaweed.client(), "no-such-bucket").check(object_lock=True)


def test_file_store_refuses_locks_and_checks_holds(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put(KEY, b"x")
    with pytest.raises(LockUnsupported, match='object_lock = "off"'):
        store.lock(KEY, Lock("COMPLIANCE", LATER))
    store.hold(KEY, True)
    assert store.retained(KEY) is None
    store.erase(KEY)
    assert not store.exists(KEY)


def test_a_store_made_from_config_carries_on_after_a_server_restart(seaweed, s3_bucket, tmp_path: Path) -> None:
    store = S3Store.from_config(StoreSection(url=f"s3://{s3_bucket}", endpoint_url=seaweed.endpoint), tmp_path,
                                environ=seaweed.environ())
    store.put(KEY, b"before")
    seaweed.restart()  # pooled connections to the old process are dead; botocore's bounded retries reconnect
    store.put(KEY + ".2", b"after")
    assert (store.get(KEY), store.get(KEY + ".2")) == (b"before", b"after")


def test_an_object_larger_than_any_stored_one_is_refused_unread(seaweed, s3_bucket, s3_store,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3store, "MAX_OBJECT", 1000)
    seaweed.client().put_object(Bucket=s3_bucket, Key="site-a/" + KEY, Body=b"x" * 1001)  # not by us
    with pytest.raises(SyncError, match="1001 bytes, over the 1000 any stored object may be"):
        s3_store.get(KEY)


def test_a_damaged_upload_is_refused_by_the_server(seaweed, s3_bucket) -> None:
    client = seaweed.client(request_checksum_calculation="when_required")  # no CRC32 of botocore's own

    def damage(request, **_: object) -> None:  # after checksums and signature: a flipped byte on the way
        body = request.body.read() if hasattr(request.body, "read") else request.body
        request.body = io.BytesIO(b"X" + body[1:])
    client.meta.events.register("before-send.s3.PutObject", damage)
    store = S3Store(client, s3_bucket)
    with pytest.raises(StoreUnavailable, match="BadDigest"):
        store.put(KEY, b"the bytes the box sent")
    assert not store.exists(KEY)
    client.put_object(Bucket=s3_bucket, Key="unchecked", Body=b"the bytes the box sent")  # without Content-MD5...
    assert seaweed.client().get_object(Bucket=s3_bucket, Key="unchecked")["Body"].read().startswith(b"X")  # ...stored


def test_retention_lock_dates_follow_the_category() -> None:
    started = int(dt.datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
    assert retention_lock("off", started, 365) is None
    assert retention_lock("compliance", started, 0) is None  # kept for ever: no date to lock to
    lock = retention_lock("governance", started, 30)
    assert lock == Lock("GOVERNANCE", dt.datetime(2026, 3, 31, 12, tzinfo=UTC))
    assert lock.describe() == "retained until 2026-03-31T12:00:00Z in GOVERNANCE mode"
    day_ms = 86_400_000
    assert retention_lock("governance", started, 30, now_ms=started + 29 * day_ms) == lock
    assert retention_lock("governance", started, 30, now_ms=started + 30 * day_ms) is None  # already over
    with pytest.raises(ConfigError):
        Lock("COMPLIANCE", dt.datetime(2030, 1, 1))  # no time zone


# -- credentials --

def section(seaweed: LocalSeaweed, bucket: str, **extra: object) -> StoreSection:
    return StoreSection(url=f"s3://{bucket}/site-a", endpoint_url=seaweed.endpoint, max_attempts=1,
                        connect_timeout_s=1.0, **extra)


def write_credentials(path: Path, key: str, secret: str, mode: int = 0o600) -> Path:
    path.write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    path.chmod(mode)
    return path


def test_credentials_from_a_0600_file_named_in_config(seaweed, s3_bucket, tmp_path: Path) -> None:
    write_credentials(tmp_path / "s3.credentials", seaweed.access_key, seaweed.secret_key)
    store = S3Store.from_config(section(seaweed, s3_bucket, credentials_file="s3.credentials"), tmp_path,
                                environ={})
    store.put(KEY, b"x")
    assert store.get(KEY) == b"x"


def test_a_credentials_file_readable_by_others_is_refused_with_the_fix(seaweed, tmp_path: Path) -> None:
    path = write_credentials(tmp_path / "s3.credentials", seaweed.access_key, seaweed.secret_key, 0o644)
    with pytest.raises(ConfigError, match=f"mode 0644.*`chmod 600 {path}`") as refused:
        read_credentials(path)
    assert seaweed.secret_key not in str(refused.value)


@pytest.mark.parametrize("text, problem", [("aws_access_key_id = a\n", "not in the AWS credentials format"),
                                           ("[default]\naws_access_key_id = a\n", "lacks aws_secret_access_key"),
                                           ("[a]\nx=1\n[b]\ny=2\n", "no \\[default\\] section")])
def test_a_malformed_credentials_file_is_named_without_quoting_it(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "s3.credentials"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=problem) as refused:
        read_credentials(path)
    assert "= a" not in str(refused.value)


def test_credentials_from_the_environment_or_none_at_all(seaweed, s3_bucket, tmp_path: Path) -> None:
    found = credentials(section(seaweed, s3_bucket), tmp_path, seaweed.environ())
    assert found.source == "the environment (AWS_*)" and seaweed.secret_key not in repr(found)
    assert credentials(section(seaweed, s3_bucket), tmp_path, {"AWS_PROFILE": "archive"}).profile == "archive"
    with pytest.raises(ConfigError, match="no S3 credentials: name a 0600 file"):
        credentials(section(seaweed, s3_bucket), tmp_path, {})


def test_the_secret_never_reaches_logs_or_errors(seaweed, s3_bucket, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    secret = "Sup3r-Secret-" + "k" * 20
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": secret}
    caplog.set_level(logging.DEBUG)  # botocore's wire logging included
    refused = S3Store.from_config(section(seaweed, s3_bucket), tmp_path, environ=env)
    with pytest.raises(StoreUnavailable, match="SignatureDoesNotMatch") as wrong:
        refused.put(KEY, b"x")
    closed = StoreSection(url=f"s3://{s3_bucket}", endpoint_url="http://127.0.0.1:9", max_attempts=2,
                          connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="cannot be reached") as unreachable:
        S3Store.from_config(closed, tmp_path, environ=env).get(KEY)
    assert "SignatureDoesNotMatch" in caplog.text or "403" in caplog.text  # the log did see the exchange
    for text in (caplog.text, str(wrong.value), str(unreachable.value), repr(refused)):
        assert secret not in text


# -- configuration and the factory --

def test_open_store_follows_the_store_section(seaweed, s3_bucket, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(CentralConfig(), tmp_path), FileStore)
    for name, value in seaweed.environ().items():
        monkeypatch.setenv(name, value)
    config_file = tmp_path / "central.toml"
    config_file.write_text(f'[store]\nurl = "s3://{s3_bucket}/site-a"\nendpoint_url = "{seaweed.endpoint}"\n'
                           'object_lock = "compliance"\n')
    store = open_store(load_config(config_file, tmp_path), tmp_path)
    assert isinstance(store, S3Store) and store.prefix == "site-a/"
    store.put(KEY, b"x")
    assert store.get(KEY) == b"x"


@pytest.mark.parametrize("text, problem", [
    ('url = "s3://UPPER"', "store.url = 's3://UPPER': must be \"s3://bucket\""),
    ('url = "s3://good/../up"', "store.url"),
    ('object_lock = "compliance"', "store.object_lock = 'compliance': needs an S3 bucket"),
    ('url = "s3://good"\nobject_lock = "yes"', "one of 'off', 'governance' or 'compliance'"),
    ('credentials_file = "keys/s3"', "is only read with an S3 url"),
    ('url = "s3://good"\nendpoint_url = "http://me:pw@host"', r"'http://me:\*\*\*@host': must be"),
    ('url = "s3://good"\naws_secret_access_key = "x"', r"unknown key"),
])
def test_store_section_mistakes_are_named_with_their_fix(tmp_path: Path, text: str, problem: str) -> None:
    config_file = tmp_path / "central.toml"
    config_file.write_text("[store]\n" + text + "\n")
    with pytest.raises(ConfigError, match=problem) as refused:
        load_config(config_file, tmp_path)
    assert "pw@" not in str(refused.value)


# -- the local server --

def test_the_local_server_listens_on_loopback_only_and_keeps_its_secret_private(seaweed) -> None:
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[3] for line in listening.splitlines() if f"pid={seaweed.pid}," in line]
    assert sorted(int(a.rsplit(":", 1)[1]) for a in mine) == sorted(seaweed.ports.values())
    assert all(a.startswith("127.0.0.1:") for a in mine)
    assert stat.S_IMODE((seaweed.folder / IDENTITY_FILE).stat().st_mode) == 0o600
    argv = Path(f"/proc/{seaweed.pid}/cmdline").read_bytes()
    assert seaweed.secret_key.encode() not in argv and seaweed.secret_key not in repr(seaweed)


def test_a_wrong_secret_is_refused_by_the_local_server(seaweed, s3_bucket) -> None:
    client = seaweed.client()
    client._request_signer._credentials.secret_key = "not-the-secret"  # noqa: SLF001 (a forged client)
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        client.list_objects_v2(Bucket=s3_bucket)
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != seaweed.secret_key
