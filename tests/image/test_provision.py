"""The first-boot script image/provision/linetap-provision, run on the host.

A stand-in ``linetap`` (a shell script) takes the place of the real command so
the script's own contract is checked: provision once, repeat nothing, say what
to fix when it cannot provision. Running as the service user, setting the host
name and the mount check are switched off through the script's environment.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "image" / "provision" / "linetap-provision"
RECIPIENT = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"

STAND_IN = """#!/usr/bin/env bash
# Records each call, answers `keys init` like linetap would.
set -euo pipefail
echo "$*" >> "{calls}"
case "$*" in
    "keys init --help") [ "{has_keys}" = 1 ] || exit 2 ;;
    "keys init --data-dir "*)
        data_dir=$4
        mkdir -p -m 0700 "$data_dir/keys"
        echo secret > "$data_dir/keys/device.key"
        echo "public key: TESTPUBLICKEY"
        echo "recipient: $6" ;;
    "keys show --data-dir "*) echo "public key: TESTPUBLICKEY" ;;
    *) exit 2 ;;
esac
"""


@pytest.fixture
def box(tmp_path: Path):
    def make(*, has_keys: bool = True, recipient: str | None = RECIPIENT, serial: bytes | None = None,
             store: str | None = None):
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        calls = tmp_path / "calls.log"
        stand_in = tmp_path / "linetap"
        stand_in.write_text(STAND_IN.format(calls=calls, has_keys=int(has_keys)))
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
        recipient_file = tmp_path / "boot" / "central.recipient"
        if recipient is not None:
            recipient_file.parent.mkdir(exist_ok=True)
            recipient_file.write_text(recipient + "\n")
        store_file = tmp_path / "boot" / "store.pub"
        if store is not None:
            store_file.parent.mkdir(exist_ok=True)
            store_file.write_text(store + "\n")
        serial_file = tmp_path / "serial-number"
        if serial is not None:
            serial_file.write_bytes(serial)
        env = {
            "PATH": os.environ["PATH"],
            "LINETAP_DATA_DIR": str(data_dir),
            "LINETAP_BIN": str(stand_in),
            "LINETAP_USER": "",
            "LINETAP_RECIPIENT_FILES": f"{tmp_path / 'missing.recipient'} {recipient_file}",
            "LINETAP_SERIAL_FILE": str(serial_file),
            "LINETAP_OPERATOR_FILES": str(tmp_path / "boot" / "operator.pub"),
            "LINETAP_STORE_FILES": f"{tmp_path / 'missing.pub'} {store_file}",
            "LINETAP_SET_HOSTNAME": "0",
            "LINETAP_REQUIRE_MOUNT": "0",
        }

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10)

        return run, data_dir, calls

    return make


def test_first_run_makes_id_and_key_and_prints_enrolment(box) -> None:
    run, data_dir, calls = box(serial=b"10000000abcdef12\x00")
    result = run()
    assert result.returncode == 0, result.stderr
    assert (data_dir / "device-id").read_text() == "lt-abcdef12\n"
    assert (data_dir / "keys" / "device.key").exists()
    assert f"keys init --data-dir {data_dir} --central-recipient {RECIPIENT}" in calls.read_text()
    assert "device id: lt-abcdef12" in result.stdout
    assert "public key: TESTPUBLICKEY" in result.stdout


def test_the_store_key_is_read_from_the_boot_partition(box) -> None:
    store_key = "MCowBQYDK2VwAyEAstorekeystorekeystorekeystorekey="
    run, data_dir, calls = box(store=store_key)
    result = run()
    assert result.returncode == 0, result.stderr
    assert f"--central-recipient {RECIPIENT} --store-key {store_key}" in calls.read_text()


def test_without_a_store_key_it_says_receipts_are_not_checked(box) -> None:
    run, data_dir, calls = box()
    result = run()
    assert result.returncode == 0, result.stderr
    assert "--store-key" not in calls.read_text()
    assert "no store key found" in result.stdout + result.stderr and "on the stored ack alone" in result.stdout + result.stderr


def test_second_run_changes_nothing_and_prints_the_same_enrolment(box) -> None:
    run, data_dir, calls = box()
    first = run()
    assert first.returncode == 0, first.stderr
    device_id = (data_dir / "device-id").read_text()
    calls_after_first = calls.read_text()

    second = run()

    assert second.returncode == 0, second.stderr
    assert (data_dir / "device-id").read_text() == device_id
    assert calls.read_text() == calls_after_first
    enrolment = first.stdout[first.stdout.index("enrol this box"):]
    assert second.stdout.endswith(enrolment)


def test_board_without_serial_gets_a_random_valid_id(box) -> None:
    run, data_dir, _ = box(serial=None)
    assert run().returncode == 0
    device_id = (data_dir / "device-id").read_text().strip()
    assert device_id.startswith("lt-") and len(device_id) == 15
    assert all(c in "0123456789abcdef" for c in device_id[3:])


def test_missing_recipient_says_where_to_put_it(box) -> None:
    run, data_dir, calls = box(recipient=None)
    result = run()
    assert result.returncode == 1
    assert "no central recipient was found" in result.stderr
    assert "central.recipient" in result.stderr
    assert not (data_dir / "enrolment.txt").exists()
    assert not calls.exists()


def test_linetap_without_keys_command_is_reported(box) -> None:
    run, data_dir, _ = box(has_keys=False)
    result = run()
    assert result.returncode == 1
    assert "has no 'keys init' command" in result.stderr
    assert not (data_dir / "enrolment.txt").exists()


def test_key_without_enrolment_record_is_shown_not_remade(box) -> None:
    run, data_dir, calls = box()
    (data_dir / "keys").mkdir(mode=0o700)
    (data_dir / "keys" / "device.key").write_text("made before a power cut\n")
    result = run()
    assert result.returncode == 0, result.stderr
    assert (data_dir / "keys" / "device.key").read_text() == "made before a power cut\n"
    assert "keys init" not in calls.read_text()
    assert "public key: TESTPUBLICKEY" in result.stdout


def test_invalid_device_id_file_is_refused(box) -> None:
    run, data_dir, _ = box()
    (data_dir / "device-id").write_text("Front Desk!\n")
    result = run()
    assert result.returncode == 1
    assert "'Front Desk!'" in result.stderr and "not valid" in result.stderr


def test_it_says_where_the_tls_files_go_apart_from_the_signing_key(box) -> None:
    run, data_dir, _ = box()
    first = run()
    assert first.returncode == 0, first.stderr
    assert f"{data_dir}/keys/tls.key" in first.stdout and f"{data_dir}/keys/tls.crt" in first.stdout
    assert f"never over {data_dir}/keys/device.key" in first.stdout
    signing_key = (data_dir / "keys" / "device.key").read_bytes()
    for name in ("ca.pem", "tls.crt", "tls.key"):
        (data_dir / "keys" / name).write_text(f"{name} from the fleet CA\n")
    second = run()
    assert second.returncode == 0, second.stderr
    assert "tls.key" not in second.stdout
    assert (data_dir / "keys" / "device.key").read_bytes() == signing_key
