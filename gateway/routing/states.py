"""The one state machine of a model (Backend) and of each of its replicas: their states, the
moves allowed between them (TRANSITIONS), and the one way to make a move (`move`). Every writer
(the health monitor, the lifecycle and its switches, `localai up`'s supervisor) goes through
it (Backend.set_state and note, Replica.set_state); a move the table does not allow is a bug
and raises InvalidTransition.

    LOADING   its server starts (or was found, or restarts after a crash)
    READY     it serves
    FAILED    down: health checks missed, a crash, a failed start, wake or stop
    SLEEPING  a load: on_demand model put to sleep (vLLM sleep mode); its server still runs
    WAKING    on its way back from sleep
    STOPPED   a load: on_demand model whose server is stopped; a request starts it

A replica uses LOADING, READY and FAILED: it follows its server, the lifecycle moves the model.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    # load: on_demand models out of the card (lifecycle/), and one on its way back from sleep.
    SLEEPING = "sleeping"
    STOPPED = "stopped"
    WAKING = "waking"


# States the model lifecycle sets and the health checks leave alone: a sleeping vLLM still
# answers /health, and a stopped one is meant to be unreachable.
LIFECYCLE_STATES = (State.SLEEPING, State.STOPPED, State.WAKING)

# From each state, where it may go (staying put, with a new reason, is always allowed). A server
# can crash (FAILED) or be restarted by its supervisor (LOADING) whatever the model's state.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.LOADING: frozenset({State.READY, State.FAILED, State.STOPPED}),
    State.READY: frozenset({State.FAILED, State.LOADING, State.SLEEPING, State.STOPPED}),
    # Failed: the health monitor sees it serve again, or the lifecycle tries it again (a wake, a
    # start) or puts it out.
    State.FAILED: frozenset({State.READY, State.LOADING, State.WAKING, State.SLEEPING, State.STOPPED}),
    State.SLEEPING: frozenset({State.WAKING, State.FAILED, State.LOADING}),
    State.WAKING: frozenset({State.READY, State.FAILED, State.SLEEPING}),
    State.STOPPED: frozenset({State.LOADING, State.FAILED}),
}


class InvalidTransition(RuntimeError):
    """A move the table does not allow: a bug in whoever asked for it."""


class Stateful(Protocol):
    """A model (routing.backends.Backend) or one of its replicas (routing.balancer.Replica)."""

    state: State
    reason: str | None


def allowed(old: State, new: State) -> bool:
    return new is old or new in TRANSITIONS[old]


def move(subject: Stateful, new: State, reason: str | None, what: str) -> bool:
    """Put `subject` (`what` names it in the error) in `new` state for `reason`; True if anything
    changed. Raises InvalidTransition for a move the table does not allow."""
    old = State(subject.state)
    if new is old and reason == subject.reason:
        return False
    if not allowed(old, new):
        raise InvalidTransition(f"{what}: {old.value} -> {new.value} is not a move a model makes ({reason})")
    subject.state, subject.reason = new, reason
    return True


def note(subject: Stateful, reason: str | None) -> None:
    """Why it is still where it is (a loading server's latest failed check): no move."""
    subject.reason = reason
