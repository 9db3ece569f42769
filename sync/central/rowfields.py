"""Fields of a box's manifest as the index keeps them: a value of the wrong type, or text no
backend can hold, becomes None (the manifest itself is kept whole in the object store)."""

from __future__ import annotations

from typing import Any


def int_at(manifest: dict[str, Any], member: str, name: str) -> int | None:
    section = manifest.get(member)
    value = section.get(name) if isinstance(section, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text(value: Any) -> str | None:
    """A box's text for the index, or None: not a string, or holding a NUL character, which JSON allows,
    SQLite would keep and PostgreSQL cannot hold (so every backend indexes the same)."""
    return value if isinstance(value, str) and "\x00" not in value else None


def withheld(manifest: dict[str, Any]) -> str | None:
    """The box's plain reason no number came (``private``, ``out-of-area``...); anything else is dropped.

    Only a short lower-case word is taken, so no caller's number or name can reach the index unsealed.
    """
    value = manifest.get("caller_withheld")
    if not isinstance(value, str) or not 0 < len(value) <= 32 or not value.isascii():
        return None
    return value if value.replace("-", "").isalpha() and value.islower() else None
