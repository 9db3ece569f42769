"""What a config pushed by the fleet may change on a box: one table, judged against the box's own file.

A signed push proves who sent it, not that it is safe. A push is laid over
the box's local file (:func:`linetap.firmware.config.merge_pushed`); this
module then compares the result with the local file key by key and judges
every key that differs by its row in :data:`POLICY`. The local file is the
site's own decision (what the installer set for the law and the people
there); a push may tune the box within it, never undo it:

- the broker's trust anchor stays the box's own CA file: a push may move the
  box to another broker host or port, never change ``tls``, the CA, the
  client certificate or its key;
- unsynced audio is never deleted by push: ``on_full = "overwrite-oldest"``
  only from the local file, ``max_bytes`` not below what the box holds
  unsynced (unless the local file already overwrites) and never tiny;
- prompts only from the prompt folders: ``builtin:<language>`` or a file
  inside ``<data>/prompts`` (:data:`PROMPT_DIR`) or the packaged prompt
  folder, without ``..`` and without a symlink leading out;
- consent may be strengthened (announcement or warning tone on, a shorter
  tone interval, an opt-out key where the site has none, a longer opt-out
  window) or retuned (language, prompts, announcement timing), never
  weakened; every consent key that differs from the local file raises the
  ``consent-changed`` alarm and is noted in each recording's events while it
  is in force (:func:`consent_note`).

Every key of :class:`~linetap.firmware.config.Config` has a row (a test
holds the table and the schema in step), so a key added later cannot be
pushed before someone decides what a push may do with it.

Pure: no I/O. Where a pushed file path must be judged, the box's own path
resolution (``os.path.realpath``) is handed in as :attr:`BoxFacts.resolve`;
without it no file path is taken.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from linetap.firmware.config import Config, merge_pushed
from linetap.firmware.consent import BUILTIN_PREFIX
from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import MASK, parse_toml

PROMPT_DIR = "prompts"  # under the data directory: the box's own prompt folder
CONSENT_ALARM = "consent-changed"
MIB = 1024 * 1024
MIN_PUSHED_MAX_BYTES = 64 * MIB  # a pushed spool.max_bytes (other than 0, no limit) is at least this
MAX_PUSHED_MIN_FREE_MB = 4096  # a pushed spool.min_free_mb above this (and the local value) stops recording
MIN_PUSHED_BANDWIDTH = 16 * 1024  # bytes/s: the highest Opus bit rate is 16 000 bytes/s; less never catches up
MAX_TOML_DEPTH = 8  # tables and arrays nested in a pushed config (the schema has two levels)
_LANGUAGE = re.compile(r"[a-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")

Decision = Literal["allowed", "refused", "bounded"]
# (old value from the local file, pushed value, the local config, what the box knows) → why refused, or None
Check = Callable[[Any, Any, Config, "BoxFacts"], "str | None"]


@dataclass(frozen=True)
class BoxFacts:
    """What a judgement needs from the box beyond the two configs."""

    data_dir: Path | None = None  # None: only the packaged prompts are inside the prompt folders
    unsynced_bytes: int | None = None  # audio held not yet at the centre; None: not known (start-up)
    # Follows symbolic links on the box (os.path.realpath); None: no pushed file path is accepted.
    resolve: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Rule:
    """One row of :data:`POLICY`."""

    decision: Decision
    what: str  # the rule in words, for the docs and for a refusal
    check: Check | None = None  # for "bounded": why a value is refused, or None
    guarded: bool = False  # consent or security: logged at WARNING
    alarm: str | None = None  # raised while a pushed value differs from the local file's


@dataclass(frozen=True)
class Change:
    """A key whose pushed value differs from the local file's."""

    key: str
    old: Any
    new: Any
    rule: Rule

    def shown(self) -> str:
        return f"{self.key} {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class Verdict:
    changes: tuple[Change, ...]
    refusals: tuple[str, ...]  # one line per refused key: what and why


# ------------------------------------------------------------------ checks --

def _not_off(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    return None if new or not old else "a push may turn it on, not off; only the box's own file turns it off"


def _not_longer(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    return None if new <= old else f"a push may shorten it, not lengthen it beyond the box's own {old!r}"


def _not_shorter(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    return None if new >= old else f"a push may lengthen it, not shorten it below the box's own {old!r}"


def _not_quieter(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    return None if new >= old else f"a push may not make it quieter than the box's own {old!r} dBFS"


def _opt_out_added(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    if old == "":
        return None
    return (f"callers are told to press {old!r} to refuse recording; a push may add an opt-out key where "
            "the box's own file has none, never remove or change it")


def _broker(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    if new == "":
        return "an empty broker would cut the box off from the fleet for good; set it in the box's own file"
    return None  # tls, ca_file, cert_file and key_file stay the box's own: the same CA must vouch for it


def _on_full(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    if new == "overwrite-oldest":
        return ("it deletes unsynced recordings when the spool is full; only the box's own file may "
                "choose that")
    return None


def _max_bytes(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    if new == 0:
        return None
    if new < MIN_PUSHED_MAX_BYTES:
        return f"a pushed limit is 0 (no limit) or at least {MIN_PUSHED_MAX_BYTES} bytes"
    held = facts.unsynced_bytes
    if held is not None and new < held and local.spool.on_full != "overwrite-oldest":
        return (f"the box holds {held} bytes not yet synced; a smaller limit stops recording, and only the "
                "box's own file may trade unsynced calls for space (on_full = \"overwrite-oldest\")")
    return None


def _min_free(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    limit = max(old, MAX_PUSHED_MIN_FREE_MB)
    return None if new <= limit else f"a pushed free-space floor is at most {limit} MB"


def _bandwidth(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    if new == 0 or new >= MIN_PUSHED_BANDWIDTH:
        return None
    return (f"a pushed upload cap is 0 (no cap) or at least {MIN_PUSHED_BANDWIDTH} bytes/s, so that "
            "uploads keep up with recording")


def _prompts(old: Any, new: Any, local: Config, facts: BoxFacts) -> str | None:
    problems = [f"{language} = {_show(location)}: {problem}"
                for language, location in sorted(new.items())
                if old.get(language) != location
                and (problem := prompt_problem(location, facts.data_dir, facts.resolve)) is not None]
    return "; ".join(problems) or None


def prompt_folders(data_dir: Path | None) -> tuple[Path, ...]:
    """The folders a pushed prompt may come from: the packaged one and ``<data>/prompts``."""
    packaged = Path(str(resources.files("linetap.firmware") / "data"))
    return (packaged,) if data_dir is None else (packaged, Path(data_dir) / PROMPT_DIR)


def prompt_problem(location: str, data_dir: Path | None,
                   resolve: Callable[[str], str] | None) -> str | None:
    """Why a pushed prompt location is not inside the prompt folders, or None.

    ``resolve`` follows symbolic links (the shell passes ``os.path.realpath``);
    without it a file path cannot be shown to stay inside, so it is refused.
    """
    if location.startswith(BUILTIN_PREFIX):
        language = location[len(BUILTIN_PREFIX):]
        return None if _LANGUAGE.fullmatch(language) else \
            "a built-in prompt is named by its language (letters, e.g. builtin:en)"
    folders = prompt_folders(data_dir)
    where = " or ".join(str(f) for f in folders)
    if "\0" in location or not posixpath.isabs(location):
        return f"not an absolute path; use builtin:<language> or a file in {where}"
    if ".." in Path(location).parts:
        return "'..' is not allowed in a pushed prompt path"
    normal = posixpath.normpath(location)
    for folder in folders:
        roots = {posixpath.normpath(folder)} | ({resolve(str(folder))} if resolve is not None else set())
        if any(_inside(normal, root) for root in roots):
            if resolve is None:
                return ("a file path cannot be checked here (no view of the box's file system); "
                        "use builtin:<language>")
            if _inside(resolve(normal), resolve(str(folder))):
                return None
            return f"resolves through a symbolic link to outside {folder}"
    return f"not inside the prompt folders; use builtin:<language> or a file in {where}"


def _inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


# ------------------------------------------------------------------- table --

_ANYTHING = Rule("allowed", "any value the schema accepts")
_SECURITY = "keeps the box's own TLS trust anchor and identity"


def _consent(what: str, check: Check | None = None) -> Rule:
    return Rule("bounded" if check else "allowed", what, check, guarded=True, alarm=CONSENT_ALARM)


POLICY: dict[str, Rule] = {
    "device": Rule("refused", "each box's own id and board"),
    "audio.rate": _ANYTHING,
    "audio.block_ms": _ANYTHING,
    "audio.queue_blocks": _ANYTHING,
    "controls.long_press_s": _ANYTHING,
    "consent.announce": _consent("on, never off", _not_off),
    "consent.announce_when": _consent("connect or far-speech"),
    "consent.far_speech_wait_s": _consent("not longer than the local value", _not_longer),
    "consent.language": _consent("any language with a prompt"),
    "consent.prompts": _consent("builtin:<language> or a file in <data>/prompts or the packaged prompts",
                                _prompts),
    "consent.prompt_level_dbfs": _consent("not quieter than the local value", _not_quieter),
    "consent.max_prompt_s": _ANYTHING,
    "consent.warning_tone": _consent("on, never off", _not_off),
    "consent.warning_interval_s": _consent("not longer than the local value", _not_longer),
    "consent.warning_level_dbfs": _consent("not quieter than the local value", _not_quieter),
    "consent.opt_out_key": _consent("added where the local file has none; never removed or changed",
                                    _opt_out_added),
    "consent.opt_out_window_s": _consent("not shorter than the local value", _not_shorter),
    "calls.ring_timeout_s": _ANYTHING,
    "calls.hangup_grace_s": _ANYTHING,
    "calls.caller_id_max_age_s": _ANYTHING,
    "calls.vad_threshold_db": _ANYTHING,
    "calls.vad_min_level_dbfs": _ANYTHING,
    "calls.vad_hangover_s": _ANYTHING,
    "calls.start_window_s": _ANYTHING,
    "calls.end_silence_s": _ANYTHING,
    "calls.hold_min_s": _ANYTHING,
    "spool.segment_s": _ANYTHING,
    "spool.bitrate": _ANYTHING,
    "spool.keep_synced_days": Rule("allowed", "any value (only synced recordings go)"),
    "spool.max_bytes": Rule("bounded", f"0, or at least {MIN_PUSHED_MAX_BYTES} bytes and the unsynced bytes "
                                       "held (unless the local file overwrites)", _max_bytes, guarded=True),
    "spool.min_free_mb": Rule("bounded", f"at most {MAX_PUSHED_MIN_FREE_MB} MB or the local value",
                              _min_free, guarded=True),
    "spool.on_full": Rule("bounded", "stop-and-alarm only; overwrite-oldest only from the local file",
                          _on_full, guarded=True),
    "sync.broker": Rule("bounded", f"any host but empty; {_SECURITY}", _broker, guarded=True),
    "sync.port": Rule("allowed", f"any port; {_SECURITY}", guarded=True),
    "sync.tls": Rule("refused", "TLS stays as the box's own file sets it", guarded=True),
    "sync.ca_file": Rule("refused", "the box's own CA file stays the broker's trust anchor", guarded=True),
    "sync.cert_file": Rule("refused", "the box's client certificate is its own", guarded=True),
    "sync.key_file": Rule("refused", "the box's client key is its own", guarded=True),
    "sync.keepalive_s": _ANYTHING,
    "sync.reconnect_max_s": _ANYTHING,
    "sync.window": _ANYTHING,
    "sync.ack_timeout_s": _ANYTHING,
    "sync.bandwidth_bytes_s": Rule("bounded", f"0 (no cap) or at least {MIN_PUSHED_BANDWIDTH} bytes/s",
                                   _bandwidth),
    "sync.telemetry_s": _ANYTHING,
    "log.level": _ANYTHING,
}


# ----------------------------------------------------------------- judging --

def key_paths(config: Config) -> dict[str, Any]:
    """Every key of ``config`` as ``section.key`` → value (``device`` as one key)."""
    paths: dict[str, Any] = {"device": config.device}
    for section in Config.model_fields:
        if section == "device":
            continue
        part = getattr(config, section)
        for name in type(part).model_fields:
            paths[f"{section}.{name}"] = getattr(part, name)
    return paths


def changes(local: Config, pushed: Config) -> tuple[Change, ...]:
    """The keys where ``pushed`` (the local file with a push over it) differs from ``local``."""
    old, new = key_paths(local), key_paths(pushed)
    refused = Rule("refused", "no rule decides what a push may do with this key")
    return tuple(Change(key, old[key], new[key], POLICY.get(key, refused))
                 for key in new if old.get(key) != new[key])


def judge(local: Config, pushed: Config, facts: BoxFacts) -> Verdict:
    """Every change a push makes to the local file, and every one the table refuses (with why)."""
    found = changes(local, pushed)
    refusals = []
    for change in found:
        rule = change.rule
        why = rule.what if rule.decision == "refused" else \
            rule.check(change.old, change.new, local, facts) if rule.decision == "bounded" and rule.check \
            else None
        if why is not None:
            refusals.append(f"{change.shown()}: refused, {why}")
    return Verdict(found, tuple(refusals))


def consent_keys(local: Config, running: Config) -> tuple[str, ...]:
    """The consent keys of ``running`` that differ from the local file (they raise :data:`CONSENT_ALARM`)."""
    return tuple(c.key for c in changes(local, running) if c.rule.alarm == CONSENT_ALARM)


def consent_note(local: Config, running: Config, version: int) -> dict[str, Any] | None:
    """The event detail every recording carries while pushed consent settings are in force, or None."""
    keys = list(consent_keys(local, running))
    if not keys:
        return None
    return {"source": "fleet", "changed": keys, "config_version": version}


def _show(value: Any) -> str:
    """A config value for a log line or a report: secrets masked, long values cut."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Mapping):
        value = dict(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def pushed_config(text: str, local: Config, *, source: str) -> Config:
    """A pushed config's TOML laid over the box's local config, validated as the box runs it.

    See :func:`linetap.firmware.config.merge_pushed`; the centre checks with
    the defaults as the local config before pushing.
    """
    return merge_pushed(local, _bounded_toml(text, source), source=source)


def _bounded_toml(text: str, source: str) -> dict[str, Any]:
    """``text`` parsed as TOML; nesting or an integer out of bounds is a ConfigError, not a crash.

    Brackets are counted before parsing (inside strings too: a config needs few), so a document
    nested thousands deep is refused without recursing.
    """
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    if deepest > MAX_TOML_DEPTH:
        raise ConfigError(f"{source}: nests tables or arrays {deepest} deep, more than {MAX_TOML_DEPTH}; "
                          "a config has sections of keys")
    try:
        data = parse_toml(text, source=source)
    except ConfigError:
        raise
    except (ValueError, RecursionError) as e:  # tomllib hands an over-long integer to int(), which refuses it
        raise ConfigError(f"{source}: holds a value out of bounds ({str(e)[:80]})") from None
    if _depth(data) > MAX_TOML_DEPTH:
        raise ConfigError(f"{source}: nests tables deeper than {MAX_TOML_DEPTH} levels; a config has "
                          "sections of keys")
    return data


def _depth(value: Any) -> int:
    """How deeply ``value``'s tables and arrays nest (dotted keys nest too), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_TOML_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
