"""``linetap doctor`` on the USB inline board: gadget, PC, headset, HID, and the order of the checks.

sysfs and configfs are a fake folder (``Context.root``): the gadget is made
there by the same code the image's unit runs (firmware/usbgadget.py), the
USB device controller and the headset's hidraw node are folders and files
as the kernel lays them out. The HID check runs the real HID driver against
the simulated headset and PC of the simulated USB inline board.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from linetap.drivers.hid import gadget as hid_gadget
from linetap.drivers.hid.sim import SIM_HEADSET_DESCRIPTOR
from linetap.firmware import doctor, usbgadget
from linetap.firmware.clock import ManualClock

DEVICE_ID = "lt-usb-doctor"
UDC = "fe980000.usb"
HEADSET = "Jabra EVOLVE 20 MS: USB Audio (hw:2,0)"
GADGET_CARD = "UAC2_Gadget: UAC2 PCM (hw:1,0)"
MOUSE = bytes.fromhex("05010902a1010901a100050919012903150025019503750181029505750181")  # no telephony


def spec(serial: str = DEVICE_ID) -> usbgadget.GadgetSpec:
    return usbgadget.GadgetSpec(0x1209, 0x0001, serial, (48000, 16000), hid_gadget.report_descriptor(),
                                hid_gadget.report_length())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A box's /sys with the USB-C controller in device mode and a headset on hidraw1 (a mouse on hidraw0)."""
    root = tmp_path / "root"
    (root / usbgadget.CONFIGFS).mkdir(parents=True)
    set_state(root, "configured")
    for name, descriptor in (("hidraw0", MOUSE), ("hidraw1", SIM_HEADSET_DESCRIPTOR)):
        device = root / "sys/class/hidraw" / name / "device"
        device.mkdir(parents=True)
        (device / "report_descriptor").write_bytes(descriptor)
    return root


def set_state(root: Path, state: str) -> None:
    folder = root / usbgadget.UDC_CLASS / UDC
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").write_text(state + "\n")


@pytest.fixture
def parts() -> Iterator[doctor.BoardParts]:
    made = doctor.BoardParts()
    yield made
    made.close()


def context(tmp_path: Path, root: Path, parts: doctor.BoardParts, *, board: str = "pi4-usb-inline",
            audio: list[str] | None = None, **kwargs) -> doctor.Context:
    path = tmp_path / "linetap.toml"
    path.write_text(f'[device]\nid = "{DEVICE_ID}"\nboard = "{board}"\n')
    names = [HEADSET, GADGET_CARD] if audio is None else audio
    return doctor.Context(path, tmp_path, ManualClock(), parts, say=lambda text: None, root=root,
                          audio_names=lambda: names, **kwargs)


# ---------------------------------------------------------------- gadget --

def test_a_bound_gadget_with_our_ids_passes(tmp_path, root, parts) -> None:
    usbgadget.gadget_up(root, spec())
    result = doctor.check_gadget(context(tmp_path, root, parts))
    assert result.status == "pass", result
    assert result.finding == f"gadget 0x1209:0x0001 (serial {DEVICE_ID}) bound to {UDC}"


def test_no_controller_means_usb_c_is_not_in_device_mode(tmp_path, root, parts) -> None:
    (root / usbgadget.UDC_CLASS / UDC / "state").unlink()
    (root / usbgadget.UDC_CLASS / UDC).rmdir()
    result = doctor.check_gadget(context(tmp_path, root, parts))
    assert result.status == "fail" and "not in device mode" in result.finding
    assert "dtoverlay=dwc2,dr_mode=peripheral" in result.fix and "modules-load=dwc2" in result.fix


def test_no_gadget_points_at_its_unit(tmp_path, root, parts) -> None:
    result = doctor.check_gadget(context(tmp_path, root, parts))
    assert result.status == "fail" and "no linetap gadget in configfs" in result.finding
    assert "systemctl restart linetap-usb-gadget" in result.fix and "journalctl -b -u linetap-usb-gadget" in result.fix


def test_an_unbound_gadget_fails(tmp_path, root, parts) -> None:
    usbgadget.gadget_up(root, spec())
    (usbgadget.gadget_dir(root) / "UDC").write_text("\n")
    result = doctor.check_gadget(context(tmp_path, root, parts))
    assert result.status == "fail" and "not bound" in result.finding and "UDC" in result.fix


def test_a_serial_that_is_not_the_device_id_warns(tmp_path, root, parts) -> None:
    usbgadget.gadget_up(root, spec(serial="lt-old-name"))
    result = doctor.check_gadget(context(tmp_path, root, parts))
    assert result.status == "warn" and "'lt-old-name', not the device id" in result.finding


# -------------------------------------------------------------------- pc --

@pytest.mark.parametrize(("state", "status", "words"), [
    ("configured", "pass", "the PC enumerated the box"),
    ("not attached", "fail", "no PC on the USB-C port"),
    ("suspended", "fail", "suspended"),
    ("addressed", "fail", "did not configure it"),
    ("gibberish", "fail", "the controller reports 'gibberish'"),
])
def test_the_pc_is_judged_by_the_controllers_state(tmp_path, root, parts, state, status, words) -> None:
    usbgadget.gadget_up(root, spec())
    set_state(root, state)
    result = doctor.check_pc(context(tmp_path, root, parts))
    assert (result.status, result.details["state"]) == (status, state)
    assert words in result.finding
    assert (result.fix is None) == (status == "pass")


def test_the_pc_check_waits_for_a_bound_gadget(tmp_path, root, parts) -> None:
    assert doctor.check_pc(context(tmp_path, root, parts)).status == "skip"


# --------------------------------------------------------------- headset --

def test_the_headset_is_found_by_its_telephony_usage_and_its_sound_device(tmp_path, root, parts) -> None:
    result = doctor.check_headset(context(tmp_path, root, parts))
    assert result.status == "pass", result
    assert result.details["hidraw"] == "/dev/hidraw1"  # not the mouse on hidraw0
    assert result.details["sound_device"] == HEADSET


def test_no_telephony_headset_says_to_plug_it_into_usb_a(tmp_path, root, parts) -> None:
    (root / "sys/class/hidraw/hidraw1/device/report_descriptor").write_bytes(MOUSE)
    result = doctor.check_headset(context(tmp_path, root, parts))
    assert result.status == "fail" and "no USB headset with telephony controls" in result.finding
    assert "USB-A" in result.fix


def test_a_headset_without_a_matching_sound_device_names_the_devices(tmp_path, root, parts) -> None:
    result = doctor.check_headset(context(tmp_path, root, parts, audio=[GADGET_CARD]))
    assert result.status == "fail" and "audio.headset = 'USB Audio'" in result.finding
    assert repr(GADGET_CARD) in result.fix  # the gadget's own card is not taken for the headset


# ------------------------------------------------------------------- hid --

def test_hid_reports_from_the_headset_pass(tmp_path, root) -> None:
    parts = doctor.BoardParts()
    try:
        ctx = context(tmp_path, root, parts, board="sim-usb-inline", listen_s=5.0)
        usb = parts.sim_usb(ctx.config())
        usb.headset.press("mute")  # queued on the simulated node before the driver opens it
        result = doctor.check_hid(ctx)
    finally:
        parts.close()
    assert result.status == "pass", result
    assert result.details["reports"]["headset"] >= 1


def test_no_hid_report_is_a_warning_asking_for_a_button(tmp_path, root) -> None:
    parts = doctor.BoardParts()
    try:
        result = doctor.check_hid(context(tmp_path, root, parts, board="sim-usb-inline", listen_s=0.2))
    finally:
        parts.close()
    assert result.status == "warn" and "no HID report from the headset" in result.finding
    assert "press the headset's mute" in result.fix


# ----------------------------------------------------------------- order --

def test_the_usb_checks_follow_the_modem_check_on_a_usb_board_only(tmp_path, root, parts) -> None:
    names = [name for name, _ in doctor.checks_for(context(tmp_path, root, parts))]
    assert names[names.index("modem") + 1:names.index("keys")] == ["gadget", "pc", "headset", "usb-audio", "hid",
                                                                   "drift"]
    plain = [name for name, _ in doctor.checks_for(context(tmp_path, root, parts, board="pi4-usb-codec"))]
    assert plain == [name for name, _ in doctor.CHECKS]


def test_the_simulated_board_skips_what_only_hardware_has(tmp_path, root, parts) -> None:
    ctx = context(tmp_path, root, parts, board="sim-usb-inline")
    assert [check(ctx).status for check in (doctor.check_gadget, doctor.check_pc, doctor.check_headset)] == \
        ["skip"] * 3


# ------------------------------------------------------- audio and drift --

def test_usb_audio_and_drift_on_the_simulated_bridge(tmp_path, root, parts) -> None:
    ctx = context(tmp_path, root, parts, board="sim-usb-inline", listen_s=2.0)
    audio, drift = doctor.check_usb_audio(ctx), doctor.check_drift(ctx)
    assert audio.details["seconds"] >= 2.0
    if None in audio.details["frames"].values():  # a bridge that does not count what each end sent
        assert audio.status == "skip"
    else:
        assert audio.status == "pass" and all(audio.details["frames"].values())
    # The simulated clocks are 600 ppm apart (300 each way): inside what the bridge corrects.
    assert drift.status == "pass", drift
    assert abs(drift.details["drift_ppm"]) < doctor.usb.DRIFT_WARN_PPM


def test_drift_beyond_the_bridges_range_fails(tmp_path, root, parts) -> None:
    ctx = context(tmp_path, root, parts, board="sim-usb-inline")
    stats = {"uplink": {"ppm": 1500.0}, "downlink": {"ppm": -1500.0}}
    ctx.memo["usb-bridge"] = doctor.usb._Window(3.0, {"from headset": 1, "from PC": 1}, stats)
    result = doctor.check_drift(ctx)
    assert result.status == "fail" and "+1500 ppm" in result.finding


def test_no_audio_from_the_pc_says_to_pick_the_box_in_the_softphone(tmp_path, root, parts) -> None:
    ctx = context(tmp_path, root, parts, board="sim-usb-inline")
    ctx.memo["usb-bridge"] = doctor.usb._Window(3.0, {"from headset": 48000, "from PC": 0}, {})
    result = doctor.check_usb_audio(ctx)
    assert result.status == "fail" and result.finding == "no audio from PC in 3 s"
    assert "linetap inline headset as the softphone's speaker" in result.fix


def test_every_check_runs_on_the_simulated_usb_board(tmp_path, root, parts) -> None:
    results = doctor.run_checks(context(tmp_path, root, parts, board="sim-usb-inline", listen_s=1.0,
                                        hook_test_s=5.0))
    by = {r.name: r for r in results}
    assert by["audio"].status == "pass" and by["channels"].status == "skip"
    assert by["hook"].status == "skip" and "hook switch" in by["hook"].finding and by["modem"].status == "skip"
    assert by["drift"].status == "pass"
