"""The appliance: call flow, consent, DSP, recorder, spool and the app that wires them.

The core modules here are sans-IO and take an injected clock; only the edge
modules build drivers and start threads: ``devices`` (the board), ``callloop``
(the call loop), ``service`` (``linetap run``), ``scripted``, ``replay`` and
``demo`` (the simulated board), ``doctor`` and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("linetap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
