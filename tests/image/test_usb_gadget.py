"""The USB inline board's gadget (firmware/usbgadget.py) made in a fake configfs folder.

configfs is a plain folder here: the gadget's attributes become files, its
links symbolic links, and the USB device controller a folder under
``sys/class/udc``. What a real kernel does on top (refusing a value, making
the default groups) is for the bench test in hardware/bring-up.md.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from linetap.drivers.hid import gadget as hid_gadget
from linetap.firmware import usbgadget
from linetap.firmware.errors import DeviceError, DeviceMissing
from linetap.firmware.usbgadget import GadgetSpec, gadget_down, gadget_up

# Telephony headset: Usage Page (Telephony), Usage (Headset), Collection (Application),
# Hook Switch and Phone Mute as two input bits, six bits of padding, End Collection.
DESCRIPTOR = bytes.fromhex("050b0905a101092009 2f1500250175019502 8106 7506 95018103 c0".replace(" ", ""))
UDC = "fe980000.usb"


def spec(**changes) -> GadgetSpec:
    values = dict(vendor_id=0x1209, product_id=0x0001, serial="lt-0a1b2c3d", rates=(48000, 16000),
                  hid_descriptor=DESCRIPTOR, hid_report_length=1)
    values.update(changes)
    return GadgetSpec(**values)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / usbgadget.CONFIGFS).mkdir(parents=True)
    (tmp_path / usbgadget.UDC_CLASS / UDC).mkdir(parents=True)
    (tmp_path / usbgadget.UDC_CLASS / UDC / "state").write_text("not attached\n")
    return tmp_path


def read(root: Path, attribute: str) -> str:
    return (usbgadget.gadget_dir(root) / attribute).read_text().strip()


def test_the_gadget_has_our_names_and_ids_and_is_bound(root: Path) -> None:
    assert gadget_up(root, spec()) == UDC
    assert (read(root, "idVendor"), read(root, "idProduct")) == ("0x1209", "0x0001")
    assert read(root, "strings/0x409/manufacturer") == "linetap"
    assert read(root, "strings/0x409/product") == "linetap inline headset"
    assert read(root, "strings/0x409/serialnumber") == "lt-0a1b2c3d"
    assert read(root, "UDC") == UDC
    assert usbgadget.bound_controller(root) == UDC


def test_uac2_both_ways_at_the_profiles_rates_16_bit_mono(root: Path) -> None:
    gadget_up(root, spec())
    for direction in ("c", "p"):  # what the PC plays, what the PC records
        assert read(root, f"functions/uac2.usb0/{direction}_srate") == "48000,16000"
        assert read(root, f"functions/uac2.usb0/{direction}_ssize") == "2"
        assert read(root, f"functions/uac2.usb0/{direction}_chmask") == "1"


def test_hid_function_carries_the_descriptor_byte_for_byte(root: Path) -> None:
    gadget_up(root, spec())
    hid = usbgadget.gadget_dir(root) / "functions" / "hid.usb0"
    assert (hid / "report_desc").read_bytes() == DESCRIPTOR
    assert (hid / "report_length").read_text() == "1\n"


def test_both_functions_are_linked_into_the_configuration(root: Path) -> None:
    gadget_up(root, spec())
    config = usbgadget.gadget_dir(root) / "configs" / "c.1"
    for function in ("uac2.usb0", "hid.usb0"):
        assert (config / function).is_symlink()
        assert (config / function).resolve() == usbgadget.gadget_dir(root) / "functions" / function
    assert read(root, "configs/c.1/bmAttributes") == "0xc0"  # self-powered: the PC's port feeds nothing


def test_up_twice_leaves_a_bound_gadget_alone(root: Path) -> None:
    gadget_up(root, spec())
    marker = usbgadget.gadget_dir(root) / "strings" / "0x409" / "serialnumber"
    marker.write_text("kept\n")
    assert gadget_up(root, spec(serial="other")) == UDC
    assert marker.read_text() == "kept\n"


def test_a_half_made_gadget_is_made_again(root: Path) -> None:
    gadget_up(root, spec())
    (usbgadget.gadget_dir(root) / "UDC").write_text("\n")  # unbound, e.g. a run stopped half way
    gadget_up(root, spec(serial="lt-new"))
    assert read(root, "strings/0x409/serialnumber") == "lt-new" and read(root, "UDC") == UDC


def test_down_removes_everything_and_is_safe_twice(root: Path) -> None:
    gadget_up(root, spec())
    assert gadget_down(root) is True
    assert not usbgadget.gadget_dir(root).exists()
    assert list((root / usbgadget.CONFIGFS).iterdir()) == []
    assert gadget_down(root) is False
    assert gadget_up(root, spec()) == UDC  # and it comes back


def test_no_controller_says_how_to_put_usb_c_in_device_mode(root: Path) -> None:
    (root / usbgadget.UDC_CLASS / UDC / "state").unlink()
    (root / usbgadget.UDC_CLASS / UDC).rmdir()
    with pytest.raises(DeviceMissing, match=r"no USB device controller .*dtoverlay=dwc2,dr_mode=peripheral"):
        gadget_up(root, spec())
    assert not usbgadget.gadget_dir(root).exists()


def test_no_configfs_says_to_load_libcomposite(tmp_path: Path) -> None:
    with pytest.raises(DeviceMissing, match=r"modprobe libcomposite"):
        gadget_up(tmp_path, spec())


def test_a_kernel_with_one_rate_per_direction_gets_the_first(root: Path, monkeypatch) -> None:
    real_put = usbgadget._put

    def kernel_before_5_19(path: Path, value: bytes) -> None:
        if path.name.endswith("_srate") and b"," in value:
            raise OSError(errno.EINVAL, "Invalid argument")
        real_put(path, value)

    monkeypatch.setattr(usbgadget, "_put", kernel_before_5_19)
    gadget_up(root, spec())
    assert read(root, "functions/uac2.usb0/c_srate") == "48000"
    assert read(root, "functions/uac2.usb0/p_srate") == "48000"


def test_a_refused_write_names_the_attribute(root: Path) -> None:
    (root / usbgadget.CONFIGFS / "other").mkdir()
    (usbgadget.gadget_dir(root)).mkdir()
    (usbgadget.gadget_dir(root) / "UDC").mkdir()  # writing UDC now fails: a folder is in the way
    with pytest.raises(DeviceError, match=r"writing UDC failed"):
        usbgadget._write(usbgadget.gadget_dir(root) / "UDC", b"x\n", usbgadget.Write("UDC", b"x\n"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"serial": ""}, "serial number"),
    ({"serial": "x" * 127}, "serial number"),
    ({"vendor_id": 0x10000}, "do not fit 16 bits"),
    ({"hid_report_length": 65}, "reports of 1..64 bytes"),
    ({"rates": ()}, "at least one rate"),
])
def test_bad_specs_are_refused(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**changes)


# ------------------------------------------- the command the image's unit runs --

UNIT = Path(__file__).resolve().parents[2] / "image" / "systemd" / "linetap-usb-gadget.service"


def linetap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linetap.firmware.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_command_makes_the_gadget_from_the_board_profile(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "linetap.toml"
    config.write_text('[device]\nid = "lt-0a1b2c3d"\nboard = "pi4-usb-inline"\n')
    for _ in range(2):  # the unit may run twice (a restart): the second run finds it bound
        done = linetap("--config", str(config), "gadget", "up", "--root", str(root))
        assert done.returncode == 0, done.stderr
        assert f"usb gadget 1209:0001 serial lt-0a1b2c3d bound to {UDC}" in done.stdout
    assert read(root, "strings/0x409/serialnumber") == "lt-0a1b2c3d"
    hid = usbgadget.gadget_dir(root) / "functions" / "hid.usb0"
    assert (hid / "report_desc").read_bytes() == hid_gadget.report_descriptor()
    assert int((hid / "report_length").read_text()) == hid_gadget.report_length()
    done = linetap("--config", str(config), "gadget", "down", "--root", str(root))
    assert done.returncode == 0 and "usb gadget removed" in done.stdout
    assert not usbgadget.gadget_dir(root).exists()


def test_the_command_does_nothing_on_a_board_without_a_gadget(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "linetap.toml"
    config.write_text('[device]\nboard = "pi4-usb-codec"\n')
    done = linetap("--config", str(config), "gadget", "up", "--root", str(root))
    assert done.returncode == 0 and "board pi4-usb-codec has no USB gadget" in done.stdout
    assert not usbgadget.gadget_dir(root).exists()


def test_the_command_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "linetap.toml"
    config.write_text('[device]\nid = "lt-0a1b2c3d"\nboard = "pi4-usb-inline"\n')
    (tmp_path / usbgadget.CONFIGFS).mkdir(parents=True)
    done = linetap("--config", str(config), "gadget", "up", "--root", str(tmp_path))
    assert done.returncode == 1
    assert "no USB device controller" in done.stderr and "dtoverlay=dwc2,dr_mode=peripheral" in done.stderr


def test_the_unit_runs_the_command_before_the_recorder_only_where_a_controller_is() -> None:
    unit = UNIT.read_text()
    assert "ConditionDirectoryNotEmpty=/sys/class/udc" in unit
    assert "Before=linetap.service" in unit and "After=linetap-provision.service" in unit
    assert "ExecStart=/opt/linetap/venv/bin/linetap gadget up --config /etc/linetap/linetap.toml" in unit
    assert "ExecStop=/opt/linetap/venv/bin/linetap gadget down" in unit
    recipe = (UNIT.parents[1] / "build-rootfs").read_text()
    assert "linetap-usb-gadget.service" in recipe  # installed with the other units, and enabled
    assert "dtoverlay=dwc2,dr_mode=peripheral" in recipe and "modules-load=dwc2,libcomposite" in recipe
    assert "linetap-usb-gadget.service" in (UNIT.parents[1] / "image-test").read_text()
