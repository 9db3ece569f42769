"""The wiring diagrams in hardware/diagrams/ match the board profiles and show every pin."""

from __future__ import annotations

from pathlib import Path

import pytest

from linetap.firmware.board import HEADER_PIN, builtin_boards, load_board
from linetap.hardware import wiring

DIAGRAMS = Path(__file__).resolve().parent.parent / "hardware" / "diagrams"
REGENERATE = "regenerate them with `python -m linetap.hardware.wiring hardware/diagrams`"


def test_one_diagram_per_built_in_board() -> None:
    assert sorted(p.stem for p in DIAGRAMS.glob("*.svg")) == builtin_boards(), REGENERATE


@pytest.mark.parametrize("board", builtin_boards())
def test_diagram_is_up_to_date_with_its_profile(board: str, tmp_path: Path) -> None:
    written = {p.name: p.read_text() for p in wiring.write_diagrams(tmp_path)}
    committed = (DIAGRAMS / f"{board}.svg").read_text()
    assert committed == written[f"{board}.svg"], f"hardware/diagrams/{board}.svg is stale; {REGENERATE}"


@pytest.mark.parametrize("board", builtin_boards())
def test_every_pin_of_the_profile_is_labelled_with_its_header_pin(board: str) -> None:
    profile = load_board(board)
    svg = (DIAGRAMS / f"{board}.svg").read_text()
    pins = list(profile.gpio.assigned().values()) + list(profile.gpio.reserved)
    for pin in pins:
        assert f"GPIO{pin} · pin {HEADER_PIN[pin]}</text>" in svg, f"GPIO{pin} has no label on the header"
    if profile.gpio.hook is not None:
        assert f"hook sense (active {profile.gpio.hook_active}) · GPIO{profile.gpio.hook}" in svg


@pytest.mark.parametrize("board", builtin_boards())
def test_codec_channels_and_modem_are_drawn(board: str) -> None:
    profile = load_board(board)
    svg = (DIAGRAMS / f"{board}.svg").read_text()
    assert "near (agent)" in svg and "far (caller)" in svg
    if profile.gadget is not None:  # the USB inline boards: no analog channels, a bridge
        assert f"USB bridge ({profile.audio.driver})" in svg and "HID telephony" in svg
        assert "mixed into the PC&#x27;s mic stream" in svg and "PoE HAT" in svg
        return
    assert f"line in ch{profile.audio.near}" in svg
    assert f"line in ch{profile.audio.far}" in svg
    if profile.line.driver == "v253":
        assert f"USB voice modem on {profile.line.port}" in svg


def test_each_part_gets_its_own_ground_pin() -> None:
    nets = wiring.nets(load_board("pi4-usb-codec"))
    grounds = [net.header for net in nets if net.label.startswith("GND")]
    assert len(grounds) == len(set(grounds)) == 5
    assert set(grounds) <= set(wiring.GROUND_PINS)
    # The pinout tables' choices: the buttons' and the hook's nearest grounds.
    chosen = {net.label.split(" · ")[1]: net.header for net in nets if net.label.startswith("GND")}
    assert {"PAUSE button": 30, "FLAG button": 34, "hook opto": 39}.items() <= chosen.items()


def test_the_command_writes_the_diagrams(tmp_path: Path, capsys) -> None:
    assert wiring.main([str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.svg")) == builtin_boards()
    assert wiring.main([]) == 2
