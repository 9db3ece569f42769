"""The secure spool: encrypted segments written durably, a catalogue, recovery, retention.

One room per job; :class:`Spool` (``store``) wires them around one catalogue
connection and its lock:

- ``layout``: every path and file name (spool root, recording folder, the
  segment name and its parse, open/manifest/receipt/chain files, quarantine). Anyone
  who names a spool file asks it: the spool, the central store's object keys,
  card import, the doctor.
- ``catalogue``: the SQLite schema, opening and rebuilding it, row checks.
- ``writer``: writing a call (open, segments, discard, the signed manifest)
  and :class:`SpoolSink`, which the recorder writes to.
- ``backlog``: typed backlog records, bounded object reads, synced marks and
  the store's receipts (``keep_receipt``): the uploader's whole view of the spool.
- ``retention``: the keep and purge policy (only receipted recordings go) and the spool-full fault.
- ``recovery``: start-up recovery and quarantine.
- ``inspection``: ``list_recordings``, ``read_catalogue``, ``verify_spool``
  for the CLI and the doctor; read-only, they never open a :class:`Spool`.
- ``checks``: age-file and segment checks that need no key.

Segment length. The default is 10 s. It bounds what a power cut loses (the
segment in progress, at most 10 s of audio). Shorter segments lose less but
cost more: each segment is two fsyncs plus a catalogue commit (SD-card
journal writes and wear), 335 bytes of age header, and an upload message; at
24 kbit/s a 10 s segment is about 30 KB, so the overhead is about 1 % and a
segment fits one 128 KiB upload message with room for higher bitrates.
"""

from linetap.firmware.durable import DurableFiles
from linetap.firmware.spool.backlog import BacklogRecording, RecordingGone, SegmentRecord
from linetap.firmware.spool.checks import age_shape_problem
from linetap.firmware.spool.inspection import (
    CatalogueUnreadable,
    CatalogueView,
    list_recordings,
    read_catalogue,
    verify_spool,
)
from linetap.firmware.spool.layout import (
    CATALOGUE,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    SEGMENT_SUFFIX,
    SPOOL_DIR,
    SpoolLayout,
    segment_index,
    segment_name,
)
from linetap.firmware.spool.recovery import BENIGN_FINDINGS, Finding, RecoveryReport
from linetap.firmware.spool.retention import SpoolSettings
from linetap.firmware.spool.store import Spool
from linetap.firmware.spool.writer import CodecParams, OpenRecording, Segmenter, SpoolFull, SpoolSink, boot_id

__all__ = [
    "BENIGN_FINDINGS", "CATALOGUE", "MANIFEST_FILE", "QUARANTINE_DIR", "SEGMENT_SUFFIX", "SPOOL_DIR",
    "BacklogRecording", "CatalogueUnreadable", "CatalogueView", "CodecParams", "DurableFiles", "Finding",
    "OpenRecording", "RecordingGone", "RecoveryReport", "SegmentRecord", "Segmenter", "Spool", "SpoolFull",
    "SpoolLayout", "SpoolSettings", "SpoolSink", "age_shape_problem", "boot_id", "list_recordings",
    "read_catalogue", "segment_index", "segment_name", "verify_spool",
]
