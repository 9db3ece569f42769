"""Hardware drivers: audio codec, GPIO panel, serial line interface, USB HID telephony.

Each has a real and a simulated implementation.
"""
