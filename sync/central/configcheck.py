"""``linetap-central config check``: the central config, and what it names, checked before ``serve`` runs.

Like the box's ``linetap config check``: the file is read with the same
schema ``serve`` uses (every unknown key and bad value named at once, with its
fix), then what the config points at is looked at without connecting: the
keys ``serve`` needs, the broker's TLS files, the TSA's certificates, the index
password file and the S3 credentials (mode 0600), and the object lock against
the retention rules. ``--connect`` also opens the index (at this program's
schema version, migrating nothing), reaches the bucket (able to lock when
``object_lock`` is on) and asks the TSA for a timestamp of a throwaway digest.

Every finding is a :class:`Finding`: a problem (exit 1) or a warning, each
saying what is wrong and how to fix it. Nothing printed holds a credential:
URLs are shown :func:`~linetap.sync.central.config.redacted`, and the S3 and
PostgreSQL errors passed on are the store's and index's own, which name no
secret.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from linetap.firmware.errors import LinetapError
from linetap.firmware.options import add_json
from linetap.sync.central.config import CONFIG_FILE, CentralConfig, load_config, redacted
from linetap.sync.central.writeonce import check_lock_config

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Finding:
    """``severity`` "problem" (serve would fail or do what the operator did not mean) or "warning"."""

    severity: str
    section: str
    message: str


def check_config(config: CentralConfig, data_dir: Path, *, connect: bool = False) -> list[Finding]:
    """Everything wrong with ``config`` for a store in ``data_dir`` (and, with ``connect``, its servers)."""
    findings = list(_offline(config, Path(data_dir)))
    if connect:  # a section already wrong on paper is not tried (its problem would only come twice)
        wrong = {f.section for f in findings if f.severity == "problem"}
        findings += _connected(config, Path(data_dir), skip=wrong)
    return findings


def reached(config: CentralConfig) -> list[str]:
    """What ``--connect`` reaches with this config (the embedded index and file store need nothing)."""
    return [name for name, there in (("PostgreSQL index", config.index.url), ("S3 bucket", config.store.url),
                                     ("TSA", config.timestamps.tsa_url)) if there is not None]


def _attempt(section: str, step: Callable[[], object], severity: str = "problem") -> Iterator[Finding]:
    """Run ``step``; its :class:`LinetapError` (each says what to fix) becomes a finding."""
    try:
        step()
    except LinetapError as e:
        yield Finding(severity, section, str(e))


def _offline(config: CentralConfig, data_dir: Path) -> Iterator[Finding]:
    from linetap.sync.central import keys

    for load in (keys.load_store_key, keys.load_identity, keys.load_operator_key):
        yield from _attempt("keys", lambda load=load: load(data_dir))
    broker = config.broker
    if broker.tls:
        for name in ("ca_file", "cert_file", "key_file"):
            path = data_dir / getattr(broker, name)
            if not path.is_file():
                yield Finding("problem", "broker", f"[broker] {name} {path} does not exist; make it with "
                              "`linetap-central broker-init` or fix the path (relative paths are under the data dir)")
    elif broker.host not in LOOPBACK:
        yield Finding("warning", "broker", f"[broker] host {broker.host} is not loopback and tls = false: boxes' "
                      "uploads and keys cross the network in the clear; set tls = true with its files")
    if config.timestamps.tsa_url is not None:
        from linetap.sync.central.tsa import load_trust

        yield from _attempt("timestamps", lambda: load_trust(data_dir, config.timestamps))
    yield from _index_offline(config, data_dir)
    yield from _store_offline(config, data_dir)


def _index_offline(config: CentralConfig, data_dir: Path) -> Iterator[Finding]:
    from linetap.sync.central.indexes import index_password

    section = config.index
    if section.url is None:
        return
    yield from _attempt("index", lambda: index_password(section, data_dir))
    if redacted(section.url) != section.url:
        yield Finding("warning", "index", f"[index] url {redacted(section.url)} holds a password, which then sits "
                      "in the config file; put it alone in a 0600 file named by password_file instead")


def _store_offline(config: CentralConfig, data_dir: Path) -> Iterator[Finding]:
    section = config.store
    for text in check_lock_config(section, config.retention):
        yield Finding("warning", "store", text)
    if section.url is None:
        return
    from linetap.sync.central.s3store import credentials

    yield from _attempt("store", lambda: credentials(section, data_dir))
    endpoint = section.endpoint_url or ""
    if endpoint.startswith("http://") and not any(f"//{host}" in endpoint for host in LOOPBACK):
        yield Finding("warning", "store", f"[store] endpoint_url {endpoint} is plain http off loopback: recordings' "
                      "objects and signed requests cross the network unencrypted; use https://")


def _connected(config: CentralConfig, data_dir: Path, *, skip: set[str]) -> list[Finding]:
    from linetap.sync.central.indexes import open_index
    from linetap.sync.central.store import open_store

    def index() -> None:
        if config.index.url is not None:  # the embedded file is made on first use: nothing to reach
            with open_index(config.index, data_dir, migrate=False):
                pass

    def store() -> None:
        opened = open_store(config, data_dir)
        check = getattr(opened, "check", None)  # a bucket; the file store's folder is made on first write
        if check is not None:
            check(object_lock=config.store.object_lock != "off")

    steps = {"index": index, "store": store}
    if config.timestamps.tsa_url is not None:
        steps["timestamps"] = lambda: ask_tsa(config, data_dir)
    return [f for section, step in steps.items() if section not in skip for f in _attempt(section, step)]


def ask_tsa(config: CentralConfig, data_dir: Path) -> None:
    """One timestamp of a throwaway digest from the configured TSA, checked against its certificates."""
    from linetap.sync.central import timestamps as ts
    from linetap.sync.central.tsa import TsaClient, load_trust

    section = config.timestamps
    query = ts.build_query(b"linetap-central config check")
    answer = TsaClient(section.tsa_url, timeout_s=section.timeout_s).ask(query)
    ts.check_answer(answer, query, load_trust(data_dir, section), tsa=section.tsa_url)


# ------------------------------------------------------------------- the CLI --

def add_config_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central config check``: plugged into :mod:`linetap.sync.central.cli`."""
    config = subparsers.add_parser("config", parents=[common], help="check the central config")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", parents=[common],
                                  help="check the config and the files it names; non-zero exit on any problem")
    check.add_argument("--config", type=Path, metavar="FILE",
                       help=f"the config to check (default: DATA_DIR/{CONFIG_FILE}, else the defaults)")
    check.add_argument("--connect", action="store_true",
                       help="also open the index, reach the bucket and ask the TSA for a timestamp")
    add_json(check)
    check.set_defaults(run=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir

    folder = data_dir(args)
    source = args.config or folder / CONFIG_FILE
    config = load_config(args.config, folder)  # the schema's problems: every one at once, a ConfigError
    findings = check_config(config, folder, connect=args.connect)
    problems = [f for f in findings if f.severity == "problem"]
    if args.json:
        print(json.dumps({"config": str(source) if Path(source).exists() else None,
                          "connected": reached(config) if args.connect else [],
                          "ok": not problems, "findings": [asdict(f) for f in findings]}, indent=2))
        return 1 if problems else 0
    for finding in findings:
        print(f"{finding.severity} [{finding.section}]: {finding.message}")
    where = source if Path(source).exists() else f"the defaults (no {source})"
    verdict = f"{len(problems)} problems" if problems else "OK"
    warnings = len(findings) - len(problems)
    tried = f" ({', '.join(reached(config)) or 'nothing to reach'}: reached)" if args.connect and not problems else ""
    print(f"{where}: {verdict}{f', {warnings} warnings' if warnings else ''}{tried}")
    return 1 if problems else 0
