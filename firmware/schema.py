"""The typed schema every config-like file of linetap is read through.

A TOML file becomes a frozen pydantic model in two steps, each of which fails
with one :class:`~linetap.firmware.errors.ConfigError` that an installer can
act on:

- :func:`read_toml` / :func:`parse_toml`: TOML syntax, reported with file,
  line and column and the offending line.
- :func:`load_model`: the schema, reported as one line per problem::

      linetap.toml: audio.rat = 16000: unknown key; did you mean 'rate'?
      linetap.toml: audio.block_ms = '20': must be a whole number, not a string; write it without quotes

Models derive from :class:`Schema`: unknown keys are refused, values are never
coerced from another type (TOML already types them, so ``rate = "16000"`` is a
mistake worth reporting), and instances are immutable. Checks that span
several keys raise :class:`Invalid` from a model validator, so they are
reported with the key paths they concern, like field errors.

Fields typed :class:`pydantic.SecretStr` never show their value: not in
reprs, not in ``model_dump(mode="json")``, not in error messages, and neither
do unknown keys that look like secrets.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from linetap.firmware.errors import ConfigError

__all__ = ["Schema", "Problem", "Invalid", "FileRefused", "load_model", "parse_toml", "read_bounded",
           "read_toml"]

MASK = "**********"
# Unknown keys whose names look like these may hold a secret typed under a wrong name.
_SECRET_WORDS = ("pass", "secret", "token", "private", "key")

_MISSING = object()  # the value of a key the file left out

# A config or board profile is a few KiB; these bounds keep a hostile one cheap to refuse.
TOML_MAX_BYTES = 256 * 1024
TOML_MAX_DEPTH = 32  # arrays and inline tables inside each other; tomllib recurses once per level

M = TypeVar("M", bound=BaseModel)


class Schema(BaseModel):
    """Base of every config section and board profile model."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Problem:
    """One cross-field problem: where (key path relative to the model), the value, what and how to fix."""

    path: tuple[str | int, ...]
    value: Any
    message: str  # "what is wrong; how to fix it"


class Invalid(ValueError):
    """Raised by model validators with every problem they found at once."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


# ------------------------------------------------------------------ TOML --

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


_TOML_NEXT = re.compile(r"""["'#\[\]{}]""")
_TOML_STRING_END = {  # from just after the opening quote(s) to just after the closing one(s)
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""', re.DOTALL),
    "'''": re.compile(r"(?:[^']|'(?!''))*'''"),
    '"': re.compile(r'(?:[^"\\\n]|\\.)*"'),
    "'": re.compile(r"[^'\n]*'"),
}


def _check_toml_depth(text: str, source: str) -> None:
    """Refuse arrays and inline tables nested deeper than TOML_MAX_DEPTH, before tomllib recurses.

    Brackets in strings and comments do not count; one pass, linear in the text.
    """
    depth = 0
    pos = 0
    while (found := _TOML_NEXT.search(text, pos)) is not None:
        char, start = found.group(), found.start()
        if char == "#":
            end = text.find("\n", start)
            pos = len(text) if end < 0 else end + 1
        elif char in "\"'":
            quote = char * 3 if text.startswith(char * 3, start) else char
            closed = _TOML_STRING_END[quote].match(text, start + len(quote))
            if closed is None:
                return  # an unclosed string: the parser reports it with its line
            pos = closed.end()
        else:
            pos = start + 1
            if char in "[{":
                depth += 1
                if depth > TOML_MAX_DEPTH:
                    line = text.count("\n", 0, start) + 1
                    raise ConfigError(f"{source}, line {line}: arrays or tables nest deeper than "
                                      f"{TOML_MAX_DEPTH} levels; a linetap file needs two at most")
            else:
                depth = max(depth - 1, 0)


def parse_toml(text: str, *, source: str, show_line: bool = True) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes a ConfigError with line and column.

    ``show_line`` adds the offending line (masked if it holds a secret). For
    a file that may be anything (a board profile path) it is False, so that an
    error never repeats what another file holds. Nesting deeper than
    :data:`TOML_MAX_DEPTH` is refused before the parser sees the text.
    """
    _check_toml_depth(text, source)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        where = _TOML_POSITION.search(reason)
        if where is None:  # "(at end of document)" and the like
            raise ConfigError(f"{source}: not valid TOML: {reason}; "
                              f"check the file's last lines for an unclosed quote or bracket") from None
        line, column = int(where.group(1)), int(where.group(2))
        reason = reason[:where.start()]
        message = (f"{source}, line {line}, column {column}: not valid TOML: {reason}; "
                   f"strings need double quotes, tables [brackets], keys 'name = value'")
        if not show_line:
            raise ConfigError(message) from None
        lines = text.splitlines()
        shown = _mask_secret_line(lines[line - 1]) if 0 < line <= len(lines) else ""
        raise ConfigError(
            f"{message}\n"
            f"    {line} | {shown}\n"
            f"    {' ' * len(str(line))} | {' ' * (column - 1)}^") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError(f"{source}: not valid TOML ({str(exc)[:100]}); "
                          "write plain numbers and strings") from None


def _mask_secret_line(line: str) -> str:
    key, equals, _ = line.partition("=")
    if equals and any(word in key.lower() for word in _SECRET_WORDS):
        return f"{key}= {MASK}"
    return line


class FileRefused(ValueError):
    """A path that is not a regular file, or a file over its size bound; the message says which."""

    def __init__(self, message: str, *, folder: bool = False) -> None:
        super().__init__(message)
        self.folder = folder


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_bounded(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``: never a device, pipe or socket, at most ``max_bytes``.

    Kind and size are judged from ``stat`` before anything is opened (opening
    some devices acts, and ``/dev/zero`` never ends); a symbolic link to a
    regular file is followed. Raises :class:`FileRefused`, or ``OSError``
    (``FileNotFoundError``, ``PermissionError``) as ``open`` would.
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise FileRefused(f"is {_file_kind(before.st_mode)}, not a regular file",
                          folder=stat.S_ISDIR(before.st_mode))
    if before.st_size > max_bytes:
        raise FileRefused(f"is {before.st_size} bytes; at most {max_bytes} are accepted")
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise FileRefused("was replaced while it was being opened; try again")
        chunks: list[bytes] = []
        size = 0
        # Ask for what stat says is there (and one byte more, to see growth), then small steps:
        # os.read allocates the whole request up front, and the bound may be megabytes.
        want = now.st_size + 1
        while size <= max_bytes and (chunk := os.read(fd, min(want, max_bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
            want = 64 * 1024
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FileRefused(f"grew past {max_bytes} bytes while it was read; at most {max_bytes} are accepted")
    return b"".join(chunks)


def read_toml(path: Path, *, missing_hint: str, show_line: bool = True) -> dict[str, Any]:
    """Read and parse a TOML file. ``missing_hint`` tells the reader what to do when it does not exist.

    Only a regular file of at most :data:`TOML_MAX_BYTES` is read, and
    refused before it is read whole; ``show_line`` as for :func:`parse_toml`.
    """
    try:
        raw = read_bounded(path, max_bytes=TOML_MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; {missing_hint}") from None
    except FileRefused as exc:
        if exc.folder:
            raise ConfigError(f"{path}: is a folder, not a file; give the path of the TOML file") from None
        raise ConfigError(f"{path}: {exc}; give the path of a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); "
                          f"check its permissions for the linetap user") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8 text; "
                          f"save the file as UTF-8") from None
    return parse_toml(text, source=str(path), show_line=show_line)


# ---------------------------------------------------------------- schema --

def load_model(model_cls: type[M], data: dict[str, Any], *, source: str,
               guide: str = "linetap.example.toml", show_unknown: bool = True) -> M:
    """Validate ``data`` as ``model_cls``. Every problem is listed in one ConfigError, one per line.

    ``source`` starts every line (the file's path); ``guide`` is where the
    fixes point to when a problem needs more than one line to explain.
    ``show_unknown`` False names unknown top-level keys without their
    values: a path that may point at any TOML file (a board profile) must
    not repeat what that file holds.
    """
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            lines.extend(_describe(model_cls, error, source, guide, show_unknown))
        raise ConfigError("\n".join(lines)) from None


def _describe(model_cls: type[BaseModel], error: Any, source: str, guide: str,
              show_unknown: bool = True) -> list[str]:
    loc = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Invalid):
        return [_line(source, model_cls, loc + p.path, p.value, p.message) for p in cause.problems]
    # An unknown top-level key says the file is not what was asked for: its values are not ours to show.
    hidden = error["type"] == "missing" or (error["type"] == "extra_forbidden" and not show_unknown
                                            and len(loc) == 1)
    value = _MISSING if hidden else error.get("input")
    return [_line(source, model_cls, loc, value, _explain(model_cls, error, guide))]


def _line(source: str, model_cls: type[BaseModel], loc: tuple[Any, ...], value: Any, message: str) -> str:
    path = _key_path(loc)
    if not path:
        return f"{source}: {message}"
    if value is _MISSING or value is None:  # TOML has no null: None is a key left out
        return f"{source}: {path}: {message}"
    return f"{source}: {path} = {_show(model_cls, loc, value)}: {message}"


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _show(model_cls: type[BaseModel], loc: tuple[Any, ...], value: Any) -> str:
    if _is_secret(model_cls, loc) or isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def _is_secret(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return False
    annotation = _annotation_at(model_cls, names)
    if annotation is not None:
        return _mentions(annotation, SecretStr)
    # An unknown key: a secret under a mistyped name is still a secret.
    name = names[-1].lower()
    if any(word in name for word in _SECRET_WORDS):
        return True
    parent = _model_at(model_cls, names[:-1])
    if parent is None:
        return False
    match = difflib.get_close_matches(names[-1], list(parent.model_fields), n=1)
    return bool(match) and _mentions(parent.model_fields[match[0]].annotation, SecretStr)


def _explain(model_cls: type[BaseModel], error: Any, guide: str) -> str:
    """What is wrong and how to fix it, for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        return _unknown_key(model_cls, loc)
    if kind == "missing":
        return f"required key is missing; add it (see {guide})"
    quoted_number = isinstance(value, str) and _looks_numeric(value)
    if kind in ("int_type", "int_from_float"):
        if quoted_number:
            return "must be a whole number, not a string; write it without quotes"
        return f"must be a whole number, not {_kind(value)}; write e.g. 20"
    if kind == "float_type":
        if quoted_number:
            return "must be a number, not a string; write it without quotes"
        return f"must be a number, not {_kind(value)}; write e.g. 1.5"
    if kind == "bool_type":
        return f"must be true or false, not {_kind(value)}; write true or false without quotes"
    if kind == "string_type":
        return f'must be a string, not {_kind(value)}; put the value in double quotes, e.g. "value"'
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        hint = " (without quotes)" if quoted_number else ""
        return f"not an allowed value; use one of {expected}{hint}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bounds = _bounds(model_cls, loc)
        if bounds:
            return f"out of range; use a value {' and '.join(bounds)}"
        bound = next(iter(ctx.values()))
        relation = {"greater_than_equal": ">=", "greater_than": ">",
                    "less_than_equal": "<=", "less_than": "<"}[kind]
        return f"out of range; use a value {relation} {bound}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a table, not {_kind(value)}; write it as a [section] with keys under it"
    if kind in ("tuple_type", "list_type"):
        return f"must be an array, not {_kind(value)}; write it in brackets, e.g. [0, 1]"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} (has {ctx['actual_length']}); add the missing entries"
    if kind == "value_error":
        # Field validators write their own "what; how to fix" message.
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}; see {guide}"


def _bounds(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Both ends of a field's range (">= 1", "<= 120"), so one error shows the whole range."""
    names = [part for part in loc if isinstance(part, str)]
    parent = _model_at(model_cls, names[:-1])
    if parent is None or not names or names[-1] not in parent.model_fields:
        return []
    out = []
    for item in parent.model_fields[names[-1]].metadata:
        for attr, relation in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                out.append(f"{relation} {getattr(item, attr)}")
    return out


def _unknown_key(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    names = [part for part in loc if isinstance(part, str)]
    parent = _model_at(model_cls, names[:-1])
    known = sorted(parent.model_fields) if parent is not None else []
    match = difflib.get_close_matches(names[-1], known, n=1, cutoff=0.6)
    if match:
        return f"unknown key; did you mean {match[0]!r}?"
    where = f"in [{'.'.join(names[:-1])}]" if len(names) > 1 else "at the top level"
    return f"unknown key; remove it (keys allowed {where}: {', '.join(known)})"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", tuple: "an array", dict: "a table"}.get(type(value), type(value).__name__)


# ------------------------------------------- walking the model's fields --

def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, Annotated, tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _mentions(annotation: Any, target: type) -> bool:
    if annotation is target:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return any(_mentions(arg, target) for arg in typing.get_args(annotation))
    return False


def _model_at(model_cls: type[BaseModel], names: list[str]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model_cls
    for name in names:
        if current is None or name not in current.model_fields:
            return None
        inner = _models_in(current.model_fields[name].annotation)
        current = inner[0] if inner else None
    return current


def _annotation_at(model_cls: type[BaseModel], names: list[str]) -> Any | None:
    parent = _model_at(model_cls, names[:-1])
    if parent is None or names[-1] not in parent.model_fields:
        return None
    return parent.model_fields[names[-1]].annotation
