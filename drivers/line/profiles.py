"""What the line session asks a modem, and how the simulated modems answer.

One owner for the caller-ID commands: the session tries them in this order,
and the simulated modem turns caller ID on when it accepts one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CALLER_ID_COMMANDS = ("AT+VCID=1", "AT#CID=1", "AT%CCID=1")
"""Ways to turn on formatted caller ID, in the order tried; the first answered OK is kept."""


@dataclass(frozen=True)
class ModemProfile:
    """How a simulated modem answers: command (upper case) → the lines it sends back.

    A command missing from ``answers`` gets ``ERROR``; one mapped to ``None``
    is never answered, like a modem that hangs on it.
    """

    name: str
    answers: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", MappingProxyType(dict(self.answers)))


_OK = ("OK",)
_BASICS: dict[str, tuple[str, ...] | None] = {
    "ATZ": _OK, "AT&F": _OK, "ATE0": _OK, "ATE1": _OK, "AT+FCLASS=0": _OK, "AT+FCLASS=8": _OK,
    "AT+VLS=0": _OK,
}
PROFILES: Mapping[str, ModemProfile] = MappingProxyType({profile.name: profile for profile in (
    # Conexant-style: takes AT+VCID=1 (as do Agere and US Robotics chipsets).
    ModemProfile("conexant", {**_BASICS, "ATI": ("56000", "OK"),
                              "ATI3": ("linetap simulated modem, conexant profile", "OK"),
                              "AT+VCID=1": _OK}),
    # Rockwell-style: only AT#CID=1, and no ATI3.
    ModemProfile("rockwell", {**_BASICS, "ATI": ("linetap simulated modem, rockwell profile", "OK"),
                              "AT#CID=1": _OK}),
    # Hangs on ATI: the session must time out cleanly.
    ModemProfile("mute-ati", {**_BASICS, "ATI": None, "AT+VCID=1": _OK}),
)})
