"""A central store whose config names a PostgreSQL index: ingest, the tools and the commands all use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from central_boxes import BIG_CODEC, make_box
from linetap.sync import wire
from linetap.sync.central.cli import main
from linetap.sync.central.config import load_config
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.tools import StoreTools

pytestmark = pytest.mark.embedded_only("picks its index and store itself: one run is enough")


def test_ingest_tools_and_commands_use_the_configured_index(central: Path, tmp_path: Path, pg_url: str,
                                                           clock, capsys: pytest.CaptureFixture[str]) -> None:
    (central / "central.toml").write_text(f'[index]\nurl = "{pg_url}"\npool_size = 2\n')
    section = load_config(None, central).index
    box = make_box(tmp_path / "boxes", "desk-1", load_identity(central))
    with StoreTools(central, index_config=section) as tools:
        tools.enroll(box.device_id, box.public_key_b64)
    calls = [box.call(2.5), box.call(20.0, codec=BIG_CODEC)]  # the second is sent in several parts
    with Ingest(central, clock=clock, index_config=section) as ingest:
        acks = [ack for rid in calls for part in box.parts(rid) for ack in ingest.receive(part)]
    assert {a.status for a in acks} == {"stored"}
    assert sum(1 for a in acks if a.object == wire.ObjectRef.manifest() and a.receipt) == 2
    box.spool.close()
    assert not (central / "index.db").exists()  # nothing went to the embedded index

    assert main(["--data-dir", str(central), "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["recording_id"], r["seq"]) for r in listed] == [(calls[0], 1), (calls[1], 2)]
    assert all(r["receipt_stored_ms"] is not None for r in listed)
    assert main(["--data-dir", str(central), "verify", "--all", "--strict"]) == 0
    capsys.readouterr()
    assert main(["--data-dir", str(central), "broker-init", str(tmp_path / "dynsec.json")]) == 0
    assert "1 enrolled" in capsys.readouterr().out
    with PgIndex(pg_url) as index:
        assert [r["recording_id"] for r in index.receipts()] == calls


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_nul_in_a_manifests_text_is_dropped_on_every_backend(backend: str, central: Path, tmp_path: Path,
                                                               clock, request: pytest.FixtureRequest) -> None:
    from linetap.firmware import manifest as mf
    from linetap.firmware.keys import load_signing_key
    from linetap.sync.central.config import IndexSection

    section = IndexSection(url=request.getfixturevalue("pg_url")) if backend == "postgres" else None
    box = make_box(tmp_path / "boxes", "desk-1", load_identity(central))
    with StoreTools(central, index_config=section) as tools:
        tools.enroll(box.device_id, box.public_key_b64)
    rid = box.call(1.5)
    body = {k: v for k, v in mf.parse(box.manifest(rid)).items() if k != "signature"}
    hostile = mf.sign(body | {"ended_by": "hang\x00up"}, load_signing_key(box.data_dir))
    parts = box.parts(rid, manifest=False) + wire.split(box.device_id, rid, wire.ObjectRef.manifest(), hostile)
    with Ingest(central, clock=clock, index_config=section) as ingest:
        assert {a.status for part in parts for a in ingest.receive(part)} == {"stored"}
        row = ingest.index.recording(rid, box.device_id)
    assert row is not None and row["ended_by"] is None and row["caller_number"] == "+15551230001"
    box.spool.close()
