"""``linetap doctor``: each check passing and failing on the simulated board, and the command itself.

Devices are the real drivers on the simulated board: the simulated codec
behind the doctor's simulated tap, gpiozero's MockFactory pins, the simulated
voice modem on a pty. The broker check talks TLS to a stdlib server on
127.0.0.1 with certificates made here. Time is a ManualClock; the hook test
waits on the panel's events, driven from the installer prompt.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyrage
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from gpiozero import LED

from linetap.drivers.gpio import sim_pin_factory
from linetap.drivers.line import ModemProfile, SimModem
from linetap.firmware import cli, doctor, keys
from linetap.firmware.clock import ManualClock
from linetap.firmware.spool import Spool

RATE = 16000
DEVICE_ID = "lt-doctor-test"


def noise(seconds: float, level_dbfs: float, seed: int) -> np.ndarray:
    """Band-wide noise at roughly ``level_dbfs`` RMS: a stand-in for speech on one side."""
    rng = np.random.default_rng(seed)
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    return np.clip(rng.normal(0, amplitude, round(seconds * RATE)), -32767, 32767).astype(np.int16)


def write_config(folder: Path, text: str = "", device_id: str = DEVICE_ID) -> Path:
    path = folder / "linetap.toml"
    path.write_text(f'[device]\nid = "{device_id}"\n' + text)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def with_keys(data_dir: Path) -> Path:
    keys.keys_init(data_dir, str(pyrage.x25519.Identity.generate().to_public()),
                   store_key=keys.public_key_b64(Ed25519PrivateKey.generate().public_key()))
    return data_dir


@pytest.fixture
def parts() -> Iterator[doctor.BoardParts]:
    made = doctor.BoardParts(sim_near=noise(6, -20, 1), sim_far=noise(6, -22, 2))
    yield made
    made.close()


def context(tmp_path: Path, data_dir: Path, parts: doctor.BoardParts, config: str | None = "",
            device_id: str = DEVICE_ID, **kwargs) -> doctor.Context:
    path = None if config is None else write_config(tmp_path, config, device_id)
    kwargs.setdefault("clock", ManualClock())
    return doctor.Context(path, data_dir, parts=parts, say=lambda text: None, **kwargs)


# ---------------------------------------------------------------- config --

def test_config_passes_names_the_board_and_fails_with_the_config_error(tmp_path, data_dir, parts) -> None:
    good = doctor.check_config(context(tmp_path, data_dir, parts))
    assert good.status == "pass" and good.details["board"] == "sim" and DEVICE_ID in good.finding
    bad = doctor.check_config(context(tmp_path, data_dir, parts, "[audio]\nrat = 16000\n"))
    assert bad.status == "fail"
    assert "audio.rat" in bad.details["error"] and "linetap config check" in bad.fix
    # Every check that needs the config says so rather than guessing.
    assert doctor.check_audio(context(tmp_path, data_dir, parts, "[audio]\nrat = 1\n")).status == "skip"


def test_no_config_file_is_a_warning_pointing_at_the_service_config(data_dir, parts, tmp_path) -> None:
    result = doctor.check_config(context(tmp_path, data_dir, parts, config=None))
    assert result.status == "warn" and "/etc/linetap/linetap.toml" in result.fix


# ----------------------------------------------------------------- audio --

def test_audio_streams_on_the_simulated_board(tmp_path, data_dir, parts) -> None:
    result = doctor.check_audio(context(tmp_path, data_dir, parts))
    assert result.status == "pass" and result.details["device_rate"] == RATE


def test_a_real_audio_device_that_is_not_there_fails_with_the_devices_in_the_fix(tmp_path, data_dir,
                                                                               parts) -> None:
    profile = (Path(__file__).parents[2] / "hardware/boards/pi4-usb-codec.toml").read_text()
    (tmp_path / "box.toml").write_text(profile.replace('device = "USB Audio"', 'device = "No Such Codec 9"'))
    result = doctor.check_audio(context(tmp_path, data_dir, parts, '\nboard = "box.toml"\n'))
    assert result.status == "fail"
    assert result.finding == "audio device 'No Such Codec 9' not found"
    assert "set audio.device in the board profile" in result.fix and "one of these names" in result.fix


# ---------------------------------------------------------------- signal --

def test_signal_on_both_channels_passes_with_their_levels(tmp_path, data_dir, parts) -> None:
    result = doctor.check_signal(context(tmp_path, data_dir, parts))
    assert result.status == "pass"
    assert -24 < result.details["near"]["speech_dbfs"] < -16
    assert -26 < result.details["far"]["speech_dbfs"] < -18


@pytest.mark.parametrize("silent", ["near", "far"])
def test_a_silent_channel_fails_as_an_unconnected_tap(tmp_path, data_dir, silent) -> None:
    sides = {"near": noise(6, -20, 1), "far": noise(6, -20, 2), silent: np.zeros(RATE * 6, np.int16)}
    parts = doctor.BoardParts(sim_near=sides["near"], sim_far=sides["far"])
    result = doctor.check_signal(context(tmp_path, data_dir, parts))
    assert result.status == "fail"
    assert result.finding.startswith(f"no signal on {silent} channel: tap not connected?")


def test_a_clipping_channel_is_a_warning(tmp_path, data_dir) -> None:
    parts = doctor.BoardParts(sim_near=noise(6, -20, 1), sim_far=noise(6, 0, 2))
    result = doctor.check_signal(context(tmp_path, data_dir, parts))
    assert result.status == "warn" and result.finding.startswith("far clips")


def test_too_short_a_stream_is_reported_not_raised(tmp_path, data_dir) -> None:
    parts = doctor.BoardParts(sim_near=noise(1, -20, 1), sim_far=noise(1, -20, 2))
    result = doctor.check_signal(context(tmp_path, data_dir, parts, listen_s=3.0))
    assert result.status == "skip" and "ended after" in result.finding


# -------------------------------------------------------------- channels --

def test_the_test_tone_comes_back_on_near_when_wired_right(tmp_path, data_dir, parts) -> None:
    result = doctor.check_channels(context(tmp_path, data_dir, parts))
    assert result.status == "pass", result
    assert result.details["near"]["after_dbfs"] > result.details["far"]["after_dbfs"] + 6


def test_swapped_inputs_are_detected(tmp_path, data_dir) -> None:
    parts = doctor.BoardParts(sim_near=noise(6, -20, 1), sim_far=noise(6, -20, 2), swapped=True)
    result = doctor.check_channels(context(tmp_path, data_dir, parts))
    assert result.status == "fail" and "swapped" in result.finding
    assert "exchange audio.near and audio.far" in result.fix


def test_an_unconnected_line_out_fails_the_announcement_path(tmp_path, data_dir) -> None:
    parts = doctor.BoardParts(sim_near=noise(6, -20, 1), sim_far=noise(6, -20, 2), line_out_connected=False)
    result = doctor.check_channels(context(tmp_path, data_dir, parts))
    assert result.status == "fail" and "announcement does not reach the call" in result.finding


# ------------------------------------------------------------------ gpio --

def test_gpio_pins_are_claimed_and_released(tmp_path, data_dir, parts) -> None:
    ctx = context(tmp_path, data_dir, parts)
    first, second = doctor.check_gpio(ctx), doctor.check_gpio(ctx)
    assert first.status == second.status == "pass"  # released: a second run can claim them again
    assert first.details["pins"]["gpio.hook"] == "GPIO26 (header pin 37)"
    assert first.details["off_hook"] is False


def test_a_pin_in_use_fails_with_its_role(tmp_path, data_dir) -> None:
    factory = sim_pin_factory()
    parts = doctor.BoardParts(pin_factory=factory)
    with LED(17, pin_factory=factory):
        result = doctor.check_gpio(context(tmp_path, data_dir, parts))
    factory.close()
    assert result.status == "fail"
    assert "GPIO17" in result.finding and "gpio.rec_led" in result.finding
    assert "systemctl stop linetap" in result.fix


# ------------------------------------------------------------------ hook --

def test_hook_is_skipped_unless_asked(tmp_path, data_dir, parts) -> None:
    result = doctor.check_hook(context(tmp_path, data_dir, parts))
    assert result.status == "skip" and "--hook-test" in result.finding


def test_hook_test_passes_when_the_handset_is_lifted_and_replaced(tmp_path, data_dir) -> None:
    factory = sim_pin_factory()
    hook = factory.pin(26)
    hook.drive_high()  # on the cradle (the opto pulls the input low while off hook)
    asked: list[str] = []

    def installer(step: str) -> None:
        asked.append(step)
        (hook.drive_low if step == "lift" else hook.drive_high)()

    parts = doctor.BoardParts(pin_factory=factory)
    result = doctor.check_hook(context(tmp_path, data_dir, parts, hook_test_s=5.0, ask=installer))
    factory.close()
    assert asked == ["lift", "replace"]
    assert result.status == "pass" and result.details["seen"] == ["off hook", "on hook"]


def test_hook_test_fails_when_nothing_changes(tmp_path, data_dir) -> None:
    factory = sim_pin_factory()
    factory.pin(26).drive_high()
    parts = doctor.BoardParts(pin_factory=factory)
    result = doctor.check_hook(context(tmp_path, data_dir, parts, hook_test_s=0.2, ask=lambda step: None))
    factory.close()
    assert result.status == "fail" and "not seen lifted" in result.finding
    assert 'gpio.hook_active = "high"' in result.fix


# ----------------------------------------------------------------- modem --

def test_the_simulated_modem_answers_with_caller_id(tmp_path, data_dir, parts) -> None:
    result = doctor.check_modem(context(tmp_path, data_dir, parts))
    assert result.status == "pass" and result.details["caller_id_command"] == "AT+VCID=1"


def test_a_modem_without_caller_id_is_a_warning(tmp_path, data_dir) -> None:
    answers = {command: ("OK",) for command in ("ATZ", "ATE0", "AT+FCLASS=8")}
    with SimModem(ModemProfile("no-caller-id", {**answers, "ATI": ("plain modem", "OK")})) as modem:
        result = doctor.check_modem(context(tmp_path, data_dir, doctor.BoardParts(modem=modem)))
    assert result.status == "warn" and "no caller ID" in result.finding


def test_a_modem_that_does_not_answer_ati_fails(tmp_path, data_dir) -> None:
    with SimModem("mute-ati") as modem:
        parts = doctor.BoardParts(modem=modem, modem_timeout_s=0.2)
        result = doctor.check_modem(context(tmp_path, data_dir, parts))
    assert result.status == "fail" and "ATI" in result.finding


def test_a_missing_modem_port_fails_and_no_modem_is_skipped(tmp_path, data_dir, parts) -> None:
    profile = (Path(__file__).parents[2] / "hardware/boards/pi4-v253-modem.toml").read_text()
    (tmp_path / "box.toml").write_text(profile.replace("/dev/ttyACM0", str(tmp_path / "ttyACM9")))
    missing = doctor.check_modem(context(tmp_path, data_dir, parts, '\nboard = "box.toml"\n'))
    assert missing.status == "fail" and "does not exist" in missing.finding and "line.port" in missing.fix
    none = doctor.check_modem(context(tmp_path, data_dir, parts, '\nboard = "pi4-usb-codec"\n'))
    assert none.status == "skip"


# ------------------------------------------------------------------ keys --

def test_keys_pass_once_initialised(tmp_path, with_keys, parts) -> None:
    result = doctor.check_keys(context(tmp_path, with_keys, parts))
    assert result.status == "pass" and result.details["fingerprint"] in result.finding
    assert "PRIVATE" not in json.dumps(result.details)


def test_no_store_key_warns_that_synced_recordings_stay(tmp_path, data_dir, parts) -> None:
    keys.keys_init(data_dir, str(pyrage.x25519.Identity.generate().to_public()))
    result = doctor.check_keys(context(tmp_path, data_dir, parts))
    assert result.status == "warn" and "no store key" in result.finding and "deleted on the stored ack alone" in result.finding
    assert "--store-key" in result.fix


def test_missing_keys_fail_with_keys_init(tmp_path, data_dir, parts) -> None:
    result = doctor.check_keys(context(tmp_path, data_dir, parts))
    assert result.status == "fail" and "no device signing key" in result.finding
    assert f"linetap keys init --data-dir {data_dir}" in result.fix


def test_a_key_readable_by_others_fails_with_chmod(tmp_path, with_keys, parts) -> None:
    (with_keys / "keys/device.key").chmod(0o644)
    result = doctor.check_keys(context(tmp_path, with_keys, parts))
    assert result.status == "fail" and "chmod 600" in result.fix


# ---------------------------------------------------------------- broker --

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_key, issuer: str, *, ca: bool = False, ip: str | None = None,
           days: int = 365):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip is not None:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _pem(key=None, cert=None) -> bytes:
    if cert is not None:
        return cert.public_bytes(serialization.Encoding.PEM)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TlsServer:
    """A TLS server on 127.0.0.1 that completes handshakes and hangs up: the broker's front door."""

    def __init__(self, folder: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        (folder / "server.crt").write_bytes(cert_pem)
        (folder / "server.key").write_bytes(key_pem)
        (folder / "clients-ca.pem").write_bytes(ca_pem)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "clients-ca.pem"))
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._context.load_cert_chain(str(folder / "server.crt"), str(folder / "server.key"))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.shook_hands = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-tls-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self._context.wrap_socket(conn, server_side=True):
                    self.shook_hands.set()
            except (ssl.SSLError, OSError):
                conn.close()  # a client that refused our certificate: what the wrong-CA test wants

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        assert not self._thread.is_alive()


@pytest.fixture
def pki(tmp_path: Path, data_dir: Path) -> Iterator[tuple[TlsServer, bytes]]:
    """A CA, the broker's certificate, this box's certificate in the data dir, and the server."""
    ca_key, ca_cert = _issue("test fleet CA", None, "test fleet CA", ca=True)
    server_key, server_cert = _issue("broker", ca_key, "test fleet CA", ip="127.0.0.1")
    client_key, client_cert = _issue(DEVICE_ID, ca_key, "test fleet CA")
    folder = data_dir / "keys"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "ca.pem").write_bytes(_pem(cert=ca_cert))
    (folder / "tls.crt").write_bytes(_pem(cert=client_cert))
    (folder / "tls.key").write_bytes(_pem(client_key))
    (folder / "tls.key").chmod(0o600)
    server = TlsServer(tmp_path, _pem(cert=ca_cert), _pem(cert=server_cert), _pem(server_key))
    yield server, _pem(cert=ca_cert)
    server.close()


def _broker_config(port: int) -> str:
    return f'\n[sync]\nbroker = "127.0.0.1"\nport = {port}\n'


def _real_clock() -> ManualClock:
    """A clock at today's date, for certificates made today."""
    return ManualClock(start=0.0, wall_offset=datetime.datetime.now(datetime.UTC).timestamp())


def test_no_broker_is_skipped_with_why(tmp_path, data_dir, parts) -> None:
    result = doctor.check_broker(context(tmp_path, data_dir, parts))
    assert result.status == "skip" and "sync.broker is empty" in result.finding


def test_tls_to_the_broker_with_the_client_certificate_passes(tmp_path, data_dir, parts, pki) -> None:
    server, _ = pki
    result = doctor.check_broker(context(tmp_path, data_dir, parts, _broker_config(server.port),
                                         clock=_real_clock()))
    assert result.status == "pass", result
    assert result.details["server"] == {"commonName": "broker"}
    assert server.shook_hands.wait(5), "the server never completed a handshake with the client certificate"


def test_a_closed_port_fails(tmp_path, data_dir, parts, pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as spare:
        closed = spare.getsockname()[1]
    result = doctor.check_broker(context(tmp_path, data_dir, parts, _broker_config(closed), clock=_real_clock()))
    assert result.status == "fail" and "cannot reach 127.0.0.1" in result.finding


def test_a_wrong_ca_fails_the_handshake(tmp_path, data_dir, parts, pki) -> None:
    server, _ = pki
    _, other_ca = _issue("another CA", None, "another CA", ca=True)
    (data_dir / "keys/ca.pem").write_bytes(_pem(cert=other_ca))
    result = doctor.check_broker(context(tmp_path, data_dir, parts, _broker_config(server.port),
                                         clock=_real_clock()))
    assert result.status == "fail" and "not accepted" in result.finding and "sync.ca_file" in result.fix


def test_a_certificate_for_another_device_or_expired_fails(tmp_path, data_dir, parts, pki) -> None:
    server, _ = pki
    other = doctor.check_broker(context(tmp_path, data_dir, parts, _broker_config(server.port),
                                        device_id="lt-other", clock=_real_clock()))
    assert other.status == "fail" and "is not the device id 'lt-other'" in other.finding
    late = doctor.check_broker(context(tmp_path, data_dir, parts, _broker_config(server.port),
                                       clock=ManualClock(start=0.0, wall_offset=4_102_444_800.0)))  # 2100
    assert late.status == "fail" and "expired" in late.finding


# ----------------------------------------------------------- clock, disk --

def test_clock_synchronised_passes_and_unsynchronised_warns(tmp_path, data_dir, parts) -> None:
    assert doctor.check_clock(context(tmp_path, data_dir, parts)).status == "pass"
    result = doctor.check_clock(context(tmp_path, data_dir, parts, clock=ManualClock(synced=False)))
    assert result.status == "warn" and "timedatectl" in result.fix


def test_disk_space_against_min_free(tmp_path, data_dir, parts) -> None:
    mb = 1024 * 1024
    assert doctor.check_disk(context(tmp_path, data_dir, parts, disk_free=lambda p: 4096 * mb)).status == "pass"
    low = doctor.check_disk(context(tmp_path, data_dir, parts, disk_free=lambda p: 100 * mb))
    assert low.status == "fail" and "below spool.min_free_mb = 256" in low.finding
    assert doctor.check_disk(context(tmp_path, data_dir, parts, disk_free=lambda p: 300 * mb)).status == "warn"
    gone = doctor.check_disk(context(tmp_path, tmp_path / "absent", parts))
    assert gone.status == "fail" and "does not exist" in gone.finding


# ----------------------------------------------------------------- spool --

def _make_spool(data_dir: Path) -> None:
    Spool(data_dir, device_id=DEVICE_ID, clock=ManualClock(), disk_free=lambda p: 2**40).close()


def test_a_healthy_spool_passes(tmp_path, with_keys, parts) -> None:
    _make_spool(with_keys)
    result = doctor.check_spool(context(tmp_path, with_keys, parts))
    assert result.status == "pass" and "all verified" in result.finding


def test_a_damaged_spool_fails_and_quarantined_items_warn(tmp_path, with_keys, parts) -> None:
    _make_spool(with_keys)
    quarantined = with_keys / "quarantine/20260101T000000-stray-file"
    quarantined.mkdir(parents=True)
    warn = doctor.check_spool(context(tmp_path, with_keys, parts))
    assert warn.status == "warn" and "20260101T000000-stray-file" in warn.finding
    (with_keys / "spool/0190f000-0000-7000-8000-000000000000").mkdir()
    fail = doctor.check_spool(context(tmp_path, with_keys, parts))
    assert fail.status == "fail" and "orphan-recording" in fail.finding
    assert "linetap spool verify" in fail.fix


# --------------------------------------------------------- whole command --

def test_every_check_on_a_provisioned_simulated_board_passes_or_skips(tmp_path, with_keys, parts) -> None:
    _make_spool(with_keys)
    results = doctor.run_checks(context(tmp_path, with_keys, parts, disk_free=lambda p: 2**40))
    assert [r.name for r in results] == [name for name, _ in doctor.CHECKS]
    assert {r.name: r.status for r in results if r.status != "pass"} == {"hook": "skip", "broker": "skip"}
    assert doctor.exit_code(results) == 0


def test_the_command_prints_json_and_exits_1_on_a_failure(data_dir, capsys) -> None:
    code = cli.main(["doctor", "--json", "--listen", "1", "--data-dir", str(data_dir)])
    results = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [r["name"] for r in results] == [name for name, _ in doctor.CHECKS]
    assert all(set(r) == {"name", "status", "finding", "fix", "details"} for r in results)
    by_name = {r["name"]: r for r in results}
    assert by_name["config"]["details"]["board"] == "sim"
    assert by_name["keys"]["status"] == "fail" and by_name["keys"]["fix"]
    assert by_name["audio"]["status"] == by_name["gpio"]["status"] == by_name["modem"]["status"] == "pass"


def test_the_checklist_marks_each_check_and_indents_the_fix(data_dir, capsys) -> None:
    code = cli.main(["doctor", "--listen", "1", "--data-dir", str(data_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    keys_line = next(i for i, line in enumerate(lines) if line.startswith("[FAIL] keys"))
    assert lines[keys_line + 1].lstrip().startswith("fix: run `linetap keys init")
    assert lines[keys_line + 1].startswith(" " * 10)
    assert lines[-1].startswith("12 checks:")


def test_a_warning_alone_exits_0() -> None:
    results = [doctor.passed("a", "fine"), doctor.warned("b", "meh", "do this")]
    assert doctor.exit_code(results) == 0
    assert doctor.exit_code(results + [doctor.failed("c", "broken", "fix it")]) == 1
