"""What a check found, and how ``linetap doctor`` shows it: a checklist with the fix under each failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """What one check found; ``fix`` is set for ``warn`` and ``fail``."""

    name: str
    status: Status
    finding: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def passed(name: str, finding: str, **details: Any) -> CheckResult:
    return CheckResult(name, "pass", finding, None, details)


def warned(name: str, finding: str, fix: str, **details: Any) -> CheckResult:
    return CheckResult(name, "warn", finding, fix, details)


def failed(name: str, finding: str, fix: str, **details: Any) -> CheckResult:
    return CheckResult(name, "fail", finding, fix, details)


def skipped(name: str, why: str, **details: Any) -> CheckResult:
    return CheckResult(name, "skip", why, None, details)


MARKS: dict[Status, str] = {"pass": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}


def checklist(results: list[CheckResult]) -> str:
    """One line per check with its mark; the fix indented under a warning or failure."""
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {r.name:<{width}}  {r.finding}")
        if r.fix:
            lines.append(f"{'':>{len(MARKS['pass']) + width + 3}}fix: {r.fix}")
    counts = {status: sum(r.status == status for r in results) for status in MARKS}
    lines.append(f"{len(results)} checks: {counts['pass']} passed, {counts['warn']} warnings, "
                 f"{counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed (a warning is not a failure), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0
