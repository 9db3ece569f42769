"""Hardware drivers: audio codec, GPIO panel, serial line interface. Each has a real and a simulated implementation."""
