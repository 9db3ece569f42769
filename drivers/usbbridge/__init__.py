"""The USB handset line's audio bridge: headset ⇄ box ⇄ PC, with both sides tapped for the recorder.

The box is a USB headset to the PC (a UAC2 gadget made by the image) and a
USB host to the real headset. Audio crosses between the two USB clocks with
adaptive resampling steered by each FIFO's level, and the recorder gets
near (headset mic plus consent audio) and far (what the PC plays) at the
recording rate, sample-aligned, through the ordinary codec interface.

- :mod:`.core`: :class:`BridgeCore` (sans-IO), :class:`BridgeSettings`, the stats;
- :mod:`.resampler`: :class:`FractionalResampler`, fixed or steered, band-limited;
- :mod:`.control`: :class:`RateController`, the PI loop on the FIFO level;
- :mod:`.fifo`: :class:`SampleRing`, one writer and one reader, no locks;
- :mod:`.codec`: :class:`UsbBridgeCodec`, two duplex PortAudio streams (loaded only when built);
- :mod:`.sim`: :class:`SimEndpoint`, :class:`SimRig`, :class:`SimUsbBridge`, simulated devices on
  their own clocks.
"""

from linetap.drivers.usbbridge.codec import UsbBridgeCodec
from linetap.drivers.usbbridge.control import RateController
from linetap.drivers.usbbridge.core import (
    GADGET_RATES,
    HEADSET_RATES,
    RECORDING_RATES,
    BridgeCore,
    BridgeSettings,
    BridgeStats,
    DirectionStats,
)
from linetap.drivers.usbbridge.fifo import SampleRing
from linetap.drivers.usbbridge.resampler import FractionalResampler
from linetap.drivers.usbbridge.sim import SimEndpoint, SimRig, SimUsbBridge

__all__ = [
    "GADGET_RATES", "HEADSET_RATES", "RECORDING_RATES", "BridgeCore", "BridgeSettings", "BridgeStats",
    "DirectionStats", "FractionalResampler", "RateController", "SampleRing", "SimEndpoint", "SimRig",
    "SimUsbBridge", "UsbBridgeCodec",
]
