"""USB HID telephony: a headset's hook, mute and buttons, and the box's own HID interface to the PC.

``descriptor`` parses report descriptors, ``telephony`` decodes and encodes
telephony reports, ``forward`` carries them between the headset and the PC
(all three sans-IO), ``gadget`` is the box's fixed descriptor, ``hidraw`` the
thin driver and ``sim`` a simulated headset and PC over real file descriptors.
"""

from linetap.drivers.hid.descriptor import Field, HidDescriptorError, ReportDescriptor, parse_descriptor
from linetap.drivers.hid.forward import Forwarder, Step
from linetap.drivers.hid.gadget import report_descriptor, report_length
from linetap.drivers.hid.hidraw import REOPEN_BACKOFF, HidNodes, HidTelephony, SystemNodes, find_headset
from linetap.drivers.hid.sim import SimHeadset, SimHidNodes, SimHost
from linetap.drivers.hid.telephony import TelephonyDecoder, encode_report

__all__ = ["REOPEN_BACKOFF", "Field", "Forwarder", "HidDescriptorError", "HidNodes", "HidTelephony",
           "ReportDescriptor", "SimHeadset", "SimHidNodes", "SimHost", "Step", "SystemNodes", "TelephonyDecoder",
           "encode_report", "find_headset", "parse_descriptor", "report_descriptor", "report_length"]
