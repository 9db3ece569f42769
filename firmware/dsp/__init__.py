"""Signal processing for the appliance: numpy arrays in, results out.

Sans-IO and clock-free: no threads, no devices, no I/O; time is sample counts
divided by the rate. Rates of 8000, 16000 and 48000 Hz (any multiple of 200 Hz
from 8000 up) are supported. Stereo blocks are (n, 2) int16, column 0 the
near end (agent), column 1 the far end (caller).

- :mod:`.dtmf`: DTMF detection to ITU-T Q.24 and masking of digits.
- :mod:`.tones`: warning tone, test tones, DTMF generation, mixing.
- :mod:`.levels`: RMS, peak, clipping, voice activity, call activity.
- :mod:`.metrics`: per-call QA metrics.
"""

from linetap.firmware.dsp.dtmf import (
    DtmfDetector,
    DtmfEvent,
    DtmfMasker,
    DtmfToneOn,
    MaskedBlock,
    MaskSpan,
)
from linetap.firmware.dsp.levels import (
    CallActivity,
    CallEnded,
    CallStarted,
    VadSettings,
    VoiceActivityDetector,
    clip_count,
    peak_dbfs,
    rms_dbfs,
)
from linetap.firmware.dsp.metrics import CallMetrics
from linetap.firmware.dsp.tones import dtmf_tone, mix, tone, warning_tone

__all__ = [
    "CallActivity", "CallEnded", "CallMetrics", "CallStarted", "DtmfDetector", "DtmfEvent",
    "DtmfMasker", "DtmfToneOn", "MaskSpan", "MaskedBlock", "VadSettings",
    "VoiceActivityDetector", "clip_count", "dtmf_tone", "mix", "peak_dbfs", "rms_dbfs", "tone",
    "warning_tone",
]
