"""The object store on an S3 bucket (boto3): the same contract as the file store, plus object lock and legal hold.

Keys are the store's (``<device>/<YYYY>/<MM>/<DD>/<recording>/...``) under the
optional prefix of ``[store] url``. What each call does on the wire:

- ``put``: one ``PutObject`` with ``Content-MD5`` (the server refuses a damaged
  upload with ``BadDigest``) and ``If-None-Match: *``, so repeating an identical
  put writes no second version; when the key holds other bytes they are
  replaced, as a file is (a new version in a versioned bucket).
- ``get`` / ``exists``: ``GetObject`` (size bounded by the largest object
  ingest takes) / ``HeadObject``.
- ``erase``: every version and delete marker of the key is deleted by version
  id, so the bytes are gone, not hidden behind a delete marker. Before anything
  is deleted each version's lock and legal hold are read; one that applies
  refuses the whole erase with :class:`~linetap.sync.central.store.ObjectLocked`
  saying until when and in which mode (S3's AccessDenied on a locked version is
  mapped to the same).
- ``lock``: ``PutObjectRetention`` on the current version, never shorter or
  weaker than what is there; ``hold``: ``PutObjectLegalHold`` on every version.

Failures the sender should retry (server unreachable, timeouts, 5xx, throttling,
a damaged upload, refused credentials, a missing bucket) raise
:class:`~linetap.sync.central.store.StoreUnavailable`, so ingest answers
``retry`` and acknowledges nothing. botocore's timeouts and bounded retries
(``[store] connect_timeout_s``, ``read_timeout_s``, ``max_attempts``) keep a
call from hanging. Errors name the operation, key and S3 error code; never a
credential (botocore keeps those out of its messages, and so do we).

Credentials (:func:`credentials`): a 0600 file named by ``[store]
credentials_file``, else ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or
``AWS_PROFILE`` from the environment; never argv. Without any of them the
store is refused rather than left to botocore's search (which would ask a
cloud metadata service on the network).
"""

from __future__ import annotations

import base64
import configparser
import datetime as dt
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.sync.central.config import StoreSection
from linetap.sync.central.ingest import MAX_OBJECT
from linetap.sync.central.store import (Lock, LockUnsupported, ObjectLocked, ObjectMissing, StoreUnavailable,
                                        check_key, iso_utc)

logger = logging.getLogger(__name__)

CREDENTIALS_MAX_BYTES = 16 * 1024
MISSING_CODES = ("404", "NoSuchKey", "NotFound", "NoSuchVersion")
RETRY_CODES = ("500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
               "RequestTimeTooSkewed", "BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest")
AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccessDenied", "403")
NO_LOCK_CODES = ("InvalidRequest", "ObjectLockConfigurationNotFoundError", "InvalidBucketState")


@dataclass(frozen=True)
class Credentials:
    """An access key pair and where it came from; its repr never shows the secret."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    source: str
    profile: str | None = None


def credentials(section: StoreSection, data_dir: Path, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials ``[store]`` and the environment give, in that order; :class:`ConfigError` without any."""
    env = os.environ if environ is None else environ
    if section.credentials_file is not None:
        path = Path(section.credentials_file)
        return read_credentials(path if path.is_absolute() else Path(data_dir) / path)
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], "the environment (AWS_*)")
    if env.get("AWS_PROFILE"):
        return Credentials("", "", f"profile {env['AWS_PROFILE']} (AWS_PROFILE)", env["AWS_PROFILE"])
    raise ConfigError("no S3 credentials: name a 0600 file in [store] credentials_file, or set "
                      "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the service's environment")


def read_credentials(path: Path) -> Credentials:
    """``aws_access_key_id`` and ``aws_secret_access_key`` of the ``[default]`` (or only) section of ``path``."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"S3 credentials file {path} has mode {mode:04o}, readable by others; fix it with "
                              f"`chmod 600 {path}` (and rotate the key if others may have read it)")
        text = read_bounded(path, max_bytes=CREDENTIALS_MAX_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"S3 credentials file {path} does not exist; create it (mode 0600) with a [default] "
                          "section holding aws_access_key_id and aws_secret_access_key") from None
    except (FileRefused, UnicodeDecodeError) as e:
        raise ConfigError(f"S3 credentials file {path} {e}; it should be a small UTF-8 text file") from None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error:  # its message would quote the file's lines
        raise ConfigError(f"S3 credentials file {path} is not in the AWS credentials format: "
                          "[default], then aws_access_key_id = ... and aws_secret_access_key = ...") from None
    sections = parser.sections()
    name = "default" if "default" in sections else sections[0] if len(sections) == 1 else None
    if name is None:
        raise ConfigError(f"S3 credentials file {path} has no [default] section (it has {len(sections)}); "
                          "name the one to use [default]")
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not parser[name].get(k, "").strip()]
    if missing:
        raise ConfigError(f"S3 credentials file {path}: section [{name}] lacks {' and '.join(missing)}")
    return Credentials(parser[name]["aws_access_key_id"].strip(), parser[name]["aws_secret_access_key"].strip(),
                       f"file {path}")


def s3_client(section: StoreSection, creds: Credentials) -> Any:
    """A boto3 S3 client with bounded timeouts and retries; path-style addressing on a custom endpoint."""
    config = Config(connect_timeout=section.connect_timeout_s, read_timeout=section.read_timeout_s,
                    retries={"max_attempts": section.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path" if section.endpoint_url else "auto"})
    if creds.profile is not None:
        session = boto3.Session(profile_name=creds.profile, region_name=section.region)
    else:
        session = boto3.Session(aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                                region_name=section.region)
    return session.client("s3", endpoint_url=section.endpoint_url, config=config)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) or str(
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))


class S3Store:
    """:class:`~linetap.sync.central.store.ObjectStore` on ``bucket`` under ``prefix`` through ``client``.

    ``client`` is a boto3 S3 client (the I/O layer, a constructor argument;
    :meth:`from_config` makes one). Thread-safe as boto3 clients are.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, clock: Clock | None = None) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            check_key(prefix.rstrip("/"))
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._clock = clock or SystemClock()

    @classmethod
    def from_config(cls, section: StoreSection, data_dir: Path, *, environ: Mapping[str, str] | None = None,
                    clock: Clock | None = None) -> S3Store:
        creds = credentials(section, data_dir, environ)
        logger.info("object store s3 bucket=%s prefix=%s endpoint=%s credentials=%s object_lock=%s",
                    section.bucket, section.prefix or "-", section.endpoint_url or "aws", creds.source,
                    section.object_lock)
        return cls(s3_client(section, creds), section.bucket, section.prefix, clock=clock)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def check(self, *, object_lock: bool) -> None:
        """Reach the bucket with these credentials; with ``object_lock``, make sure the bucket can lock.

        For start-up and ``config check``: raises :class:`StoreUnavailable` (unreachable, refused, no
        bucket) or :class:`LockUnsupported`, each saying what to fix.
        """
        try:
            self._call("check", "the bucket", self._client.head_bucket)
        except ClientError as e:
            if _code(e) in MISSING_CODES:
                raise StoreUnavailable(f"bucket {self.bucket} does not exist at the S3 endpoint; create it"
                                       f"{' with object lock' if object_lock else ''}") from None
            raise self._refused("check", "the bucket", e) from None
        if not object_lock:
            return
        try:
            answer = self._call("check", "the bucket", self._client.get_object_lock_configuration)
        except ClientError as e:
            raise self._no_lock("check object lock of", "the bucket", e) from None
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise LockUnsupported(f"bucket {self.bucket} has object lock disabled; make a new bucket with object "
                                  'lock, or set [store] object_lock = "off"')

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _name(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def _call(self, op: str, key: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 request; transport failures and retryable answers become :class:`StoreUnavailable`."""
        try:
            return method(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = _code(e)
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"bucket {self.bucket} does not exist at the S3 endpoint; create it (with "
                                       "object lock when [store] object_lock is on), the sender will retry") from None
            if code in RETRY_CODES:
                raise StoreUnavailable(f"S3 {op} of {key} in {self.where} failed ({code}); the sender will "
                                       "retry") from None
            raise
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError("S3 credentials are missing or incomplete; see [store] credentials_file") from None
        except BotoCoreError as e:
            raise StoreUnavailable(f"S3 server of {self.where} cannot be reached to {op} {key} "
                                   f"({type(e).__name__}); the sender will retry") from None

    def _refused(self, op: str, key: str, error: ClientError) -> SyncError:
        code = _code(error)
        if code in AUTH_CODES:
            return StoreUnavailable(f"S3 refused {op} of {key} in {self.where} ({code}): check the credentials "
                                    "([store] credentials_file or AWS_* in the environment) and the bucket policy")
        return SyncError(f"S3 {op} of {key} in {self.where} failed ({code})")

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        digest = hashlib.md5(data, usedforsecurity=False)
        md5 = base64.b64encode(digest.digest()).decode()
        try:
            self._call("put", key, self._client.put_object, Key=name, Body=data, ContentMD5=md5, IfNoneMatch="*")
            return
        except ClientError as e:
            if _code(e) not in ("PreconditionFailed", "412"):
                raise self._refused("put", key, e) from None
        head = self._head(key, name)
        if head is not None and head.get("ETag", "").strip('"') == digest.hexdigest() and \
                head.get("ContentLength") == len(data):
            return  # the same bytes are there already
        try:
            self._call("put", key, self._client.put_object, Key=name, Body=data, ContentMD5=md5)
        except ClientError as e:
            raise self._refused("put", key, e) from None

    def _head(self, key: str, name: str, version: str | None = None) -> dict[str, Any] | None:
        extra = {"VersionId": version} if version else {}
        try:
            return self._call("head", key, self._client.head_object, Key=name, **extra)
        except ClientError as e:
            if _code(e) in MISSING_CODES:
                return None
            raise self._refused("head", key, e) from None

    def get(self, key: str) -> bytes:
        name = self._name(key)
        try:
            answer = self._call("get", key, self._client.get_object, Key=name)
        except ClientError as e:
            if _code(e) in MISSING_CODES:
                raise ObjectMissing(f"object {key} is not in the store {self.where}") from None
            raise self._refused("get", key, e) from None
        body = answer["Body"]
        try:
            if answer.get("ContentLength", 0) > MAX_OBJECT:
                raise SyncError(f"object {key} in {self.where} is {answer['ContentLength']} bytes, over the "
                                f"{MAX_OBJECT} any stored object may be; it was not written by this store")
            data = body.read(MAX_OBJECT + 1)
        except BotoCoreError as e:
            raise StoreUnavailable(f"S3 get of {key} in {self.where} broke off ({type(e).__name__})") from None
        finally:
            body.close()
        if len(data) > MAX_OBJECT:
            raise SyncError(f"object {key} in {self.where} is over {MAX_OBJECT} bytes; refused")
        return data

    def exists(self, key: str) -> bool:
        return self._head(key, self._name(key)) is not None

    # -- versions, locks, holds --

    def _versions(self, key: str, name: str) -> list[tuple[str, bool]]:
        """(version id, is a delete marker) of every version of ``key``, newest first."""
        found: list[tuple[str, bool]] = []
        marker: dict[str, str] = {}
        while True:
            try:
                page = self._call("list versions", key, self._client.list_object_versions, Prefix=name, **marker)
            except ClientError as e:
                raise self._refused("list versions", key, e) from None
            found += [(v["VersionId"], False) for v in page.get("Versions", []) if v["Key"] == name]
            found += [(v["VersionId"], True) for v in page.get("DeleteMarkers", []) if v["Key"] == name]
            if not page.get("IsTruncated"):
                return found
            marker = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page.get("NextVersionIdMarker", "")}

    def _retained(self, key: str, head: Mapping[str, Any], *, refused: bool = False) -> ObjectLocked | None:
        """Why this version may not be deleted now, or None. ``refused``: the server said so (its clock rules)."""
        until = head.get("ObjectLockRetainUntilDate")
        mode = head.get("ObjectLockMode")
        held = head.get("ObjectLockLegalHoldStatus") == "ON"
        now = dt.datetime.fromtimestamp(self._clock.wall(), dt.timezone.utc)
        locked = until is not None and (refused or until > now)
        if not (held or locked):
            return None
        why = []
        if locked:
            why.append(f"retained until {iso_utc(until)} in {mode} mode")
        if held:
            why.append("on legal hold (clear it first: `linetap-central hold clear`)")
        fix = ("; only an account allowed to bypass governance retention may shorten it"
               if mode == "GOVERNANCE" and locked else "; it can be erased once that date has passed" if locked else "")
        return ObjectLocked(f"object {key} in {self.where} is {' and '.join(why)}{fix}",
                            until=until if locked else None, mode=mode if locked else None, legal_hold=held)

    def retained(self, key: str) -> ObjectLocked | None:
        return self._first_refusal(key, self._name(key), self._versions(key, self._name(key)))

    def _first_refusal(self, key: str, name: str, versions: list[tuple[str, bool]]) -> ObjectLocked | None:
        for version, is_marker in versions:
            head = None if is_marker else self._head(key, name, version)
            refusal = self._retained(key, head) if head is not None else None
            if refusal is not None:
                return refusal
        return None

    def erase(self, key: str) -> None:
        name = self._name(key)
        versions = self._versions(key, name)
        refusal = self._first_refusal(key, name, versions)
        if refusal is not None:
            raise refusal
        for version, _ in versions:
            try:
                self._call("erase", key, self._client.delete_object, Key=name, VersionId=version)
            except ClientError as e:
                head = self._head(key, name, version) if _code(e) in AUTH_CODES else None
                refusal = self._retained(key, head, refused=True) if head is not None else None
                raise refusal or self._refused("erase", key, e) from None
        if versions:
            logger.info("object erased key=%s versions=%d", key, len(versions))

    def lock(self, key: str, lock: Lock) -> None:
        name = self._name(key)
        head = self._head(key, name)
        if head is None:
            raise ObjectMissing(f"object {key} is not in the store {self.where}")
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if until is not None and until >= lock.until and mode in ("COMPLIANCE", lock.mode):
            return  # already retained as long and as strongly
        strongest = "COMPLIANCE" if "COMPLIANCE" in (mode, lock.mode) else "GOVERNANCE"
        latest = max(until, lock.until) if until is not None else lock.until
        retention = {"Mode": strongest, "RetainUntilDate": latest}
        extra = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        if mode == "GOVERNANCE" and strongest == "COMPLIANCE":
            extra["BypassGovernanceRetention"] = True  # S3 asks for it to make a governance lock stronger
        try:
            self._call("lock", key, self._client.put_object_retention, Key=name, Retention=retention, **extra)
        except ClientError as e:
            raise self._no_lock("lock", key, e) from None
        logger.info("object locked key=%s mode=%s until=%s", key, strongest, iso_utc(latest))

    def hold(self, key: str, on: bool) -> None:
        name = self._name(key)
        versions = [v for v, is_marker in self._versions(key, name) if not is_marker]
        if not versions:
            raise ObjectMissing(f"object {key} is not in the store {self.where}")
        for version in versions:
            try:
                self._call("hold", key, self._client.put_object_legal_hold, Key=name, VersionId=version,
                           LegalHold={"Status": "ON" if on else "OFF"})
            except ClientError as e:
                raise self._no_lock("hold", key, e) from None
        logger.info("object legal hold %s key=%s versions=%d", "set" if on else "cleared", key, len(versions))

    def _no_lock(self, op: str, key: str, error: ClientError) -> SyncError:
        if _code(error) in NO_LOCK_CODES:
            return LockUnsupported(f"bucket {self.bucket} cannot {op} {key} ({_code(error)}): object lock is "
                                   "enabled only when a bucket is created; make a new bucket with object lock, "
                                   'or set [store] object_lock = "off"')
        return self._refused(op, key, error)
