"""``linetap doctor``: check each part of a box an installer can get wrong.

The checks run in a fixed order, one function each, from the table
:data:`CHECKS`. Each takes a :class:`Context` (config file, data dir, clock,
the :class:`BoardParts` that builds the devices) and returns one
:class:`CheckResult`: a status (``pass``, ``warn``, ``fail``, ``skip``), a
one-line finding and, on ``warn`` and ``fail``, the fix: which file or key,
which command, which wire. A check builds only the device it needs and
closes it again, so a missing codec does not hide a GPIO mistake, and a test
can run any check alone.

- :mod:`.runner`: the table, the runner, :func:`main`, and the config check;
- :mod:`.context`: :class:`Context`, :class:`BoardParts`, the simulated tap :class:`SimTap`;
- :mod:`.audio`: audio device, signal per channel, channel order;
- :mod:`.inputs`: pins, hook toggling, modem;
- :mod:`.box`: keys, broker, clock, disk, spool;
- :mod:`.usb`: the USB inline board's gadget, PC, headset, audio both ways, HID and drift, run only there;
- :mod:`.report`: :class:`CheckResult`, the checklist and the exit code.

Doctor may run next to the service, so it never changes the spool.
Nothing here prints or logs key material or caller data: keys are named by
file and fingerprint, and the checks look at no call records.
"""

from linetap.firmware.doctor.audio import check_audio, check_channels, check_signal
from linetap.firmware.doctor.box import check_broker, check_clock, check_disk, check_keys, check_spool
from linetap.firmware.doctor.context import BoardParts, Context, HookStep, SimTap
from linetap.firmware.doctor.inputs import check_gpio, check_hook, check_modem
from linetap.firmware.doctor.report import (
    CheckResult,
    Status,
    checklist,
    exit_code,
    failed,
    passed,
    skipped,
    warned,
)
from linetap.firmware.doctor.runner import CHECKS, check_config, checks_for, main, run_checks
from linetap.firmware.doctor.usb import (USB_CHECKS, check_drift, check_gadget, check_headset, check_hid, check_pc,
                                         check_usb_audio)

__all__ = [
    "CHECKS", "USB_CHECKS", "BoardParts", "CheckResult", "Context", "HookStep", "SimTap", "Status", "check_audio",
    "check_broker", "check_channels", "check_clock", "check_config", "check_disk", "check_gpio",
    "check_hook", "check_keys", "check_modem", "check_signal", "check_spool", "checklist",
    "exit_code", "failed", "main", "passed", "run_checks", "skipped", "warned",
    "check_drift", "check_gadget", "check_headset", "check_hid", "check_pc", "check_usb_audio", "checks_for",
]
