"""The line interface: a V.253 voice modem on a serial port, real or simulated.

- :mod:`.session`: :class:`V253Line`, the modem session over pyserial (the
  protocol itself is the sans-IO :mod:`linetap.drivers.v253`);
- :mod:`.sim`: :class:`SimModem`, a scripted modem on a pty that ships with
  the package, so tests and the demo run the real session against it;
- :mod:`.profiles`: the caller-ID commands tried, and the simulated modems' answers.
"""

from linetap.drivers.line.profiles import CALLER_ID_COMMANDS, PROFILES, ModemProfile
from linetap.drivers.line.session import REOPEN_BACKOFF, V253Line
from linetap.drivers.line.sim import SimModem

__all__ = ["CALLER_ID_COMMANDS", "PROFILES", "REOPEN_BACKOFF", "ModemProfile", "SimModem", "V253Line"]
