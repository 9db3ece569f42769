"""The one error tree of linetap.

Every error a user can meet is a :class:`LinetapError`. Messages say what
failed, with which value, and what to do about it. Leaf errors also subclass a
builtin where one fits, so callers can catch them either way.

This module and :mod:`linetap.firmware.clock` import nothing from the project;
they are the two foundation modules every layer (drivers and sync included)
may import.
"""


class LinetapError(Exception):
    """Base of every error linetap raises on purpose."""


class ConfigError(LinetapError, ValueError):
    """A config file or board profile is missing, malformed or inconsistent."""


class DeviceError(LinetapError):
    """A hardware device failed, is missing or misbehaves."""


class DeviceMissing(DeviceError, LookupError):
    """The device named by the board profile does not exist on this machine."""


class DeviceLost(DeviceError):
    """A device that was working went away (unplugged, driver reset)."""


class DeviceTimeout(DeviceError, TimeoutError):
    """A device did not answer in time."""


class ProtocolError(DeviceError):
    """A peer broke its protocol (for example a voice modem sent a malformed event)."""


class SpoolError(LinetapError):
    """The on-box recording spool cannot do what was asked."""


class SyncError(LinetapError):
    """Moving data to or from the central store failed."""


class AuthError(LinetapError):
    """A message or file failed authentication (signature, key, identity)."""
