"""``linetap-central evidence`` and ``audit``: evidence bundles and the access log on the command line.

    linetap-central evidence ID [--device DEV] -o call.zip [--force]
    linetap-central evidence verify call.zip [--box-key B64] [--store-key B64|FILE] [--operator-key B64|FILE]
                                             [--tsa-ca FILE] [--max-clock-skew S] [--json]
    linetap-central audit list [--device DEV] [--recording ID] [--json]
    linetap-central audit verify

``evidence verify`` needs no store: it checks the bundle alone, trusting the
keys given or else those in the bundle, and exits 0 when clean, 1 on any
problem, 2 when the file is not a bundle it can read. :func:`audited` is how
the store's commands append to the access log (actor: the OS user, origin
``cli``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware.errors import ConfigError
from linetap.firmware.options import add_json
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.sync.central.accesslog import Access, os_actor, verify_log

ORIGIN = "cli"


def add_evidence_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    evidence = sub.add_parser(
        "evidence", parents=[common], help="pack one recording as a self-verifying evidence bundle, or check one",
        description="`evidence ID -o call.zip` writes the bundle; `evidence verify call.zip` checks one "
                    "(exit 0 clean, 1 on a problem, 2 on a file that is not a bundle)")
    evidence.add_argument("target", metavar="ID|verify", help="the recording id, or `verify`")
    evidence.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE.zip", help="with verify: the bundle")
    evidence.add_argument("-o", "--output", type=Path, metavar="FILE.zip", help="the bundle to write")
    evidence.add_argument("--device", metavar="DEVICE", help="the device, when several have a recording of that id")
    evidence.add_argument("--force", action="store_true", help="replace an existing FILE (atomically)")
    evidence.add_argument("--config", type=Path, metavar="FILE",
                          help="central config with [evidence] and [timestamps] (default: DATA_DIR/central.toml, else the defaults)")
    evidence.add_argument("--box-key", metavar="B64", help="verify: trust this box key (as `linetap keys show` "
                                                           "prints it), not the bundle's")
    evidence.add_argument("--store-key", metavar="B64|FILE", help="verify: trust this store key (base64 as `keys "
                                                                  "show` prints it, or a PEM file), not the bundle's")
    evidence.add_argument("--operator-key", metavar="B64|FILE", help="verify: trust this operator key")
    evidence.add_argument("--tsa-ca", type=Path, metavar="FILE", help="verify: trust this TSA root certificate "
                                                                     "(PEM), not the bundle's")
    evidence.add_argument("--max-clock-skew", type=int, metavar="S",
                          help="verify: flag a box clock this many seconds ahead (default: the bundle's)")
    add_json(evidence)
    evidence.set_defaults(run=_evidence)

    audit = sub.add_parser("audit", parents=[common], help="the store's access log: who exported, held, erased")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    listing = audit_sub.add_parser("list", parents=[common], help="show the access log, oldest first")
    listing.add_argument("--device", metavar="DEVICE", help="only this device")
    listing.add_argument("--recording", metavar="ID", help="only this recording")
    add_json(listing)
    listing.set_defaults(run=_audit_list)
    check = audit_sub.add_parser("verify", parents=[common], help="check the access log's hash chain")
    check.set_defaults(run=_audit_verify)


def audited(tools: Any, action: str, recording_id: str, device_id: str | None, detail: str | None = None) -> None:
    """Append the CLI's access to one recording to the access log (after the action succeeded)."""
    row = tools.recording(recording_id, device_id)
    tools.index.log_access(Access(os_actor(), action, ORIGIN, row["device_id"], row["recording_id"], detail),
                           tools.now_ms())


def _evidence(args: argparse.Namespace) -> int:
    if args.target == "verify":
        if args.bundle is None:
            raise ConfigError("evidence verify needs the bundle: linetap-central evidence verify call.zip")
        return _verify(args)
    if args.output is None:
        raise ConfigError("evidence needs -o FILE.zip: where to write the bundle")
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.evidence import make_bundle

    config = load_config(args.config, data_dir(args))
    with _tools(args) as tools:
        made = make_bundle(tools, args.target, args.output, device_id=args.device, force=args.force,
                           max_skew_ms=config.evidence.max_clock_skew_s * 1000, actor=os_actor(), origin=ORIGIN,
                           timestamps=config.timestamps)
    print(f"wrote {made.path} ({made.members} files, {made.bytes} bytes): seq {made.chain_from}, chain to seq "
          f"{made.chain_to} ({'timestamped' if made.timestamped else 'not timestamped'})")
    for warning in made.warnings:
        print(f"  warning {warning}")
    print(f"check it with: linetap-central evidence verify {made.path}  (or follow VERIFY.md inside)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from linetap.sync.central.evidence_check import Trust, check_bundle
    from linetap.sync.central.evidence_zip import BundleUnusable, ZipMembers

    trust = Trust(box=_key(args.box_key, "--box-key"),
                  store=tuple(k for k in (_key(args.store_key, "--store-key"),) if k is not None),
                  operator=_key(args.operator_key, "--operator-key"), tsa_ca=_file(args.tsa_ca, "--tsa-ca"))
    skew = None if args.max_clock_skew is None else args.max_clock_skew * 1000
    try:
        with ZipMembers(args.bundle) as members:
            checks = check_bundle(members, trust, skew)
    except BundleUnusable as e:
        print(f"unusable: {e}")
        return 2
    ok = not any(c.problems for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}, indent=2))
        return 0 if ok else 1
    for check in checks:
        if not check.problems:
            print(f"ok       {check.name}: {check.ok_text}" if check.ok_text else f"ok       {check.name}")
        for problem in check.problems:
            print(f"PROBLEM  {check.name}: {problem['kind']}: {problem['detail']}")
        for warning in check.warnings:
            print(f"warning  {check.name}: {warning['kind']}: {warning['detail']}")
    print("the bundle checks out" if ok else "the bundle does NOT check out")
    return 0 if ok else 1


def _file(path: Path | None, option: str) -> bytes | None:
    from linetap.sync.central.tsa import MAX_CERT_BYTES

    if path is None:
        return None
    try:
        return read_bounded(path, max_bytes=MAX_CERT_BYTES)
    except (OSError, FileRefused) as e:
        raise ConfigError(f"{option} {path} cannot be read ({e})") from None


def _key(text: str | None, option: str) -> Ed25519PublicKey | None:
    """A public key given as base64 of its 32 raw bytes or as a PEM file."""
    if text is None:
        return None
    from linetap.sync.central.evidence_check import pem_key

    path = Path(text)
    if path.is_file():
        try:
            return pem_key(path.read_bytes()[:64 * 1024], f"{option} {path}")
        except ValueError as e:
            raise ConfigError(f"{e}; give the key's PEM file or its base64") from None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{option} {text[:60]!r} is neither a PEM file nor base64 of an Ed25519 public "
                          "key (32 bytes)") from None


def _tools(args: argparse.Namespace) -> Any:
    from linetap.sync.central.cli import central_config, data_dir
    from linetap.sync.central.tools import StoreTools

    return StoreTools(data_dir(args), config=central_config(args))


def _audit_list(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import iso

    with _tools(args) as tools:
        entries = tools.index.access_log(args.device, args.recording)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("the access log is empty" if args.device is None and args.recording is None else "no entries match")
    for e in entries:
        print(f"{e['pos']:>6}  {iso(e['at_ms'])}  {e['actor']:<12} {e['origin']:<6} {e['action']:<9} "
              f"{e['device_id'] or '-'} {e['recording_id'] or '-'}  {e['detail'] or ''}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    with _tools(args) as tools:
        entries = tools.index.access_log()
    broken = verify_log(entries)
    if broken is not None:
        print(f"access log broken at position {broken[0]}: {broken[1]}")
        return 1
    print(f"access log OK: {len(entries)} entries, one unbroken chain")
    return 0
