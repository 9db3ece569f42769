"""``linetap``: the box's command line.

Every command takes ``--config FILE`` (TOML; without it the simulated board
and safe defaults apply) and ``--data-dir DIR`` (or ``LINETAP_DATA_DIR``),
the one folder everything the box writes lives under.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from linetap.firmware.options import CommonOptions, add_json

logger = logging.getLogger(__name__)

OPTIONS = CommonOptions(
    prog="linetap", description="Inline call recorder firmware.",
    data_dir_help="where spool, catalogue and keys live", data_dir_env="LINETAP_DATA_DIR",
    data_dir_default="/var/lib/linetap",
    config_help="config file (TOML); without one the simulated board and defaults apply")


def build_parser() -> argparse.ArgumentParser:
    parser, common = OPTIONS.parsers()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("run", parents=[common], help="run the recorder (the service's command)")
    _add_calls(sub, common)
    config = sub.add_parser("config", parents=[common], help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", parents=[common], help="validate a config file and its board")
    check.add_argument("file", type=Path, help="config file to check")
    add_json(check, "print the effective config as JSON")
    _add_keys(sub, common)
    _add_spool(sub, common)
    devices = sub.add_parser("devices", parents=[common],
                             help="list the audio devices and serial ports this machine has")
    add_json(devices)
    _add_doctor(sub, common)
    selftest = sub.add_parser("selftest", parents=[common],
                              help="the checks a new version must pass: drivers, pipeline, spool, broker")
    add_json(selftest, "print the checks as a JSON list")
    selftest.add_argument("--broker-timeout", type=float, default=10.0, metavar="SECONDS",
                          help="how long to wait for the broker connection (default 10)")
    gadget = sub.add_parser("gadget", parents=[common],
                            help="make (up) or remove (down) the USB device the PC sees on a USB inline board")
    gadget.add_argument("action", choices=("up", "down"))
    gadget.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # a fake root in tests
    from linetap.sync import appcli

    appcli.add_parser(sub, common)
    return parser


def _add_calls(sub: Any, common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", parents=[common],
                          help="run scripted calls on the simulated board and say what each device did")
    demo.add_argument("--realtime", action="store_true", help="pace the simulated board in real time")
    replay = sub.add_parser("replay", parents=[common],
                            help="run one call from two WAV files through the simulated board")
    replay.add_argument("near", type=Path, help="near end (agent) WAV")
    replay.add_argument("far", type=Path, help="far end (caller) WAV")
    add_json(replay, "print the result as JSON")
    replay.add_argument("--realtime", action="store_true", help="pace the call in real time")


def _add_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="the box's signing key and the central recipient")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = keys_sub.add_parser("init", parents=[common],
                               help="create the signing key (once) and store the central recipient")
    init.add_argument("--central-recipient", required=True, metavar="AGE1...",
                      help="the central store's age X25519 recipient (age-keygen -y central.key)")
    init.add_argument("--operator-key", metavar="BASE64",
                      help="the fleet operator's Ed25519 public key (printed by linetap-central keys init); without "
                           "one the box refuses every fleet command and config")
    init.add_argument("--store-key", metavar="BASE64",
                      help="the central store's Ed25519 store key (printed by linetap-central keys init): checks "
                           "delivery receipts; without one synced recordings are deleted on the stored ack alone")
    init.add_argument("--release-key", metavar="BASE64",
                      help="the release key's Ed25519 public half (printed by linetap-central release keygen): "
                           "checks updates; without one every update offer is refused")
    keys_sub.add_parser("show", parents=[common], help="print what the central store must enrol")


def _add_spool(sub: Any, common: argparse.ArgumentParser) -> None:
    spool = sub.add_parser("spool", parents=[common], help="the recordings kept on this box")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    listing = spool_sub.add_parser("list", parents=[common], help="list recordings, oldest first")
    add_json(listing)
    verify = spool_sub.add_parser("verify", parents=[common],
                                  help="check structure, hashes, signatures and the chain (no decryption)")
    add_json(verify)


def _add_doctor(sub: Any, common: argparse.ArgumentParser) -> None:
    doctor = sub.add_parser("doctor", parents=[common],
                            help="check what an installer can get wrong: audio, signal, channels, pins, "
                                 "hook, modem, keys, broker, clock, disk, spool")
    add_json(doctor, "print the results as a JSON list")
    doctor.add_argument("--listen", type=float, default=3.0, metavar="SECONDS",
                        help="how long to listen for signal on each channel (default 3; keep a test call going)")
    doctor.add_argument("--hook-test", type=float, nargs="?", const=30.0, default=None, metavar="SECONDS",
                        help="ask to lift and replace the handset within SECONDS (default 30)")


def main(argv: list[str] | None = None) -> int:
    return OPTIONS.main(build_parser(), argv, _dispatch)


def data_dir(args: argparse.Namespace, *, default: str | None = None) -> Path:
    return OPTIONS.data_dir(args.data_dir, default=default)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "update":  # before the imports below: the gate delays every start of the recorder
        from linetap.sync import appcli

        return appcli.run(args, data_dir(args))
    from linetap.firmware import devices, service
    from linetap.firmware.config import check_prompts, load_config

    if args.command == "config":
        config = load_config(args.file)
        check_prompts(config, source=str(args.file))  # start-up loads them too: fail here first
        if args.json:
            print(json.dumps(config.model_dump(mode="json"), indent=2))
        else:
            print(f"{args.file}: OK (board {config.device.board}, device id {config.device.id})")
        return 0
    if args.command == "devices":
        return devices.list_devices(as_json=args.json)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "selftest":
        from linetap.firmware import selftest
        from linetap.firmware.clock import SystemClock

        return selftest.main(load_config(args.config), data_dir(args), SystemClock(), as_json=args.json,
                             broker_timeout_s=args.broker_timeout)
    if args.command == "keys":
        return _keys(args)
    if args.command == "spool":
        return _spool(args)
    if args.command == "gadget":
        return devices.usb_gadget(load_config(args.config), args.action, args.root)
    config = load_config(args.config)
    if args.command == "demo":
        from linetap.firmware.demo import run_demo

        return run_demo(config, data_dir(args, default=str(Path.cwd() / "demo-data")), realtime=args.realtime)
    if args.command == "replay":
        from linetap.firmware.replay import run_replay

        return run_replay(config, data_dir(args), args.near, args.far, as_json=args.json,
                          realtime=args.realtime)
    if args.command == "run":
        return service.run(config, data_dir(args))
    raise AssertionError(f"unhandled command {args.command}")


def _doctor(args: argparse.Namespace) -> int:
    from linetap.firmware import doctor
    from linetap.firmware.clock import SystemClock

    return doctor.main(args.config, data_dir(args), SystemClock(), as_json=args.json,
                       listen_s=args.listen, hook_test_s=args.hook_test)


def _keys(args: argparse.Namespace) -> int:
    from linetap.firmware import keys

    folder = data_dir(args)
    if args.keys_command == "init":
        info = keys.keys_init(folder, args.central_recipient, args.operator_key, args.store_key,
                              args.release_key)
        print(f"{'created' if info.created else 'kept existing'} device signing key {info.device_key}")
        print(f"central recipient stored in {info.recipient_file}")
        if info.operator_key_file is not None:
            print(f"operator key stored in {info.operator_key_file}")
        if info.store_key_file is not None:
            print(f"store key stored in {info.store_key_file}")
        if info.release_key_file is not None:
            print(f"release key stored in {info.release_key_file}")
    public = keys.load_signing_key(folder).public_key()
    print(f"enrol this box at the central store with its public key:\n  {keys.public_key_b64(public)}")
    _show_keys("fleet commands and configs accepted from operator key", keys.load_operator_keys(folder),
               f"no operator key: fleet commands and configs are refused; {keys.OPERATOR_HINT}")
    stores = keys.load_store_keys(folder)
    _show_keys("delivery receipts checked with store key", stores.values(),
               f"no store key: receipts cannot be checked and synced recordings are deleted on the stored ack "
               f"alone; {keys.STORE_HINT}", names=list(stores))
    _show_keys("updates accepted when signed by release key", keys.load_release_keys(folder),
               f"no release key: every update offer is refused; {keys.RELEASE_HINT}")
    return 0


def _show_keys(title: str, found: Any, missing: str, *, names: list[str] | None = None) -> None:
    """Print the public keys a box trusts for one job (by fingerprint, or by the names given), or what is missing."""
    from linetap.firmware import keys

    found = list(found)
    if not found:
        print(missing)
        return
    labels = [f"key id {n}" for n in names] if names is not None else [f"fingerprint {keys.fingerprint(k)}"
                                                                         for k in found]
    print(f"{title}:\n" + "".join(f"  {keys.public_key_b64(k)} ({label})\n" for k, label in zip(found, labels)),
          end="")


def _spool(args: argparse.Namespace) -> int:
    from linetap.firmware import spool

    folder = data_dir(args)
    if args.spool_command == "list":
        view = spool.read_catalogue(folder)  # read-only; what it cannot make sense of is in view.problems
        if args.json:
            print(json.dumps(view.rows, indent=2))
        elif not view.rows and view.readable:
            print(f"no recordings in {folder}")
        else:
            for row in view.rows:
                print(f"{row['seq']:>6}  {row['id']}  {row['state']:<11} {row['segments']:>3} segments "
                      f"{row['bytes']:>9} bytes{'  flagged' if row['flagged'] else ''}"
                      f"{'' if row['recorded'] else '  (nothing kept)'}{_receipt_note(row)}")
        for problem in view.problems:
            print(f"linetap: {problem['detail']}", file=sys.stderr)
        return 1 if view.problems else 0
    report = spool.verify_spool(folder)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{folder}: {report['recordings']} recordings, {report['manifests']} manifests: "
              f"{'OK' if report['ok'] else 'PROBLEMS'}")
        for problem in report["problems"]:
            print(f"  {problem['kind']}: {problem['recording_id']}: {problem['detail']}")
        for problem in report["chain"].get("problems", []):
            print(f"  chain: {problem}")
    return 0 if report["ok"] else 1


def _receipt_note(row: dict[str, Any]) -> str:
    if row["state"] != "synced":
        return ""
    stored = row.get("receipt_stored_ms")
    return "  no receipt" if stored is None else f"  receipt {mf_time(stored)}"


def mf_time(ms: int) -> str:
    """A catalogue time in milliseconds as UTC ISO 8601 to the second."""
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


if __name__ == "__main__":
    sys.exit(main())
