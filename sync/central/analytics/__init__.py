"""Speech analytics at the central store: transcripts, search, script adherence, spoken card data.

Runs only at the central store (``linetap-central analyze``, the ``analytics``
extra); the box never installs or runs it. The modules, by job:

- :mod:`.config`: the ``[analytics]`` config section;
- :mod:`.engine`: the speech engine interface and the default faster-whisper engine (model pinned by hash);
- :mod:`.text`: words to searchable lines, spoken card data found and redacted (pure);
- :mod:`.adherence`: scripts in TOML and fuzzy phrase matching (pure);
- :mod:`.tables`: the index's statements (jobs with leases, results, search) on both backends;
- :mod:`.worker`: one job end to end (read, decode, silence, transcribe, store) and the worker loop;
- :mod:`.redact`: a redacted copy of a call's audio, signed by the store key;
- :mod:`.cli`: ``analyze``, ``search``, ``transcript`` and ``redact``.
"""
