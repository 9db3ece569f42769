"""Board profiles: the built-in ones, the checks on any profile, and the pinout tables."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pydantic
import pytest

from linetap.firmware.board import HEADER_PIN, board_from_data, builtin_boards, load_board
from linetap.firmware.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "hardware" / "boards"
WM8960_HAT_PINS = {2, 3, 17, 18, 19, 20, 21}  # I2C, the HAT's button, I2S


def builtin_data(name: str) -> dict[str, Any]:
    return tomllib.loads((BOARDS / f"{name}.toml").read_text())


def board_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        board_from_data(data, source="desk.toml")
    return str(caught.value)


def usb_codec_with(section: str, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(builtin_data("pi4-usb-codec"))
    data[section].update(changes)
    return data


# --------------------------------------------------------------- built-ins --

def test_the_built_in_boards_ship() -> None:
    assert builtin_boards() == ["pi-zero2w-wm8960", "pi4-usb-codec", "pi4-usb-inline", "pi4-v253-modem", "sim",
                                "sim-usb-inline"]


@pytest.mark.parametrize("name", builtin_boards())
def test_built_in_board_loads_under_its_file_name(name: str) -> None:
    board = load_board(name)
    assert board.name == name
    assert board.description
    assert set(board.gpio.assigned().values()).isdisjoint(board.gpio.reserved)


def test_sim_board_is_simulated_throughout() -> None:
    board = load_board("sim")
    assert (board.audio.driver, board.gpio.pin_factory, board.line.driver) == ("sim", "mock", "sim")
    assert board.call_detect.source == "hook-gpio" and board.gpio.hook is not None


@pytest.mark.parametrize("name", ["pi4-usb-codec", "pi-zero2w-wm8960", "pi4-v253-modem"])
def test_hardware_boards_use_real_drivers(name: str) -> None:
    board = load_board(name)
    assert board.audio.driver == "sounddevice" and board.audio.device
    assert board.gpio.pin_factory == "lgpio"


def test_wm8960_board_keeps_off_the_hats_pins() -> None:
    board = load_board("pi-zero2w-wm8960")
    assert board.audio.device == "wm8960"
    assert set(board.gpio.reserved) == WM8960_HAT_PINS
    assert not set(board.gpio.assigned().values()) & WM8960_HAT_PINS


def test_modem_board_takes_calls_from_the_modem() -> None:
    board = load_board("pi4-v253-modem")
    assert board.call_detect.source == "v253"
    assert board.line.driver == "v253" and board.line.port
    assert board.gpio.hook is None


def test_board_by_path(tmp_path: Path) -> None:
    path = tmp_path / "desk.toml"
    path.write_text((BOARDS / "pi4-usb-codec.toml").read_text().replace('"USB Audio"', '"Scarlett"'))
    assert load_board(str(path)).audio.device == "Scarlett"


def test_profiles_are_frozen() -> None:
    board = load_board("sim")
    with pytest.raises(pydantic.ValidationError):
        board.gpio.rec_led = 4  # type: ignore[misc]


# ------------------------------------------------------------------ errors --

def test_unknown_name_lists_the_built_in_boards() -> None:
    with pytest.raises(ConfigError) as caught:
        load_board("pi5")
    message = str(caught.value)
    assert "no built-in board 'pi5'" in message
    assert "pi-zero2w-wm8960, pi4-usb-codec, pi4-usb-inline, pi4-v253-modem, sim, sim-usb-inline" in message


def test_missing_profile_file() -> None:
    with pytest.raises(ConfigError, match=r"/nowhere/desk\.toml: no such file; fix the path in device\.board"):
        load_board("/nowhere/desk.toml")


@pytest.mark.parametrize(("pin", "hint"), [
    (28, "use the BCM GPIO number 0..27"),
    (-1, "use the BCM GPIO number 0..27"),
    (29, "(header pin 29 is GPIO5)"),
])
def test_pin_outside_the_header(pin: int, hint: str) -> None:
    message = board_error(usb_codec_with("gpio", rec_led=pin))
    assert f"desk.toml: gpio.rec_led = {pin}: not a GPIO of the 40-pin header" in message
    assert hint in message


def test_pin_used_twice_names_both_keys_in_one_line() -> None:
    message = board_error(usb_codec_with("gpio", hook=17))
    assert message == ("desk.toml: gpio.hook = 17: GPIO17 is also gpio.rec_led; "
                       "give each role its own GPIO")


def test_pin_used_twice_inside_the_rgb_led() -> None:
    data = usb_codec_with("gpio", status_led={"red": 22, "green": 22, "blue": 24})
    assert "gpio.status_led.green = 22: GPIO22 is also gpio.status_led.red" in board_error(data)


def test_pin_reserved_by_the_board() -> None:
    data = copy.deepcopy(builtin_data("pi-zero2w-wm8960"))
    data["gpio"]["rec_led"] = 18
    assert "gpio.rec_led = 18: GPIO18 is used by the board itself (gpio.reserved); choose a free GPIO" \
        in board_error(data)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"far": 0}, "audio.far = 0: the same channel as audio.near"),
    ({"far": 2}, "audio.far = 2: no such capture channel (audio.channels = 2); use 0..1"),
    ({"near": 5, "far": 1}, "audio.near = 5: no such capture channel"),
    ({"line_out": [0, 2]}, "audio.line_out[1] = 2: no such playback channel (audio.out_channels = 2); use 0..1"),
    ({"line_out": []}, "audio.line_out = []: needs at least 1 (has 0); add the missing entries"),
    ({"line_out": [1, 1]}, "audio.line_out = [1, 1]: lists a channel twice"),
    ({"device": None}, 'audio.device: required with driver "sounddevice"'),
    ({"driver": "alsa"}, "audio.driver = 'alsa': not an allowed value; use one of 'sounddevice', 'sim', "
                         "'usb-bridge' or 'sim-usb-bridge'"),
    ({"channels": "2"}, "audio.channels = '2': must be a whole number, not a string; write it without quotes"),
])
def test_audio_checks(changes: dict[str, Any], expected: str) -> None:
    data = usb_codec_with("audio", **changes)
    if changes.get("device", "") is None:
        del data["audio"]["device"]
    assert expected in board_error(data)


def test_hook_gpio_detection_needs_a_hook_pin() -> None:
    data = copy.deepcopy(builtin_data("pi4-usb-codec"))
    del data["gpio"]["hook"]
    assert "call_detect.source = 'hook-gpio': needs a hook sense input; set gpio.hook" in board_error(data)


def test_modem_detection_needs_a_modem() -> None:
    data = usb_codec_with("call_detect", source="v253")
    assert "call_detect.source = 'v253': needs a voice modem but line.driver = 'none'" in board_error(data)


def test_modem_needs_a_port() -> None:
    data = copy.deepcopy(builtin_data("pi4-v253-modem"))
    del data["line"]["port"]
    assert 'line.port: required with driver "v253"' in board_error(data)


def test_unknown_key_in_a_profile_suggests_the_close_one() -> None:
    data = copy.deepcopy(builtin_data("pi4-usb-codec"))
    data["gpio"]["pause_buton"] = data["gpio"].pop("pause_button")
    message = board_error(data)
    assert "gpio.pause_buton = 5: unknown key; did you mean 'pause_button'?" in message
    assert "gpio.pause_button: required key is missing; add it (see hardware/README.md)" in message


def test_bad_board_name() -> None:
    data = copy.deepcopy(builtin_data("sim"))
    data["name"] = "My Board"
    assert "name = 'My Board': must be 1-64 characters of a-z, 0-9 and '-'" in board_error(data)


# ----------------------------------------------------------------- pinouts --

def test_header_map_covers_every_gpio_of_the_header_once() -> None:
    power_and_ground = {1, 2, 4, 6, 9, 14, 17, 20, 25, 30, 34, 39}
    assert sorted(HEADER_PIN) == list(range(28))
    assert sorted([*HEADER_PIN.values(), *power_and_ground]) == list(range(1, 41))


def pinout_tables() -> dict[str, list[tuple[str, int, int]]]:
    """Board name -> (role, BCM, header) rows of hardware/pinouts.md."""
    tables: dict[str, list[tuple[str, int, int]]] = {}
    board = None
    for line in (ROOT / "hardware" / "pinouts.md").read_text().splitlines():
        if heading := re.fullmatch(r"## (\S+)", line):
            board = heading.group(1)
        elif board and (row := re.fullmatch(r"\| (.+?) \| (\d+) \| (\d+) \|.*", line)):
            tables.setdefault(board, []).append((row.group(1).strip("`"), int(row.group(2)), int(row.group(3))))
    return tables


def test_pinouts_document_every_built_in_board() -> None:
    assert set(pinout_tables()) == set(builtin_boards())


@pytest.mark.parametrize("name", builtin_boards())
def test_pinout_table_matches_the_profile_and_the_header(name: str) -> None:
    board = load_board(name)
    rows = pinout_tables()[name]
    for role, bcm, header in rows:
        assert HEADER_PIN[bcm] == header, f"{name}: {role} GPIO{bcm} is header pin {HEADER_PIN[bcm]}, not {header}"
    documented = {role: bcm for role, bcm, _ in rows if role.startswith("gpio.")}
    assert documented == board.gpio.assigned()
    hat_pins = {bcm for role, bcm, _ in rows if role.startswith("HAT")}
    assert hat_pins == set(board.gpio.reserved)


def test_the_profile_example_in_the_hardware_readme_is_valid() -> None:
    readme = (ROOT / "hardware" / "README.md").read_text()
    example = next(block for block in re.findall(r"```toml\n(.*?)```", readme, re.S)
                   if block.startswith("name = "))
    board = board_from_data(tomllib.loads(example), source="hardware/README.md")
    assert board.name == "front-desk"


# ------------------------------------------------------- the USB inline board --

def usb_inline_with(section: str, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(builtin_data("pi4-usb-inline"))
    data[section].update(changes)
    return data


def test_usb_inline_board_bridges_a_headset_and_takes_calls_from_hid() -> None:
    board = load_board("pi4-usb-inline")
    assert (board.audio.driver, board.audio.headset, board.audio.gadget) == ("usb-bridge", "USB Audio",
                                                                             "UAC2_Gadget")
    assert board.call_detect.source == "hid" and board.hid.driver == "hidraw"
    assert board.hid.headset is None and board.hid.gadget == "/dev/hidg0"
    assert board.gadget is not None
    assert (board.gadget.vendor_id, board.gadget.product_id) == (0x1209, 0x0001)  # pid.codes test pair
    assert board.gadget.rates == (48000,)  # one rate: the PC cannot pick different ones per direction
    # The front panel stays on the header; no hook GPIO and no modem.
    assert board.gpio.pin_factory == "lgpio" and board.gpio.hook is None and board.line.driver == "none"


def test_simulated_usb_inline_board_mirrors_the_real_one() -> None:
    sim, real = load_board("sim-usb-inline"), load_board("pi4-usb-inline")
    assert (sim.audio.driver, sim.hid.driver, sim.gpio.pin_factory) == ("sim-usb-bridge", "sim", "mock")
    assert sim.call_detect.source == "hid" and sim.gadget == real.gadget
    assert sim.gpio.assigned() == real.gpio.assigned()


def test_other_boards_have_no_gadget_or_hid() -> None:
    for name in ("pi4-usb-codec", "pi4-v253-modem", "pi-zero2w-wm8960", "sim"):
        board = load_board(name)
        assert board.gadget is None and board.hid.driver == "none", name


@pytest.mark.parametrize(("key", "example"), [("headset", "USB Audio"), ("gadget", "UAC2_Gadget")])
def test_the_bridge_needs_both_devices(key: str, example: str) -> None:
    data = copy.deepcopy(builtin_data("pi4-usb-inline"))
    del data["audio"][key]
    assert (f'audio.{key}: required with driver "usb-bridge"; set part of its name as `linetap devices` '
            f'lists it, e.g. "{example}"') in board_error(data)


def test_bridge_devices_on_a_codec_board_are_refused() -> None:
    assert 'audio.headset = \'Jabra\': only used with driver "usb-bridge"' in board_error(
        usb_codec_with("audio", headset="Jabra"))


def test_hid_detection_needs_the_hid_driver() -> None:
    message = board_error(usb_inline_with("hid", driver="none"))
    assert "call_detect.source = 'hid': needs the headset's HID controls but hid.driver = \"none\"" in message


def test_the_bridge_needs_a_gadget_section_and_a_codec_board_none() -> None:
    data = copy.deepcopy(builtin_data("pi4-usb-inline"))
    del data["gadget"]
    assert 'gadget: required with audio.driver = "usb-bridge": add a [gadget] section' in board_error(data)
    data = copy.deepcopy(builtin_data("pi4-usb-codec"))
    data["gadget"] = {}
    assert "gadget = '[gadget]': only used by the USB inline boards" in board_error(data)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"rates": [44000]}, "gadget.rates[0] = 44000: not an allowed value"),
    ({"rates": []}, "gadget.rates = []: needs at least 1"),
    ({"rates": [48000, 48000]}, "gadget.rates = [48000, 48000]: lists a rate twice"),
    ({"vendor_id": 0x10000}, "gadget.vendor_id = 65536"),
    ({"vendor_id": 0}, "gadget.vendor_id = 0"),
])
def test_gadget_checks(changes: dict[str, Any], expected: str) -> None:
    assert expected in board_error(usb_inline_with("gadget", **changes))


def test_hid_driver_values() -> None:
    assert "hid.driver = 'usb': not an allowed value; use one of 'none', 'hidraw' or 'sim'" in board_error(
        usb_inline_with("hid", driver="usb"))
