"""The call page's evidence panel: what vouches for one recording, each check with its outcome.

Each line is (what, ok, text): ``ok`` True (holds), False (broken: the text
says how) or None (not there yet, e.g. no timestamp covers it). The checks
are the store's own: the manifest read back against its hash and the box's
enrolled key (:meth:`~linetap.sync.central.stored.Stored.checked_manifest`),
its link to the recording before it, the signed delivery receipt, and the
trusted timestamp that covers it (:func:`~linetap.sync.central.timestamps.covering_stamp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linetap.firmware.errors import LinetapError
from linetap.firmware.manifest import GENESIS
from linetap.firmware.receipt import ReceiptError, key_id
from linetap.firmware.receipt import verify as verify_receipt
from linetap.sync.central.keys import load_store_key
from linetap.sync.central.timestamps import covering_stamp
from linetap.sync.central.web.pages import iso


@dataclass(frozen=True)
class Line:
    what: str
    ok: bool | None
    text: str


def evidence(stored: Any, row: dict[str, Any]) -> tuple[list[Line], dict[str, Any] | None]:
    """(the panel's lines, the checked manifest or None when it could not be read or checked)."""
    lines, manifest = [], None
    if row["erased_ms"] is not None:
        lines.append(Line("erased", False, f"erased {iso(row['erased_ms'])}: {row['erase_reason']}; the audio "
                                           f"is gone, an operator-signed tombstone ({row['tombstone_key']}) "
                                           "keeps the chain whole"))
    else:
        try:
            manifest = stored.checked_manifest(row)
            lines.append(Line("signature", True, f"manifest sha256 {row['manifest_sha256'][:16]}... matches the "
                                                 f"index and is signed by {row['device_id']}'s enrolled key"))
        except LinetapError as e:
            lines.append(Line("signature", False, str(e)))
    lines.append(_chain(stored, row))
    lines.append(_receipt(stored, row))
    lines.append(_stamp(stored, row))
    return lines, manifest


def _chain(stored: Any, row: dict[str, Any]) -> Line:
    if row["prev"] == GENESIS:
        return Line("chain", True, f"the box's first recording (seq {row['seq']}, prev is the genesis hash)")
    before = stored.index.recordings_at(row["device_id"], row["seq"] - 1)
    if not before:
        return Line("chain", None, f"seq {row['seq'] - 1}, the recording before it, is not in the store (yet)")
    if any(b["manifest_sha256"] == row["prev"] for b in before):
        return Line("chain", True, f"seq {row['seq']} names seq {row['seq'] - 1} ({row['prev'][:16]}...) as the "
                                   "one before it")
    return Line("chain", False, f"prev {row['prev'][:16]}... is not the hash of seq {row['seq'] - 1}: the chain "
                                "is broken here; run `linetap-central verify`")


def _receipt(stored: Any, row: dict[str, Any]) -> Line:
    logged = stored.index.receipt(row["device_id"], row["recording_id"])
    if logged is None:
        return Line("receipt", None, "no delivery receipt yet (serve signs one at its start)")
    try:
        public = load_store_key(stored.data_dir).public_key()
        verify_receipt(bytes(logged["data"]), {key_id(public): public}, device_id=row["device_id"],
                       recording_id=row["recording_id"], manifest_sha256=row["manifest_sha256"])
    except (ReceiptError, LinetapError) as e:
        return Line("receipt", False, str(e))
    return Line("receipt", True, f"stored {iso(logged['stored_ms'])}, receipt {logged['pos']} of the log, "
                                 f"signed by store key {logged['key_id']}")


def _stamp(stored: Any, row: dict[str, Any]) -> Line:
    covering = covering_stamp(stored.index, row["device_id"], row["seq"])
    if covering is None:
        return Line("timestamp", None, "no trusted timestamp covers it yet")
    stamp = covering.stamp
    return Line("timestamp", True, f"stamped {iso(stamp['gen_time_ms'])} by {stamp['tsa']} (stamp {stamp['pos']}, "
                                   f"over the head at seq {covering.head.seq})")
