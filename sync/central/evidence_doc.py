"""``VERIFY.md``: the steps a third party follows, with standard tools only, to check an evidence bundle.

Every fenced ``sh`` block runs as it stands in the unzipped folder (the tests
run them literally) and stops with an error on the first thing wrong. The
tools: ``sha256sum``, ``openssl``, ``age`` (only for who holds the store's
identity) and ``python3`` with ``cryptography`` for the Ed25519 signatures,
for which no standard command reads these JSON documents. ``evidence verify``
(:mod:`~linetap.sync.central.evidence_check`) runs the same checks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

# The few lines every Python step starts with: check a JSON document's Ed25519 signature as it is signed
# (the canonical JSON of every member but "signature": sorted keys, no spaces, UTF-8).
_SIGNED = '''import base64, hashlib, json, pathlib, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key
def signed(path, key):
    doc = json.loads(pathlib.Path(path).read_bytes())
    signature = doc.pop("signature")
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    load_pem_public_key(pathlib.Path(key).read_bytes()).verify(base64.b64decode(signature["value"]), body)
    return doc'''

_TEXT = '''# Verifying recording @RID@

This folder is the evidence bundle of one recorded call: recording `@RID@`,
number @SEQ@ in the chain of box `@DEVICE@`, packed by `@BY@` at @MADE@ (UTC)
from the central store. Each step below checks one link, using only standard
tools. Run them in this folder (after `unzip bundle.zip -d bundle && cd
bundle`); each prints `OK ...` or stops with an error naming what is wrong.

You need `sha256sum` (GNU coreutils), `openssl` (1.1.1 or 3.x), `python3`
with the `cryptography` package (`pip install cryptography`) for the Ed25519
signatures, for which there is no standard command that reads these JSON
documents, and `age` only if you hold the store's identity (step 6).
`linetap-central evidence verify bundle.zip` runs the same checks.

What is here: `audio/call.wav` (the call decoded to stereo: agent left,
caller right), `original/` (the manifest and the encrypted segments exactly
as the box wrote them), `chain/` (the box's later manifests up to the head of
its chain), `receipt.json` (the store's signed delivery receipt),
`timestamp/` (when a trusted timestamp covers the call), `keys/` (public keys), `access-log.jsonl` (who accessed this recording at the
store), `report.json` (the store's summary, including the clock comparison).

## 0. Which keys you trust

The keys in `keys/` came with the bundle, so they prove nothing on their own:
compare them with keys you got from their owners another way. The box's
signing key as enrolled at the store (what `linetap keys show` prints on the
box) and the store key's id (`linetap-central keys show`, and on every box
that trusts the store's receipts) are:

```sh
echo "box key:   $(openssl pkey -pubin -in keys/box.pem -outform DER | tail -c 32 | base64)"
echo "store key: $(openssl pkey -pubin -in keys/store.pem -outform DER | tail -c 32 | sha256sum | cut -c1-16)"
```

When this bundle was made the store key's id was `@STORE_KEY_ID@`.

## 1. No file was changed since the bundle was made

```sh
sha256sum --check --strict --quiet SHA256SUMS && echo "OK every file matches SHA256SUMS"
```

`SHA256SUMS` travels in the bundle too; what an altered file cannot survive
are the signatures below.

## 2. The box signed the manifest, and the manifest lists these segments

The manifest is signed with the box's Ed25519 key and names the SHA-256 and
size of every encrypted segment, so the segments are the ones the box wrote.

```sh
python3 - <<'PY'
@SIGNED@
m = signed("original/manifest.json", "keys/box.pem")
for s in m["segments"]:
    data = pathlib.Path("original/%06d.age" % s["index"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"], "segment %d" % s["index"]
print("OK manifest of %s seq %d signed by keys/box.pem, %d segments match" % (m["device_id"], m["seq"], len(m["segments"])))
PY
```

## 3. The chain from this recording to the head

Each manifest names the SHA-256 of the one before it (`prev`), so a
recording cannot be removed, replaced or slipped in without breaking the
chain. A `.tombstone.json` stands for a recording erased under the
retention rules: the store's operator key signed what the chain needs
(its manifest's SHA-256 and `prev`).

```sh
python3 - <<'PY'
@SIGNED@
data = pathlib.Path("original/manifest.json").read_bytes()
seq, prev = json.loads(data)["seq"], hashlib.sha256(data).hexdigest()
for path in sorted(pathlib.Path("chain").glob("*.json")):
    tombstone = path.name.endswith(".tombstone.json")
    doc = signed(path, "keys/operator.pem" if tombstone else "keys/box.pem")
    assert doc["seq"] == seq + 1 and doc["prev"] == prev, "chain broken at %s" % path
    seq, prev = doc["seq"], doc["manifest_sha256"] if tombstone else hashlib.sha256(path.read_bytes()).hexdigest()
report = json.loads(pathlib.Path("report.json").read_bytes())["chain"]
assert (seq, prev) == (report["head_seq"], report["head_sha256"]), "the chain does not end at the head report.json names"
print("OK chain from seq %d to the head, seq %d (%s...)" % (json.loads(data)["seq"], seq, prev[:16]))
PY
```

## 4. The store received this manifest: its signed delivery receipt

```sh
python3 - <<'PY'
@SIGNED@
m = json.loads(pathlib.Path("original/manifest.json").read_bytes())
r = signed("receipt.json", "keys/store.pem")
assert r["manifest_sha256"] == hashlib.sha256(pathlib.Path("original/manifest.json").read_bytes()).hexdigest(), "receipt is for another manifest"
assert (r["device_id"], r["recording_id"], r["seq"]) == (m["device_id"], m["recording_id"], m["seq"]), "receipt is for another recording"
print("OK receipt signed by keys/store.pem (key id %s): stored at %d ms since 1970 (UTC)" % (r["key_id"], r["stored_ms"]))
PY
```

@TIMESTAMP@

## 6. The encrypted originals are this call (only for who holds the store's identity)

The segments are encrypted with age to the store's recipient; only the
holder of the store's identity (`keys/central.key` on the central store,
kept by its operator) can decrypt them. They decrypt to the Ogg Opus stream
the box recorded; `audio/call.wav` is it decoded.

```sh
if [ -n "${AGE_IDENTITY:-}" ]; then
  for f in original/*.age; do age -d -i "$AGE_IDENTITY" "$f"; done > decrypted.ogg
  head -c 4 decrypted.ogg | grep -q OggS && echo "OK the originals decrypt to an Ogg stream: decrypted.ogg"
else
  echo "SKIPPED: set AGE_IDENTITY to the store's identity file to decrypt the originals"
fi
```

## 7. The box's clock, and who accessed the recording

The box's time (when the call ended, by its clock) against the store's time
in the receipt. A late receipt is normal (a box offline for a day uploads a
day late); a box time after the receipt's means the box's clock ran ahead,
and an unsynchronised clock means the box's times may be far off. These are
warnings about the box's times, not about the recording.

```sh
python3 - <<'PY'
import hashlib, json, pathlib
m = json.loads(pathlib.Path("original/manifest.json").read_bytes())
r = json.loads(pathlib.Path("receipt.json").read_bytes())
bound = json.loads(pathlib.Path("report.json").read_bytes())["clock"]["max_skew_ms"]
ahead = m["ended"]["wall_ms"] - r["stored_ms"]
print("box clock synchronised: %s; the box's end time is %.1f s %s the store's receipt time"
      % (m["started"]["clock_synced"], abs(ahead) / 1000, "after" if ahead > 0 else "before"))
print("WARNING clock-unsynchronised" if not m["started"]["clock_synced"] else "OK clock synchronised")
print("WARNING clock-skew (bound %d s)" % (bound // 1000) if ahead > bound else "OK no clock skew")
for line in pathlib.Path("access-log.jsonl").read_bytes().splitlines():
    e = json.loads(line)
    body = {k: v for k, v in e.items() if k != "sha256"}
    assert hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest() == e["sha256"], "access-log entry %d altered" % e["pos"]
    print("access: %s %s by %s from %s at %d" % (e["action"], e["detail"] or "", e["actor"], e["origin"], e["at_ms"]))
PY
```

The access-log entries each hash their own fields and name the entry
before them in the store's whole log (`prev`); the store checks the whole
chain with `linetap-central audit verify`.
'''

_UNSTAMPED = '''## 5. Trusted time

No trusted timestamp covers this recording yet: the times above are the
box's and the store's own clocks. The receipt proves the store received the
manifest at the time it states, as far as the store's key is trusted.'''


_STAMPED = '''## 5. Trusted time: an RFC 3161 timestamp over the head of the chain

A time-stamping authority (TSA), independent of the box and the store,
signed a token saying it saw `timestamp/commitment.json` at the time it
states. The commitment names the head of every box's chain at that moment;
this box's head is the one step 3 reached, so the recording existed, as it
is, no later than that time. `timestamp/tsa-ca.pem` is the TSA's root
certificate and `timestamp/tsa.pem` its signing certificate, as the store
was configured: compare the root with the one the TSA publishes.

```sh
openssl ts -verify -data timestamp/commitment.json -in timestamp/token.tsr -CAfile timestamp/tsa-ca.pem -untrusted timestamp/tsa.pem
openssl ts -reply -in timestamp/token.tsr -text | grep "^Time stamp:"
python3 - <<'PY'
import json, pathlib
stamped = json.loads(pathlib.Path("timestamp/commitment.json").read_bytes())["devices"]
head = json.loads(pathlib.Path("report.json").read_bytes())["chain"]
want = {"device_id": "@DEVICE@", "seq": head["head_seq"], "manifest_sha256": head["head_sha256"]}
assert want in stamped, "the stamped commitment does not name the head of this chain"
print("OK the stamped commitment names the head of the chain, seq %d" % head["head_seq"])
PY
```'''


def verify_text(report: dict[str, Any], store_key_id: str, *, operator: bool = False) -> str:
    """VERIFY.md for a bundle with this report (``operator``: the chain holds a tombstone)."""
    made = dt.datetime.fromtimestamp(report["made_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    text = _TEXT
    for token, value in (("@TIMESTAMP@", _UNSTAMPED if report["timestamp"] is None else _STAMPED),
                         ("@RID@", report["recording_id"]), ("@DEVICE@", report["device_id"]),
                         ("@SEQ@", str(report["seq"])), ("@BY@", report["made_by"]), ("@MADE@", made),
                         ("@STORE_KEY_ID@", store_key_id), ("@SIGNED@", _SIGNED)):
        text = text.replace(token, value)
    if operator:
        text = text.replace("## 1. No file", "The chain holds a tombstone: `keys/operator.pem` is the store's operator "
                                             "key (`linetap-central keys show`).\n\n## 1. No file")
    return text
