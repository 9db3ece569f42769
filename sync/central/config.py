"""The central store's config file (``linetap-central serve --config FILE``), typed.

Every key has a default that runs the local demo (a broker on 127.0.0.1
without TLS), so an empty file is a valid config. Unknown keys are refused
with their path, like the box's config (:mod:`linetap.firmware.schema`)::

    [broker]
    host = "broker.example.org"
    port = 8883
    tls = true
    ca_file = "tls/ca.pem"          # relative paths are under the data dir
    cert_file = "tls/central.pem"   # the tools' certificate, CN central; serve shows one per
    key_file = "tls/central.key"    # process next to it: <client_id>-<i>.pem/.key, <client_id>-fleet.pem/.key
    group = "ingest"                # $share/<group>/linetap/v1/+/up/#
    workers = 2                     # each needs its certificate and its client in the broker's roles

    [retention]
    default_days = 365             # 0: keep for ever
    flagged_days = 0

    [ingest]
    device_quota_bytes = 536870912  # per box: staged parts, waiting manifests and segments no
                                    # manifest lists yet (512 MiB); 0: no quota
    stale_staging_days = 7          # `retention run` removes staging untouched this long

    [timestamps]                    # trusted timestamps (RFC 3161); no tsa_url: none are made
    tsa_url = "https://tsa.example.org/tsr"
    ca_file = "tsa/ca.pem"          # the TSA's root CA certificate(s), PEM
    tsa_cert_file = "tsa/tsa.pem"   # the TSA's signing certificate, PEM
    interval_s = 3600               # while serve runs, stamp this often when something new arrived
    timeout_s = 30                  # one request to the TSA

    [evidence]
    max_clock_skew_s = 300          # flag a recording whose box clock ran this far ahead of the store's

    [index]                         # absent: the embedded SQLite file <data dir>/index.db
    url = "postgresql://linetap@db.example.org:5432/linetap"
    password_file = "keys/pg.password"  # mode 0600; else PGPASSWORD; never in the URL if avoidable
    pool_size = 4                   # connections per process
    connect_timeout_s = 10

    [store]                         # leave out for the files under <data dir>/objects
    url = "s3://recordings/site-a"  # bucket, then an optional key prefix
    endpoint_url = "https://s3.example.org"   # absent: AWS's endpoint for the region
    region = "eu-west-1"
    credentials_file = "keys/s3.credentials"  # 0600, AWS credentials format ([default]
                                    # aws_access_key_id, aws_secret_access_key); absent: AWS_ACCESS_KEY_ID and
                                    # AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, from the environment
    object_lock = "compliance"      # "off", "governance" or "compliance": retain each recording's
                                    # objects until its start + its [retention] category's days
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, model_validator

from linetap.firmware.schema import Invalid, Problem, Schema, load_model, read_toml
from linetap.sync.central.analytics.config import AnalyticsSection
from linetap.sync.central.web.settings import WebSection

CONFIG_FILE = "central.toml"
DAY_MS = 86_400_000  # the days of [retention] and [ingest], in the store's milliseconds


class BrokerSection(Schema):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_id: str = "linetap-central"
    group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "ingest"
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_max_s: Annotated[int, Field(ge=1, le=3600)] = 60

    @model_validator(mode="after")
    def _tls_files(self) -> BrokerSection:
        if self.tls:
            missing = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is None]
            if missing:
                raise Invalid([Problem((name,), None, "is needed when tls = true") for name in missing])
        return self


class RetentionSection(Schema):
    """Days a recording is kept after it started, by category; 0 keeps it for ever. Legal hold overrides."""

    default_days: Annotated[int, Field(ge=0)] = 0
    flagged_days: Annotated[int, Field(ge=0)] = 0

    def days_for(self, flagged: bool) -> int:
        return self.flagged_days if flagged else self.default_days


class IngestSection(Schema):
    """Bounds on what one box may hold at the centre before its recordings complete.

    The quota must exceed the largest recording a box makes (its segments wait,
    unvouched, until its manifest arrives): 512 MiB is about 47 hours at 24 kbit/s.
    """

    device_quota_bytes: Annotated[int, Field(ge=0)] = 512 * 1024 * 1024
    stale_staging_days: Annotated[int, Field(ge=1)] = 7


class TimestampsSection(Schema):
    """The time-stamping authority (TSA) and how its tokens are checked; no ``tsa_url``: no stamps."""

    tsa_url: str | None = None
    ca_file: str | None = None
    tsa_cert_file: str | None = None
    interval_s: Annotated[int, Field(ge=60, le=7 * 86400)] = 3600
    timeout_s: Annotated[int, Field(ge=1, le=300)] = 30

    @model_validator(mode="after")
    def _tsa(self) -> TimestampsSection:
        problems = []
        if self.tsa_url is not None and not self.tsa_url.startswith(("http://", "https://")):
            problems.append(Problem(("tsa_url",), self.tsa_url, "must be an http:// or https:// URL of an "
                                    "RFC 3161 time-stamping service; leave it out for no timestamps"))
        for name, what in (("ca_file", "the TSA's CA certificate (PEM)"),
                           ("tsa_cert_file", "the TSA's signing certificate (PEM)")):
            if self.tsa_url is not None and getattr(self, name) is None:
                problems.append(Problem((name,), None, f"is needed when tsa_url is set: {what}, a path "
                                                       "under the data dir, so tokens can be verified"))
        if problems:
            raise Invalid(problems)
        return self


class EvidenceSection(Schema):
    """Clock honesty (``verify``, evidence bundles): how far a box's clock may run ahead of the store's.

    A box's time for a recording (its manifest's end time) is compared with the
    store's time in the delivery receipt (``stored_ms``). Storing normally comes
    after the call ends, by seconds, or by days for a box that was offline, so
    a late receipt proves nothing about the box's clock and is never flagged.
    A call that ended after the store had already stored it cannot happen with
    honest clocks: when the box's end time is more than this bound after the
    receipt's time, the box's clock was ahead (``clock-skew``). The bound only
    absorbs the store's own clock error and the seconds between the box closing
    the manifest and the store's receipt, so 5 minutes is generous.
    """

    max_clock_skew_s: Annotated[int, Field(ge=0, le=86_400)] = 300


PG_SCHEMES = ("postgresql", "postgres")
HIDDEN = "***"


def redacted(url: str) -> str:
    """``url`` fit for a log line or an error: any password (in the user part or a ``password``
    parameter) replaced by ``***``; something that is not a URL at all is not shown."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if not netloc:
            return "(not a URL with a host)"  # "user:password@host" without a scheme would show it all
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                user = user.split(":", 1)[0] + ":" + HIDDEN
            netloc = f"{user}@{host}"
        query = urlencode([(k, HIDDEN if k.lower() == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "(a URL that cannot be parsed)"


class IndexSection(Schema):
    """Where the index lives: without ``url``, the embedded SQLite file ``<data dir>/index.db``.

    ``url`` names a PostgreSQL database. Its password comes from ``password_file``
    (mode 0600; a relative path is under the data dir), else libpq's own
    ``PGPASSWORD`` or ``~/.pgpass``, else the URL itself; every message shows
    the URL :func:`redacted`.
    """

    url: str | None = None
    password_file: str | None = None
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    connect_timeout_s: Annotated[int, Field(ge=1, le=300)] = 10

    @model_validator(mode="after")
    def _postgres_url(self) -> IndexSection:
        if self.url is None:
            if self.password_file is not None:
                raise Invalid([Problem(("password_file",), self.password_file,
                                       "is for a PostgreSQL index; set url too, or remove it")])
            return self
        try:
            parts = urlsplit(self.url)
            host, database = parts.hostname, parts.path.lstrip("/")
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as e:
            raise Invalid([Problem(("url",), redacted(self.url), f"is not a URL ({e}); write "
                                   "postgresql://USER@HOST:PORT/DATABASE")]) from None
        if parts.scheme not in PG_SCHEMES or not host or not database:
            raise Invalid([Problem(("url",), redacted(self.url), "must name a PostgreSQL database as "
                                   "postgresql://USER@HOST:PORT/DATABASE; leave url out for the embedded index")])
        return self


# S3's bucket names (3-63 lower-case letters, digits, dots, hyphens) and a prefix of plain path parts.
_S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[A-Za-z0-9._/-]{1,200}))?/?$")

_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?/?$")


class StoreSection(Schema):
    """Where objects live: absent ``url``, files under the data dir; ``s3://bucket[/prefix]``, an S3 bucket."""

    url: str | None = None
    endpoint_url: str | None = None
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "us-east-1"
    credentials_file: str | None = None
    object_lock: Literal["off", "governance", "compliance"] = "off"
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3

    @model_validator(mode="after")
    def _s3(self) -> StoreSection:
        problems = []
        if self.url is not None:
            match = _S3_URL.match(self.url)
            prefix = (match["prefix"] or "").rstrip("/") if match else ""
            if match is None or (prefix and any(p in ("", ".", "..") for p in prefix.split("/"))):
                problems.append(Problem(("url",), self.url, 'must be "s3://bucket" or "s3://bucket/prefix" (bucket: '
                                        "3-63 lower-case letters, digits, dots or hyphens; prefix: plain path "
                                        "parts); leave url out to keep objects in files under the data dir"))
            if self.endpoint_url is not None and not _ENDPOINT.match(self.endpoint_url):
                problems.append(Problem(("endpoint_url",), redacted(self.endpoint_url), 'must be "https://host[:port]" (or '
                                        '"http://" on loopback), with no path and no user name or password in it; '
                                        "leave it out for AWS's endpoint of the region"))
        else:
            for name in ("endpoint_url", "credentials_file"):
                if getattr(self, name) is not None:
                    problems.append(Problem((name,), getattr(self, name), 'is only read with an S3 url; add url = '
                                            '"s3://bucket" or remove it'))
            if self.object_lock != "off":
                problems.append(Problem(("object_lock",), self.object_lock, 'needs an S3 bucket made with object lock '
                                        '(url = "s3://bucket"): files cannot be locked; set it to "off"'))
        if problems:
            raise Invalid(problems)
        return self

    @property
    def bucket(self) -> str:
        match = _S3_URL.match(self.url or "")
        if match is None:
            raise ValueError("no S3 url configured")
        return match["bucket"]

    @property
    def prefix(self) -> str:
        """The key prefix, ending in ``/`` when there is one."""
        match = _S3_URL.match(self.url or "")
        prefix = (match["prefix"] or "").strip("/") if match else ""
        return prefix + "/" if prefix else ""


class CentralConfig(Schema):
    broker: BrokerSection = BrokerSection()
    retention: RetentionSection = RetentionSection()
    ingest: IngestSection = IngestSection()
    timestamps: TimestampsSection = TimestampsSection()
    evidence: EvidenceSection = EvidenceSection()
    index: IndexSection = IndexSection()
    store: StoreSection = StoreSection()
    analytics: AnalyticsSection = AnalyticsSection()
    web: WebSection = WebSection()


def load_config(path: Path | None, data_dir: Path) -> CentralConfig:
    """The config at ``path``; None reads ``<data_dir>/central.toml`` when present, else the defaults."""
    if path is None:
        path = Path(data_dir) / CONFIG_FILE
        if not path.exists():
            return CentralConfig()
    data = read_toml(Path(path), missing_hint="pass an existing file to --config, or leave it out for the defaults")
    return load_model(CentralConfig, data, source=str(path), guide="sync/central/config.py")
