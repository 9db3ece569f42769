"""The audio codec: capture both sides of the call, play prompts into the line.

One interface, :class:`Codec`, two implementations side by side:

- :class:`SoundDeviceCodec`, one duplex PortAudio stream (``sounddevice``) on
  the board's USB or I2S codec;
- :class:`SimCodec`, fed from arrays or WAV files and paced by an injected
  clock, which keeps everything it played into the line for tests.

Both hand captured audio to the reader through the same :class:`CaptureRing`,
so the simulated codec exercises the code path the audio callback uses.
Neither starts a thread of its own: the real codec's callback runs on
PortAudio's audio thread, the simulated one works inside ``read()``.

A block is ``block_frames`` frames of int16, column 0 the near end (agent),
column 1 the far end (caller), whatever capture channels the board wires them to.

- :mod:`.codec`: the interface, :class:`Block`, :class:`CaptureRing`, :class:`PlaybackQueue`;
- :mod:`.device`: :class:`SoundDeviceCodec`, :func:`list_devices`, the device-rate choice;
- :mod:`.sim`: :class:`SimCodec`, shipped with the package like gpiozero's mock pins;
- :mod:`.sources`: what feeds the simulated line (:class:`WavSource`, :class:`AudioFileSource`).
"""

from linetap.drivers.audio.codec import (
    PIPELINE_RATES,
    Block,
    CaptureRing,
    Codec,
    CodecStats,
    PlaybackQueue,
)
from linetap.drivers.audio.device import (
    FALLBACK_DEVICE_RATE,
    AudioDevice,
    SoundDeviceCodec,
    choose_device_rate,
    list_devices,
)
from linetap.drivers.audio.sim import PlayRecord, SimCodec
from linetap.drivers.audio.sources import AudioFileSource, SampleSource, Silence, WavSource, tone

__all__ = [
    "FALLBACK_DEVICE_RATE", "PIPELINE_RATES", "AudioDevice", "AudioFileSource", "Block",
    "CaptureRing", "Codec", "CodecStats", "PlayRecord", "PlaybackQueue", "SampleSource",
    "Silence", "SimCodec", "SoundDeviceCodec", "WavSource", "choose_device_rate", "list_devices", "tone",
]
