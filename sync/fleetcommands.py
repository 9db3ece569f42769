"""The fleet's commands, device side: one table of names, arguments, effects and results.

Sans-IO. Each command that the box runs is an action (a frozen dataclass)
carrying the :class:`Ticket` its answer needs; the box's service module
executes it and hands the outcome back to
:meth:`linetap.sync.fleet.FleetAgent.command_done`, which builds the result
with the command's row in :data:`COMMANDS`. ``restart`` needs no effect
before its answer: the agent answers, then asks for :class:`Restart`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from linetap.firmware.errors import LinetapError
from linetap.firmware.manifest import plain
from linetap.sync.fleetwire import MAX_LOG_LINE, MAX_LOG_LINES, resp_topic
from linetap.sync.signed import Malformed, WrongDevice
from linetap.sync.wire import ROOT

MAX_CORRELATION = 256  # bytes of MQTT correlation data echoed; a longer one is refused
MAX_LOG_BYTES = 64 * 1024  # keeps a logs response well inside one 128 KiB message


@dataclass(frozen=True)
class Ticket:
    """An admitted command waiting for its effect: what its signed answer needs."""

    name: str
    reply_to: str
    correlation: bytes | None
    seq: int | None
    nonce: str | None
    time_checked: bool


@dataclass(frozen=True)
class Ping:
    """Outcome: figures for the pong (uptime, recording...)."""

    ticket: Ticket


@dataclass(frozen=True)
class ShowIdentify:
    """Show the identify LED pattern for ``seconds``. Outcome: None."""

    ticket: Ticket
    seconds: int


@dataclass(frozen=True)
class PlayTestAnnouncement:
    """Play the prompt into the line without recording. Outcome: None."""

    ticket: Ticket


@dataclass(frozen=True)
class SyncNow:
    """Outcome: None."""

    ticket: Ticket


@dataclass(frozen=True)
class ReadLogs:
    """Outcome: the last ``lines`` log lines, oldest first."""

    ticket: Ticket
    lines: int


@dataclass(frozen=True)
class PurgeSynced:
    """Delete synced recordings now. Outcome: how many went."""

    ticket: Ticket


@dataclass(frozen=True)
class Restart:
    """Stop the service once the reply or report before this action is delivered."""

    reason: str


CommandAction = Ping | ShowIdentify | PlayTestAnnouncement | SyncNow | ReadLogs | PurgeSynced


@dataclass(frozen=True)
class IntArg:
    name: str
    low: int
    high: int
    default: int


@dataclass(frozen=True)
class CommandSpec:
    args: tuple[IntArg, ...]
    action: Callable[..., CommandAction] | None  # built with the ticket and the args; None: restart
    result: Callable[[Any, Any], dict[str, Any]]  # (action, outcome) → the answer's result


def _logs(action: ReadLogs, lines: Sequence[str]) -> dict[str, Any]:
    lines = [str(line)[:MAX_LOG_LINE] for line in list(lines)[-action.lines:]]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):  # the newest lines matter most
        size += len(line.encode("utf-8", "replace")) + 3
        if size > MAX_LOG_BYTES:
            break
        kept.append(line)
    kept.reverse()
    return {"lines": kept, "truncated": len(kept) < len(lines)}


COMMANDS: dict[str, CommandSpec] = {
    "ping": CommandSpec((), Ping, lambda _action, figures: {"pong": True, "figures": plain(dict(figures))}),
    "identify": CommandSpec((IntArg("seconds", 1, 600, 15),), ShowIdentify,
                            lambda action, _outcome: {"seconds": action.seconds}),
    "test-announcement": CommandSpec((), PlayTestAnnouncement, lambda _action, _outcome: {}),
    "sync-now": CommandSpec((), SyncNow, lambda _action, _outcome: {}),
    "logs": CommandSpec((IntArg("lines", 1, MAX_LOG_LINES, 100),), ReadLogs, _logs),
    "purge-synced": CommandSpec((), PurgeSynced, lambda _action, purged: {"purged": int(purged)}),
    "restart": CommandSpec((), None, lambda _action, _outcome: {"restarting": True}),
}


class Refusal(LinetapError):
    """A readable, signed command the box will not run (unknown name, bad arguments)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def command_name(topic: str, device_id: str) -> str:
    """The command a ``cmd/<name>`` topic of this box names."""
    levels = topic.split("/") if isinstance(topic, str) else []
    if len(levels) != 5 or "/".join(levels[:2]) != ROOT or levels[3] != "cmd" or not levels[4]:
        raise Malformed(f"topic {str(topic)[:200]!r} is not {ROOT}/<device>/cmd/<name>")
    if levels[2] != device_id:
        raise WrongDevice(f"command topic {topic[:200]!r} is for device {levels[2][:64]!r}, "
                          f"not {device_id!r}")
    return levels[4]


def reply_topic(response_topic: str | None, device_id: str) -> str:
    """The response topic asked for, if the box may publish there; else its own ``resp``.

    The broker lets a box write only in its own subtree, so a response
    topic elsewhere would be dropped silently.
    """
    own = resp_topic(device_id)
    if isinstance(response_topic, str) and (response_topic == own or (
            response_topic.startswith(own + "/") and len(response_topic) <= 512
            and not any(c in response_topic for c in "+#\0"))):
        return response_topic
    return own


def command_body_parts(body: Mapping[str, Any], topic_name: str) -> tuple[str, Mapping[str, Any]]:
    """The name and raw arguments of a signed command body published on ``cmd/<topic_name>``."""
    if (set(body) != {"name", "args"} or not isinstance(body["name"], str)
            or not isinstance(body["args"], dict)):
        raise Malformed("command body must be {\"name\": text, \"args\": {...}}")
    if body["name"] != topic_name:
        raise Malformed(f"command published on cmd/{topic_name[:64]} is signed as {body['name'][:64]!r}; "
                        "publish it on its own topic")
    return body["name"], body["args"]


def command_args(name: str, spec: CommandSpec, raw: Mapping[str, Any]) -> dict[str, int]:
    allowed = {arg.name: arg for arg in spec.args}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise Refusal("bad-args", f"{name}: unknown argument {unknown[0][:40]!r} (accepted: {accepted})")
    args = {}
    for arg in spec.args:
        value = raw.get(arg.name, arg.default)
        if not isinstance(value, int) or isinstance(value, bool) or not arg.low <= value <= arg.high:
            raise Refusal("bad-args", f"{name}: {arg.name} = {str(value)[:40]!r} must be a whole number "
                                      f"from {arg.low} to {arg.high}")
        args[arg.name] = value
    return args
