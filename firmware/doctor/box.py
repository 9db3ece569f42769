"""The checks of what the box keeps and whom it talks to: keys, broker, clock, disk and spool.

The spool check never changes the spool (doctor may run next to the
service): it reads the catalogue, the quarantine folder and the manifests,
and leaves recovery to the service's next start. Keys are named by file and
fingerprint, never shown.
"""

from __future__ import annotations

import datetime
import socket
import sqlite3
import ssl
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from linetap.firmware import keys, spool
from linetap.firmware.config import Config
from linetap.firmware.doctor.context import Context, config_ref, no_config
from linetap.firmware.doctor.report import CheckResult, failed, passed, skipped, warned
from linetap.firmware.errors import ConfigError

CERT_RENEW_DAYS = 30


def check_keys(ctx: Context) -> CheckResult:
    try:
        public = keys.load_signing_key(ctx.data_dir).public_key()
        keys.load_recipient(ctx.data_dir)
    except keys.KeyMissing as exc:
        return failed("keys", str(exc).split(":")[0],
                      f"run `linetap keys init --data-dir {ctx.data_dir} --central-recipient age1...` with "
                      f"the central store's recipient (first-boot provisioning does this from "
                      f"central.recipient on the boot partition)", error=str(exc))
    except ConfigError as exc:  # KeyPermissions and unreadable key files
        return failed("keys", str(exc).split(";")[0], str(exc).split("; ", 1)[-1], error=str(exc))
    fingerprint = keys.fingerprint(public)
    found = f"device signing key present (mode 0600, fingerprint {fingerprint}); central recipient present"
    try:
        stores = keys.load_store_keys(ctx.data_dir)
        releases = [keys.fingerprint(k) for k in keys.load_release_keys(ctx.data_dir)]
    except ConfigError as exc:
        return failed("keys", str(exc).split(";")[0], str(exc).split("; ", 1)[-1], error=str(exc))
    if not stores:
        return warned("keys", f"{found}; no store key: delivery receipts cannot be checked, so synced "
                              "recordings are deleted on the stored ack alone until one is provisioned",
                      f"run `linetap keys init --data-dir {ctx.data_dir} --central-recipient age1... --store-key "
                      "<base64>` with the store key `linetap-central keys init` prints (first-boot provisioning "
                      "reads store.pub from the boot partition)", fingerprint=fingerprint)
    updates = (f"release key {', '.join(releases)} checks updates" if releases else
               f"no release key: update offers are refused ({keys.RELEASE_HINT})")
    return passed("keys", f"{found}; store key {', '.join(stores)} checks delivery receipts; {updates}",
                  fingerprint=fingerprint, store_keys=list(stores), release_keys=releases)


def _in_data_dir(data_dir: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else data_dir / path


def _client_certificate(ctx: Context, config: Config, cert_path: Path) -> CheckResult | None:
    """A failure or warning about the box's own certificate, or None when it is good."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        return failed("broker", f"{cert_path} is not a PEM certificate ({exc})",
                      f"copy the box's client certificate (PEM) to {cert_path}")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    device_id = config.device.id
    if names != [device_id]:
        return failed("broker", f"client certificate CN {', '.join(map(str, names)) or '(none)'} is not the "
                                f"device id {device_id!r}: the broker would put this box in another's topics",
                      f"issue {cert_path} with CN = {device_id}, or set device.id in {config_ref(ctx)} to "
                      f"the certificate's CN")
    now = datetime.datetime.fromtimestamp(ctx.clock.wall(), datetime.UTC)
    until = cert.not_valid_after_utc
    clock_note = "" if ctx.clock.synced() else " (the clock is not synchronised: fix that first)"
    if now < cert.not_valid_before_utc:
        return failed("broker", f"client certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
                                f"{clock_note}", f"issue a certificate valid now for {device_id}")
    if now > until:
        return failed("broker", f"client certificate expired on {until:%Y-%m-%d}{clock_note}",
                      f"issue a new certificate for {device_id} and copy it to {cert_path}")
    if until - now < datetime.timedelta(days=CERT_RENEW_DAYS):
        return warned("broker", f"client certificate expires on {until:%Y-%m-%d}",
                      f"issue a new certificate for {device_id} before then and copy it to {cert_path}",
                      expires=until.isoformat())
    return None


def check_broker(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("broker")
    sync = config.sync
    if not sync.broker:
        return skipped("broker", "no broker configured (sync.broker is empty): recordings stay on the box")
    where = f"{sync.broker}:{sync.port}"
    details: dict[str, Any] = {"broker": where, "tls": sync.tls}
    context: ssl.SSLContext | None = None
    certificate: CheckResult | None = None
    if sync.tls:
        prepared = _tls_context(ctx, config, details)
        if isinstance(prepared, CheckResult):
            return prepared
        context, certificate = prepared
    try:
        with socket.create_connection((sync.broker, sync.port), timeout=ctx.network_timeout_s) as raw:
            if context is None:
                return passed("broker", f"{where} reachable (plain TCP, loopback only)", **details)
            with context.wrap_socket(raw, server_hostname=sync.broker) as tls:
                details.update(tls_version=tls.version(), server=dict(x[0] for x in tls.getpeercert()["subject"]))
    except ssl.SSLCertVerificationError as exc:
        return failed("broker", f"the broker's certificate is not accepted: {exc.verify_message}",
                      "sync.ca_file must be the CA that signed the broker's certificate, and sync.broker "
                      "a name that certificate is issued for", **details)
    except ssl.SSLError as exc:
        return failed("broker", f"TLS handshake with {where} failed: {exc.reason or exc}",
                      "check that the broker speaks TLS on this port and accepts this box's certificate "
                      "(its CA must be the broker's cafile)", **details)
    except OSError as exc:
        return failed("broker", f"cannot reach {where}: {exc.strerror or exc}",
                      f"check sync.broker and sync.port in {config_ref(ctx)}, the network and firewalls "
                      f"(`nc -vz {sync.broker} {sync.port}`)", **details)
    if certificate is not None:
        return CheckResult("broker", "warn", certificate.finding, certificate.fix,
                           {**details, **certificate.details})
    return passed("broker", f"TLS to {where} ({details['tls_version']}) with client certificate CN "
                            f"{config.device.id}", **details)


def _tls_context(ctx: Context, config: Config, details: dict[str, Any]
                 ) -> CheckResult | tuple[ssl.SSLContext, CheckResult | None]:
    """The box's TLS files checked and loaded: the failure, or the context and a warning (or None)."""
    sync = config.sync
    files = {key: _in_data_dir(ctx.data_dir, getattr(sync, key)) for key in ("ca_file", "cert_file", "key_file")}
    missing = [f"sync.{key} = {path}" for key, path in files.items() if not path.is_file()]
    if missing:
        return failed("broker", f"TLS file(s) missing: {'; '.join(missing)}",
                      f"copy the fleet CA to {files['ca_file']}, this box's certificate (CN = "
                      f"{config.device.id}) to {files['cert_file']} and its key to {files['key_file']} "
                      f"(chmod 600)", **details)
    for key, check in (("cert_file", keys.check_tls_certificate),
                       ("key_file", lambda path: keys.check_tls_key(path, ctx.data_dir))):
        try:
            check(files[key])
        except keys.WrongKeyKind as exc:
            return failed("broker", f"sync.{key}: {exc.finding}", exc.fix, **details)
    certificate = _client_certificate(ctx, config, files["cert_file"])
    if certificate is not None and certificate.status == "fail":
        return CheckResult("broker", "fail", certificate.finding, certificate.fix, details)
    try:
        context = ssl.create_default_context(cafile=str(files["ca_file"]))
        context.load_cert_chain(str(files["cert_file"]), str(files["key_file"]))
    except ssl.SSLError as exc:
        return failed("broker", f"the TLS files do not load: {exc.reason or exc}",
                      f"check that {files['ca_file']} is the CA's PEM and that {files['key_file']} is "
                      f"the key of {files['cert_file']}", **details)
    if stat.S_IMODE(files["key_file"].stat().st_mode) & 0o077:
        certificate = certificate or warned(
            "broker", f"the client key {files['key_file']} is readable by others",
            f"chmod 600 {files['key_file']}")
    return context, certificate


def check_clock(ctx: Context) -> CheckResult:
    now = datetime.datetime.fromtimestamp(ctx.clock.wall(), datetime.UTC)
    details = {"wall": now.isoformat(timespec="seconds")}
    if ctx.clock.synced():
        return passed("clock", f"synchronised ({now:%Y-%m-%d %H:%M:%S} UTC)", **details)
    return warned("clock", f"not synchronised ({now:%Y-%m-%d %H:%M:%S} UTC as the box believes): recordings "
                           f"are stamped as provisional",
                  "give the box network access to an NTP server (UDP port 123); `timedatectl "
                  "timesync-status` shows what systemd-timesyncd tried; a local server goes in NTP= of "
                  "/etc/systemd/timesyncd.conf", **details)


def check_disk(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("disk")
    if not ctx.data_dir.is_dir():
        return failed("disk", f"the data directory {ctx.data_dir} does not exist",
                      f"mount the data partition (LTDATA) at {ctx.data_dir} and run provisioning, or give "
                      f"--data-dir")
    free = ctx.disk_free(ctx.data_dir)
    floor = config.spool.min_free_mb * 1024 * 1024
    details = {"free_mb": free // (1024 * 1024), "min_free_mb": config.spool.min_free_mb}
    if free < floor:
        return failed("disk", f"{free // 2**20} MB free under {ctx.data_dir}, below spool.min_free_mb = "
                              f"{config.spool.min_free_mb}: new calls are refused",
                      "free space (let sync deliver, `linetap spool list` shows what waits), use a larger "
                      "card, or lower spool.min_free_mb", **details)
    if free < 2 * floor:
        return warned("disk", f"{free // 2**20} MB free, less than twice spool.min_free_mb = "
                              f"{config.spool.min_free_mb}",
                      "check that sync is delivering (recordings leave the box after keep_synced_days) "
                      "or use a larger card", **details)
    return passed("disk", f"{free // 2**20} MB free under {ctx.data_dir} (spool.min_free_mb = "
                          f"{config.spool.min_free_mb})", **details)


def check_spool(ctx: Context) -> CheckResult:
    config = ctx.config()
    if config is None:
        return no_config("spool")
    try:
        rows = spool.list_recordings(ctx.data_dir)
    except sqlite3.DatabaseError as exc:
        return failed("spool", f"the catalogue {spool.SpoolLayout(ctx.data_dir).catalogue} is "
                               f"unreadable ({exc})",
                      "restart the service: recovery quarantines it and rebuilds it from the recordings")
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    quarantine = spool.SpoolLayout(ctx.data_dir).quarantine
    quarantined = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
    unreceipted = sum(r["state"] == "synced" and r["receipt_stored_ms"] is None for r in rows)
    details: dict[str, Any] = {"recordings": by_state, "quarantined": quarantined,
                               "synced_without_receipt": unreceipted}  # kept until they hold a receipt
    used = sum(r["bytes"] for r in rows if r["state"] in ("recording", "closed", "synced"))
    limit = config.spool.max_bytes
    if (limit and used > limit and "synced" not in by_state
            and config.spool.on_full == "stop-and-alarm"):
        return failed("spool", f"the spool holds {used} bytes of unsynced recordings, over spool.max_bytes "
                               f"= {limit}: new calls are refused",
                      "let sync deliver (check the broker), raise spool.max_bytes, or set spool.on_full = "
                      "\"overwrite-oldest\"", **details)
    try:
        report = spool.verify_spool(ctx.data_dir)
    except ConfigError as exc:
        return skipped("spool", f"not verified without the device key (see the keys check): "
                                f"{str(exc).split(':')[0]}", **details)
    problems = report["problems"] + [{"kind": "chain", "detail": p} for p in report["chain"].get("problems", [])]
    details["problems"] = len(problems)
    summary = f"{report['recordings']} recordings, {report['manifests']} signed manifests"
    if problems:
        first = problems[0]
        return failed("spool", f"{summary}; {len(problems)} problem(s), first: {first['kind']}: {first['detail']}",
                      "`linetap spool verify` lists them all; restart the service so that recovery "
                      "quarantines what does not add up; if it recurs, replace the SD card", **details)
    if quarantined:
        return warned("spool", f"{summary}; recovery quarantined {len(quarantined)} item(s): "
                               f"{', '.join(quarantined[:3])}{', ...' if len(quarantined) > 3 else ''}",
                      f"read them in {quarantine}, then delete them; repeated power-cut findings "
                      f"(temp files, calls closed after a crash) point at the power supply, damage at the card",
                      **details)
    return passed("spool", f"{summary}, all verified", **details)
