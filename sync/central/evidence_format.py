"""The evidence bundle's layout: member names, bounds and the checksum list, for the maker and the checker.

A bundle is a zip of plain files (stored, not compressed: audio and
ciphertext do not shrink, and a reader's ``unzip`` needs nothing special)::

    audio/call.wav               decrypted stereo audio (agent left, caller right)
    original/manifest.json       the manifest as the box signed it (byte for byte)
    original/000000.age ...      the encrypted segments as the box wrote them
    chain/000013.json ...        later manifests of the device, up to the chain's head;
    chain/000014.tombstone.json  an erased one's tombstone (signed by the operator key)
    receipt.json                 the store's signed delivery receipt (the exact signed bytes)
    timestamp/token.tsr          the RFC 3161 token (TimeStampResp, DER) of the stamp covering the head,
    timestamp/commitment.json    the bytes it stamps (naming the head), and the TSA's root and signing
    timestamp/tsa-ca.pem         certificates, for openssl ts -verify (only when a stamp covers the call)
    timestamp/tsa.pem
    keys/box.pem keys/store.pem  public keys (keys/operator.pem with a tombstone in the chain)
    access-log.jsonl             the store's access-log entries for this recording
    report.json                  what the store says: ids, hashes, the chain's ends, the clock
    VERIFY.md                    how anyone checks it with standard tools
    SHA256SUMS                   sha256sum's format, over every other member
"""

from __future__ import annotations

import re

FORMAT = "linetap-evidence/1"
AUDIO = "audio/call.wav"
MANIFEST = "original/manifest.json"
ORIGINAL = "original/"
CHAIN = "chain/"
RECEIPT = "receipt.json"
TIMESTAMP = "timestamp/"
TOKEN = "timestamp/token.tsr"
COMMITMENT = "timestamp/commitment.json"
TSA_CA = "timestamp/tsa-ca.pem"
TSA_CERT = "timestamp/tsa.pem"
BOX_KEY = "keys/box.pem"
STORE_KEY = "keys/store.pem"
OPERATOR_KEY = "keys/operator.pem"
ACCESS_LOG = "access-log.jsonl"
REPORT = "report.json"
VERIFY = "VERIFY.md"
SUMS = "SHA256SUMS"

# Bounds a checker applies before reading: a call of days at 10 s segments has tens of thousands.
MAX_MEMBERS = 100_000
MAX_MEMBER = 4 * 1024**3  # the audio of a long call
MAX_TOTAL = 16 * 1024**3
MAX_SMALL = 16 * 1024 * 1024  # every member read whole (manifests, keys, logs, the report)
NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,99}/){0,2}[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CHAIN_FILE = re.compile(r"chain/([0-9]{6,16})(\.tombstone)?\.json")
SEGMENT_FILE = re.compile(r"original/([0-9]{6})\.age")
SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")


def chain_name(seq: int, tombstone: bool = False) -> str:
    return f"{CHAIN}{seq:06d}{'.tombstone' if tombstone else ''}.json"


def sums_text(digests: dict[str, str]) -> str:
    """``sha256sum``'s output for these members (name -> hex digest), in name order."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def parse_sums(text: str) -> tuple[dict[str, str], list[str]]:
    """(name -> digest, lines that are not ``HEX  NAME``) of a SHA256SUMS file."""
    found: dict[str, str] = {}
    bad: list[str] = []
    for line in text.splitlines():
        match = SUM_LINE.fullmatch(line)
        if match is None or match.group(2) in found:
            bad.append(line[:120])
        else:
            found[match.group(2)] = match.group(1)
    return found, bad
