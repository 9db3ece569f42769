"""Wiring diagrams drawn from the board profiles, as plain SVG.

``python -m linetap.hardware.wiring OUTDIR`` writes ``OUTDIR/<board>.svg`` for
every built-in profile, the simulated one included (its pins mirror
``pi4-usb-codec``, and tests drive them by these numbers).

Each diagram shows the 40-pin header with every pin the profile gives a role
(and every pin it reserves for a HAT), named by role, BCM GPIO number and
header pin, next to the parts they go to: REC LED, status RGB LED, buttons,
hook sense, the audio codec (which capture channel is near, which is far,
which playback channel carries the announcement) and the voice modem.
Wires are drawn as net labels: a pin and the part terminal it goes to carry
the same label, which stays readable however the pins are spread.

The output depends on the profiles only, so the files in
``hardware/diagrams/`` can be checked for being up to date by drawing them
again and comparing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

from linetap.firmware.board import HEADER_PIN, BoardProfile, builtin_boards, load_board

GROUND_PINS = (6, 9, 14, 20, 25, 30, 34, 39)
POWER_PINS = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V"}
_GPIO_AT = {header: bcm for bcm, header in HEADER_PIN.items()}

ROW_H = 22
HEADER_TOP = 124
LEFT_COL_X = 330
RIGHT_COL_X = 356
PARTS_X = 640
PARTS_W = 400
WIDTH = PARTS_X + PARTS_W + 30
LINE_H = 17

COLOURS = {"rec": "#c62828", "status": "#6a1b9a", "pause": "#1565c0", "flag": "#00838f",
           "hook": "#2e7d32", "hat": "#9e9e9e"}


@dataclass(frozen=True)
class Net:
    """One wire: a header pin, its label there, and which part it belongs to (for its colour)."""

    header: int
    label: str
    part: str


def _nearest_ground(header: int, taken: set[int]) -> int:
    """The free ground pin closest on the header (rows first, then across)."""
    row, column = (header - 1) // 2, (header - 1) % 2
    return min((g for g in GROUND_PINS if g not in taken),
               key=lambda g: (abs((g - 1) // 2 - row) + abs((g - 1) % 2 - column), g))


def nets(profile: BoardProfile) -> list[Net]:
    """Every header pin the profile uses, with its label; each part gets its own nearby ground."""
    gpio = profile.gpio
    parts: list[tuple[str, list[tuple[int, str]]]] = [
        ("rec", [(gpio.rec_led, "REC LED")]),
        ("status", [(gpio.status_led.red, "status LED red"), (gpio.status_led.green, "status LED green"),
                    (gpio.status_led.blue, "status LED blue")]),
        ("pause", [(gpio.pause_button, "PAUSE button")]),
        ("flag", [(gpio.flag_button, "FLAG button")]),
    ]
    if gpio.hook is not None:
        parts.append(("hook", [(gpio.hook, f"hook sense (active {gpio.hook_active})")]))
    result = [Net(HEADER_PIN[pin], f"HAT: GPIO{pin}", "hat") for pin in gpio.reserved]
    grounds: set[int] = set()
    for part, pins in parts:
        for pin, label in pins:
            result.append(Net(HEADER_PIN[pin], f"{label} · GPIO{pin}", part))
        ground = _nearest_ground(HEADER_PIN[pins[0][0]], grounds)
        grounds.add(ground)
        result.append(Net(ground, f"GND · {pins[0][1].split(' ')[0]} {_part_name(part)}", part))
    return sorted(result, key=lambda net: net.header)


def _part_name(part: str) -> str:
    return {"rec": "LED", "status": "LED", "pause": "button", "flag": "button", "hook": "opto"}[part]


def _pin_xy(header: int) -> tuple[int, int]:
    row = (header - 1) // 2
    return (LEFT_COL_X if header % 2 else RIGHT_COL_X), HEADER_TOP + row * ROW_H


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", colour: str = "#212121",
          weight: str = "normal") -> str:
    return (f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" fill="{colour}" '
            f'font-weight="{weight}">{escape(text)}</text>')


def _header(profile: BoardProfile, used: dict[int, Net]) -> list[str]:
    out = [f'<rect x="{LEFT_COL_X - 14}" y="{HEADER_TOP - 14}" width="{RIGHT_COL_X - LEFT_COL_X + 28}" '
           f'height="{20 * ROW_H + 6}" rx="4" fill="#263238"/>',
           _text((LEFT_COL_X + RIGHT_COL_X) / 2, HEADER_TOP - 22, "40-pin header", size=12, anchor="middle",
                 weight="bold"),
           _text((LEFT_COL_X + RIGHT_COL_X) / 2, HEADER_TOP + 20 * ROW_H + 14,
                 "pin 1 = square pad, next to the SD card", size=10, anchor="middle", colour="#616161")]
    for header in range(1, 41):
        x, y = _pin_xy(header)
        net = used.get(header)
        fill = COLOURS[net.part] if net is not None else "#b0bec5"
        out.append(f'<circle cx="{x}" cy="{y}" r="7" fill="{fill}" stroke="#eceff1" stroke-width="1"/>')
        out.append(_text(x, y + 3.5, str(header), size=8, anchor="middle", colour="#ffffff"))
        left = header % 2 == 1
        label_x = x - 18 if left else x + 18
        anchor = "end" if left else "start"
        if net is not None:
            out.append(_text(label_x, y + 4, f"{net.label} · pin {header}", anchor=anchor,
                             colour=COLOURS[net.part], weight="bold"))
        else:
            idle = POWER_PINS.get(header) or ("GND" if header in GROUND_PINS else f"GPIO{_GPIO_AT[header]}")
            out.append(_text(label_x, y + 4, idle, size=10, anchor=anchor, colour="#9e9e9e"))
    return out


def _part(y: int, title: str, lines: list[str], colour: str) -> tuple[list[str], int]:
    height = 26 + LINE_H * len(lines)
    out = [f'<rect x="{PARTS_X}" y="{y}" width="{PARTS_W}" height="{height}" rx="6" fill="#fafafa" '
           f'stroke="{colour}" stroke-width="2"/>',
           _text(PARTS_X + 10, y + 18, title, colour=colour, weight="bold")]
    out += [_text(PARTS_X + 16, y + 18 + LINE_H * (i + 1), line, size=11) for i, line in enumerate(lines)]
    return out, y + height + 10


def _channel(index: int) -> str:
    return f"ch{index}" + {0: " (L)", 1: " (R)"}.get(index, "")


def _parts(profile: BoardProfile, nets_: list[Net]) -> tuple[list[str], int]:
    """The part boxes, and the y coordinate below the last one."""
    gpio, audio, line = profile.gpio, profile.audio, profile.line

    def pin(bcm: int) -> str:
        return f"GPIO{bcm} (pin {HEADER_PIN[bcm]})"

    def ground(part: str) -> str:
        return f"GND (pin {next(n.header for n in nets_ if n.part == part and n.label.startswith('GND'))})"

    out: list[str] = []
    y = HEADER_TOP - 30
    boxes: list[tuple[str, list[str], str]] = [
        ("REC LED (red)", [f"{pin(gpio.rec_led)} → 330 Ω–1 kΩ → anode; cathode → {ground('rec')}"],
         COLOURS["rec"]),
        ("Status LED (RGB, common cathode)",
         [f"red {pin(gpio.status_led.red)}, green {pin(gpio.status_led.green)},",
          f"blue {pin(gpio.status_led.blue)}, each through 330 Ω–1 kΩ;",
          f"common cathode → {ground('status')}"], COLOURS["status"]),
        ("PAUSE button", [f"{pin(gpio.pause_button)} ↔ {ground('pause')}; internal pull-up"], COLOURS["pause"]),
        ("FLAG button", [f"{pin(gpio.flag_button)} ↔ {ground('flag')}; internal pull-up"], COLOURS["flag"]),
    ]
    if gpio.hook is not None:
        level = "low" if gpio.hook_active == "low" else "high"
        boxes.append(("Hook sense (optocoupler)",
                      [f"collector → {pin(gpio.hook)}, emitter → {ground('hook')}",
                       f"off hook reads {level} (gpio.hook_active = \"{gpio.hook_active}\")",
                       "input side: mic bias or line loop, see wiring.md"], COLOURS["hook"]))
    else:
        boxes.append(("Hook sense", [f"no hook input: call detection is {profile.call_detect.source!r}"],
                      COLOURS["hook"]))
    if profile.gadget is not None:
        boxes += _usb_inline_boxes(profile)
    else:
        device = "simulated codec" if audio.driver == "sim" else f"{audio.device!r} ({audio.driver})"
        outs = ", ".join(_channel(c) for c in audio.line_out)
        boxes.append((f"Audio codec: {device}",
                      [f"line in {_channel(audio.near)} ← T1 ← handset mic pair: near (agent)",
                       f"line in {_channel(audio.far)} ← T2 ← earpiece pair: far (caller)",
                       f"line out {outs} → R4/R6 → T3 → C3/R5 → mic pair: announcement",
                       f"{audio.channels} capture / {audio.out_channels} playback channels"
                       + (f", opened at {audio.native_rate} Hz" if audio.native_rate else "")], "#37474f"))
    if line.driver == "v253":
        modem = [f"USB voice modem on {line.port} at {line.baudrate} baud",
                 "RJ11 splitter on the analog line (ATA FXS port); stays on hook",
                 "ring, caller ID, hook and DTMF as V.253 events"]
    elif line.driver == "sim":
        modem = ["simulated V.253 voice modem on a pty"]
    else:
        modem = ["none (line.driver = \"none\")"]
    boxes.append(("Line interface", modem, "#4e342e"))
    boxes.append(("Call detection", [f"call_detect.source = \"{profile.call_detect.source}\""], "#37474f"))
    for title, lines, colour in boxes:
        drawn, y = _part(y, title, lines, colour)
        out += drawn
    return out, y


def _usb_inline_boxes(profile: BoardProfile) -> list[tuple[str, list[str], str]]:
    """The USB inline board's parts: the bridge's two USB ends, its HID and its power."""
    audio, gadget, hid = profile.audio, profile.gadget, profile.hid
    assert gadget is not None
    simulated = audio.driver.startswith("sim")
    headset = "simulated headset" if simulated else f"headset {audio.headset!r} on a USB-A host port"
    pc = "simulated PC" if simulated else f"USB-C (dwc2, device mode) → the PC; gadget card {audio.gadget!r}"
    rates = ", ".join(f"{r / 1000:g}" for r in gadget.rates)
    return [
        (f"USB bridge ({audio.driver})",
         [f"{headset}: mic → near (agent)",
          f"{pc}: what the PC plays → far (caller)",
          "announcement and warning tone mixed into the PC's mic stream",
          f"gadget {gadget.vendor_id:04x}:{gadget.product_id:04x}, UAC2 at {rates} kHz, 16 bit"], "#37474f"),
        ("HID telephony",
         [f"headset hook switch and mute (hid.driver = \"{hid.driver}\"), PC's off-hook LED",
          f"forwarded both ways through the gadget's HID function {hid.gadget}"], "#37474f"),
        ("Power", ["5 V into header pins 2/4 and GND 6, or a PoE HAT: USB-C carries data to the PC",
                   "3 A supply: the headset draws from the Pi's USB-A port"], "#37474f"),
    ]


def diagram(profile: BoardProfile) -> str:
    """The profile's wiring diagram as an SVG document."""
    nets_ = nets(profile)
    used = {net.header: net for net in nets_}
    body = [_text(20, 28, f"linetap board {profile.name}", size=18, weight="bold"),
            _text(20, 48, profile.description, size=12, colour="#424242"),
            _text(20, 68, "Pins are BCM GPIO numbers with their header pin; the same label on a pin and "
                          "on a part is one wire.", size=10, colour="#616161"),
            _text(20, 82, "Drawn from the board profile by hardware/wiring.py: edit the profile, not this "
                          "file.", size=10, colour="#616161")]
    body += _header(profile, used)
    parts, parts_end = _parts(profile, nets_)
    body += parts
    height = max(HEADER_TOP + 20 * ROW_H + 30, parts_end + 10)
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        *body,
        "</svg>",
        "",
    ])


def write_diagrams(out_dir: Path) -> list[Path]:
    """Write ``<board>.svg`` for every built-in profile into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in builtin_boards():
        path = out_dir / f"{name}.svg"
        path.write_text(diagram(load_board(name)), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m linetap.hardware.wiring OUTDIR", file=sys.stderr)
        return 2
    for path in write_diagrams(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
