"""The appliance: call flow, consent, DSP, recorder, spool and the app that wires them.

The core modules here are sans-IO and take an injected clock; only ``app`` and
``cli`` build drivers and start threads.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("linetap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
