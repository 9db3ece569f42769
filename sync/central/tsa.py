"""Asking a time-stamping authority, storing its stamps, and stamping while ``serve`` runs.

:class:`TsaClient` POSTs an RFC 3161 request (``application/timestamp-query``)
with urllib, a timeout and the answer bounded (:data:`MAX_ANSWER_BYTES`)
before it is parsed. :class:`Stamper` makes one stamp over the store's chain
heads (:mod:`~linetap.sync.central.timestamps`, the sans-IO core), checks the
answer against ``[timestamps] ca_file`` and ``tsa_cert_file`` and appends it to
the index. A failure (TSA down, an error status, garbage, a token that does not
verify) is logged at ERROR with ``alarm=timestamp-failed`` and kept in
:data:`STATUS_FILE` under the data dir until a stamp succeeds, so ``verify``
shows it. :class:`StampingThread` runs the :class:`~linetap.sync.central.timestamps.Schedule`
beside ingest: it stamps only when the heads changed, retries a failed TSA
with back-off, and never stops ingest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from linetap.firmware import untrusted
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import ConfigError, LinetapError, SyncError
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.sync.central import timestamps as ts
from linetap.sync.central.config import IndexSection, TimestampsSection
from linetap.sync.central.index import Index

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
MAX_CERT_BYTES = 256 * 1024
STATUS_FILE = "timestamp-status.json"  # the last failure, until a stamp succeeds
QUERY_TYPE, REPLY_TYPE = "application/timestamp-query", "application/timestamp-reply"


class TsaError(SyncError):
    """The TSA could not be asked, or answered something else than a timestamp reply."""


# (url, request bytes, timeout) -> answer bytes; urllib by default, a double in tests.
Post = Callable[[str, bytes, float], bytes]


def urllib_post(url: str, body: bytes, timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": QUERY_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (the configured TSA)
            data = answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise TsaError(f"TSA {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TsaError(f"TSA {url} cannot be reached: {reason}; check tsa_url and the network") from None
    if len(data) > MAX_ANSWER_BYTES:
        raise TsaError(f"TSA {url} answered more than {MAX_ANSWER_BYTES} bytes; a timestamp reply is a few "
                       "KB: is tsa_url an RFC 3161 service?")
    return data


class TsaClient:
    """One configured TSA."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, post: Post = urllib_post) -> None:
        self.url, self.timeout_s, self._post = url, timeout_s, post

    def ask(self, query: ts.Query) -> bytes:
        return self._post(self.url, query.der, self.timeout_s)


def trust_files(data_dir: Path, section: TimestampsSection) -> dict[str, Path] | None:
    """The configured certificate files (``ca_file``, ``tsa_cert_file``) under ``data_dir``; None without
    them. What an evidence bundle ships beside a token for ``openssl ts -verify -CAfile -untrusted``."""
    if section.ca_file is None or section.tsa_cert_file is None:
        return None
    return {"ca_file": Path(data_dir) / section.ca_file, "tsa_cert_file": Path(data_dir) / section.tsa_cert_file}


def load_trust(data_dir: Path, section: TimestampsSection) -> ts.Trust | None:
    """The configured CA and TSA certificates (paths under ``data_dir``); None without a TSA."""
    files = trust_files(data_dir, section)
    if files is None:
        return None
    pem = {}
    for name, path in files.items():
        try:
            pem[name] = read_bounded(path, max_bytes=MAX_CERT_BYTES)
        except (OSError, FileRefused) as e:
            raise ConfigError(f"[timestamps] {name} {path} cannot be read ({e}); put the TSA's certificate "
                              "there in PEM, or fix the path (relative paths are under the data dir)") from None
    return ts.load_trust(pem["ca_file"], pem["tsa_cert_file"], ca_name=str(files["ca_file"]),
                         tsa_name=str(files["tsa_cert_file"]))


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The last stamping failure (``at_ms``, ``tsa``, ``reason``, ``failures``), None after a success."""
    path = Path(data_dir) / STATUS_FILE
    try:
        doc = untrusted.loads(read_bounded(path, max_bytes=16 * 1024), what=str(path), max_bytes=16 * 1024)
    except FileNotFoundError:
        return None
    except (OSError, FileRefused, untrusted.Untrusted) as e:
        return {"at_ms": None, "tsa": None, "reason": f"{path} cannot be read: {e}", "failures": None}
    return doc if isinstance(doc, dict) else None


class Stamper:
    """Stamps the store's heads with the configured TSA and stores the result in ``index``."""

    def __init__(self, data_dir: Path, section: TimestampsSection, index: Index, *, clock: Clock | None = None,
                 client: TsaClient | None = None) -> None:
        if section.tsa_url is None:
            raise ConfigError("no time-stamping authority is configured: set [timestamps] tsa_url, ca_file "
                              "and tsa_cert_file in the central config")
        self.data_dir, self.section, self.index = Path(data_dir), section, index
        self.clock = clock or SystemClock()
        self.client = client or TsaClient(section.tsa_url, timeout_s=section.timeout_s)
        self.failures = 0

    def stamp(self, *, only_if_changed: bool = False) -> dict[str, Any] | None:
        """Stamp now and return the stored row; None when ``only_if_changed`` and nothing new arrived.
        A failure is logged as an alarm, kept in the status file and raised."""
        commitment = ts.commitment_of(self.index)
        if only_if_changed and not ts.changed(commitment, self.index.last_timestamp()):
            return None
        data = commitment.encode()
        try:
            trust = load_trust(self.data_dir, self.section)
            query = ts.build_query(data)
            token = ts.check_answer(self.client.ask(query), query, trust, tsa=self.client.url)
        except LinetapError as e:
            self._failed(e)
            raise
        made = round(self.clock.wall() * 1000)
        pos = self.index.add_timestamp(made, data, token.digest_sha256, self.client.url, token.der,
                                       token.gen_time_ms, ts.certificate_pem(trust.tsa))
        self.failures = 0
        (self.data_dir / STATUS_FILE).unlink(missing_ok=True)
        logger.info("timestamp stored pos=%d tsa=%s devices=%d digest=%s", pos, self.client.url,
                    len(commitment.devices), token.digest_sha256)
        return self.index.last_timestamp()

    def _failed(self, error: LinetapError) -> None:
        self.failures += 1
        logger.error("timestamp failed alarm=timestamp-failed tsa=%s failures=%d reason=%s",
                     self.client.url, self.failures, error)
        status = {"at_ms": round(self.clock.wall() * 1000), "tsa": self.client.url, "reason": str(error),
                  "failures": self.failures}
        path = self.data_dir / STATUS_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status))
        os.replace(temporary, path)


class StampingThread:
    """Runs the schedule beside ingest: a named thread, a stop event, a bounded join.

    ``poke()`` makes it look at the schedule now (tests, after moving their
    clock); ``passes`` counts the looks it finished (``wait_passes``).
    """

    def __init__(self, stamper: Stamper, *, clock: Clock | None = None, max_wait_s: float = 60.0) -> None:
        self.stamper = stamper
        self.clock = clock or stamper.clock
        self.schedule = ts.Schedule(stamper.section.interval_s, self.clock.monotonic())
        self._max_wait_s = max_wait_s
        self._stop, self._poke = threading.Event(), threading.Event()
        self._done = threading.Condition()
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="timestamps", daemon=True)

    def start(self) -> StampingThread:
        self._thread.start()
        return self

    def poke(self) -> None:
        self._poke.set()

    def wait_passes(self, n: int, timeout: float) -> bool:
        with self._done:
            return self._done.wait_for(lambda: self.passes >= n, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout)

    def __enter__(self) -> StampingThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            with self._done:
                self.passes += 1
                self._done.notify_all()
            wait = min(self._max_wait_s, max(0.0, self.schedule.next_at - self.clock.monotonic()))
            self._poke.wait(wait)
            self._poke.clear()

    def run_once(self) -> None:
        """One look at the schedule: stamp when due and something new arrived."""
        now = self.clock.monotonic()
        if not self.schedule.due(now):
            return
        try:
            self.stamper.stamp(only_if_changed=True)
        except LinetapError:
            delay = self.schedule.failed(self.clock.monotonic())
            logger.warning("timestamp retry in %.0f s tsa=%s", delay, self.stamper.client.url)
            return
        except Exception:  # a bug must not stop ingest: keep the alarm visible and retry
            logger.exception("timestamp failed alarm=timestamp-failed tsa=%s reason=unexpected error",
                             self.stamper.client.url)
            self.schedule.failed(self.clock.monotonic())
            return
        self.schedule.done(self.clock.monotonic())


@contextmanager
def start_stamping(data_dir: Path, section: TimestampsSection, *, clock: Clock | None = None,
                   client: TsaClient | None = None,
                   index_config: IndexSection | None = None) -> Iterator[StampingThread | None]:
    """For ``serve``: a stamping thread on its own connection to the index ``index_config`` names;
    None (and a warning) without a TSA."""
    from linetap.sync.central.indexes import open_index

    if section.tsa_url is None:
        logger.warning("no time-stamping authority configured ([timestamps] tsa_url): no trusted timestamps")
        yield None
        return
    load_trust(data_dir, section)  # a missing certificate stops the start, naming the file
    with open_index(index_config, Path(data_dir)) as index:
        with StampingThread(Stamper(data_dir, section, index, clock=clock, client=client)) as thread:
            yield thread
