"""Board profiles (TOML, validated on load), pinouts, wiring notes and bill of materials."""
