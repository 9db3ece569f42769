"""An evaluation's life: every state, action and who may take it, in one table.

A reviewer (or supervisor) *submits* an evaluation; it is never edited after
that. A change is an *amendment*: a new version of the same evaluation, with
its own answers and score, the old versions kept. The evaluated agent
*acknowledges* it or *disputes* it (with a reason); a supervisor *resolves* a
dispute (with a note), by upholding it as it is or by amending it first.

:data:`TRANSITIONS` is the whole life cycle; :func:`transition` is its only
reader. The shell stores the new state only if the state it read is still
the current one (:meth:`~linetap.sync.central.qaindex.QaTables.evaluation_event`),
so two people acting at once cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("submitted", "acknowledged", "disputed", "resolved")
ACTIONS = ("submit", "amend", "acknowledge", "dispute", "resolve")
NEW = None  # the state before the first submission


@dataclass(frozen=True)
class Transition:
    state: str | None
    action: str
    to: str
    roles: frozenset[str]
    subject_only: bool = False  # only the evaluated agent may take it
    note_required: bool = False


_QA = frozenset({"reviewer", "supervisor", "admin"})
_LEAD = frozenset({"supervisor", "admin"})
_AGENT = frozenset({"agent"})

TRANSITIONS: tuple[Transition, ...] = (
    Transition(NEW, "submit", "submitted", _QA),
    Transition("submitted", "amend", "submitted", _QA),
    Transition("submitted", "acknowledge", "acknowledged", _AGENT, subject_only=True),
    Transition("submitted", "dispute", "disputed", _AGENT, subject_only=True, note_required=True),
    Transition("disputed", "amend", "submitted", _LEAD),  # the dispute upheld: the agent sees the new version
    Transition("disputed", "resolve", "resolved", _LEAD, note_required=True),
    Transition("acknowledged", "amend", "submitted", _LEAD),
    Transition("resolved", "amend", "submitted", _LEAD),
)


class NotAllowed(ValueError):
    """An action the life cycle does not allow now, or not to this user; the message says what may be done."""


def transition(state: str | None, action: str, role: str, *, is_subject: bool) -> Transition:
    """The row of :data:`TRANSITIONS` for ``action`` in ``state`` taken by ``role`` (``is_subject``: the
    user is the evaluated agent), or :class:`NotAllowed`."""
    rows = [t for t in TRANSITIONS if t.state == state and t.action == action]
    if not rows:
        can = ", ".join(t.action for t in TRANSITIONS if t.state == state) or "nothing"
        raise NotAllowed(f"an evaluation that is {state or 'not yet submitted'} cannot be {_past(action)}; "
                         f"it can be: {can}")
    row = rows[0]
    if role not in row.roles or (row.subject_only and not is_subject):
        who = "the evaluated agent" if row.subject_only else " or ".join(sorted(row.roles))
        raise NotAllowed(f"only {who} may {action} this evaluation")
    return row


def actions_for(state: str | None, role: str, *, is_subject: bool) -> list[str]:
    """The actions this user may take now (for the page's buttons)."""
    return [t.action for t in TRANSITIONS if t.state == state and role in t.roles
            and (is_subject or not t.subject_only)]


def _past(action: str) -> str:
    return {"submit": "submitted", "amend": "amended", "acknowledge": "acknowledged", "dispute": "disputed",
            "resolve": "resolved"}[action]
