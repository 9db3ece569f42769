"""The operator's tools on a central store, one object for the command line and the demo.

:class:`StoreTools` is a thin facade: each job lives in its own module and
works on the same :class:`~linetap.sync.central.stored.Stored` (object store
and index, opened as the ingest core opens them, so a tool may run while
``serve`` ingests):

- :mod:`~linetap.sync.central.export`: export one recording (``.ogg``/``.wav``, a private file);
- :mod:`~linetap.sync.central.importer`: import a box's data dir from its SD card;
- :mod:`~linetap.sync.central.verify`: re-hash, re-check signatures and chains, list orphans;
- :mod:`~linetap.sync.central.retention`: legal hold, erasure with a tombstone, retention, age-out.

Enrolment, the one job that is a single index write, is here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import public_key_b64, public_key_from_b64
from linetap.sync import wire
from linetap.sync.central import export as _export
from linetap.sync.central import importer as _importer
from linetap.sync.central import retention as _retention
from linetap.sync.central import verify as _verify
from linetap.sync.central.config import EvidenceSection, IngestSection, RetentionSection
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.progress import Progress
from linetap.sync.central.staging import AgedOut
from linetap.sync.central.stored import Stored

logger = logging.getLogger(__name__)


class StoreTools(Stored):
    """Operator actions on the store under ``data_dir``. ``close()`` releases the index."""

    def __enter__(self) -> StoreTools:
        return self

    def enroll(self, device_id: str, signing_key_b64: str, *, replace: bool = False) -> str:
        """Enrol a box's Ed25519 public key (as ``linetap keys show`` prints it); returns the key."""
        try:
            wire.check_device_id(device_id)
        except wire.WireError as e:
            raise ConfigError(f"{e}; use the box's device id (its TLS certificate CN)") from e
        key = public_key_b64(public_key_from_b64(signing_key_b64.strip()))
        known = self.index.device_key(device_id)
        if known is not None and known != key and not replace:
            raise ConfigError(f"device {device_id} is enrolled with another key ({known[:12]}...); pass "
                              "--replace if the box really has a new key (its old manifests then verify "
                              "only against the old key)")
        self.index.enroll(device_id, key, self.now_ms())
        logger.info("device enrolled device=%s", device_id)
        return key

    def export(self, recording_id: str, out: Path, *, force: bool = False,
               device_id: str | None = None) -> _export.Exported:
        return _export.export(self, recording_id, out, force=force, device_id=device_id)

    def verify(self, recording_id: str | None = None, *, device_id: str | None = None,
               limits: IngestSection | None = None,
               clock: EvidenceSection | None = None) -> list[_verify.DeviceReport]:
        return _verify.verify(self, recording_id, device_id=device_id, limits=limits, clock=clock)

    def import_dir(self, box_data_dir: Path, *, ingest: Ingest | None = None,
                   progress: Progress | None = None) -> list[_importer.ImportResult]:
        return _importer.import_dir(self, box_data_dir, ingest=ingest, progress=progress)

    def set_hold(self, recording_id: str, hold: bool, reason: str | None = None, *,
                 device_id: str | None = None) -> None:
        _retention.set_hold(self, recording_id, hold, reason, device_id=device_id)

    def erase(self, recording_id: str, reason: str, *, device_id: str | None = None) -> str:
        return _retention.erase(self, recording_id, reason, device_id=device_id)

    def retention_due(self, retention: RetentionSection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return _retention.retention_due(self, retention)

    def retention_run(self, retention: RetentionSection, *,
                      dry_run: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        return _retention.retention_run(self, retention, dry_run=dry_run)

    def age_out(self, limits: IngestSection, *, dry_run: bool = False) -> list[AgedOut]:
        return _retention.age_out(self, limits, dry_run=dry_run)
