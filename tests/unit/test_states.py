"""The state machine of a model and of its replicas (gateway/routing/states.py): one table of
the moves allowed, one function that makes them, and nobody else writes a state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.routing.balancer import Replica
from gateway.routing.states import TRANSITIONS, InvalidTransition, State, allowed, move, note
from tests.harness import make_config

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def backend(name: str = "m"):
    from gateway.base.observability import Metrics
    from gateway.routing.backends import Registry

    cfg = make_config([{"name": name, "model": f"/m/{name}", "port": 9001, "default": True}])
    return Registry(cfg, Metrics()).backends[name]


def test_the_table_has_a_row_for_every_state_and_names_only_states():
    assert set(TRANSITIONS) == set(State)
    for old, targets in TRANSITIONS.items():
        assert old not in targets  # staying put is always allowed, not listed
        assert targets <= set(State)


@pytest.mark.parametrize("path", [
    # sleep mode: started, put to sleep, woken, put to sleep again; a failed wake is tried again
    [State.LOADING, State.READY, State.SLEEPING, State.WAKING, State.READY, State.SLEEPING],
    [State.SLEEPING, State.WAKING, State.SLEEPING, State.FAILED, State.WAKING, State.READY],
    # stop/start: stopped at start, started on request, stopped when idle
    [State.LOADING, State.STOPPED, State.LOADING, State.READY, State.STOPPED],
    # a unit found running is checked, then kept or stopped
    [State.STOPPED, State.LOADING, State.STOPPED],
    # a crash and a restart by the supervisor, health checks missed and back
    [State.READY, State.FAILED, State.LOADING, State.READY, State.FAILED, State.READY],
    [State.SLEEPING, State.FAILED, State.LOADING],
])
def test_the_moves_the_gateway_makes_are_allowed(path):
    for old, new in zip(path, path[1:], strict=False):
        assert allowed(old, new), f"{old} -> {new}"


@pytest.mark.parametrize(("old", "new"), [
    (State.SLEEPING, State.READY),  # only through a wake (and its warm-up)
    (State.STOPPED, State.READY),  # only through a start
    (State.STOPPED, State.SLEEPING),
    (State.SLEEPING, State.STOPPED),
    (State.WAKING, State.STOPPED),
    (State.LOADING, State.WAKING),
    (State.READY, State.WAKING),
    (State.LOADING, State.SLEEPING),
])
def test_a_move_the_table_does_not_allow_raises_and_changes_nothing(old, new):
    assert not allowed(old, new)
    b = backend()
    b.state, b.reason = old, "before"
    seen = []
    b.on_change.append(seen.append)
    with pytest.raises(InvalidTransition, match=f"model m: {old.value} -> {new.value}"):
        b.set_state(new, "after")
    assert (b.state, b.reason, seen) == (old, "before", [])


def test_an_allowed_move_changes_the_model_and_tells_its_listeners():
    b = backend()
    seen = []
    b.on_change.append(lambda x: seen.append(x.state))
    b.set_state(State.READY, None)
    b.set_state(State.READY, None)  # no change: nobody is told
    b.set_state(State.SLEEPING, "asleep")
    assert seen == [State.READY, State.SLEEPING] and b.reason == "asleep"
    note(b, "still asleep")
    assert (b.state, b.reason, seen) == (State.SLEEPING, "still asleep", [State.READY, State.SLEEPING])


def test_a_replica_moves_by_the_same_table():
    r = Replica("local", "http://127.0.0.1:9001", "127.0.0.1:9001")
    r.set_state(State.READY, None)
    assert r.ready
    with pytest.raises(InvalidTransition, match="replica 127.0.0.1:9001"):
        r.set_state(State.WAKING, "no")
    assert move(r, State.FAILED, "down", "r") and not r.ready


def test_no_module_but_the_state_machine_writes_a_state():
    # An assignment whose targets include some_object.state or .reason (alone or in a tuple).
    writes = re.compile(r"^\s*(?:[\w.\[\]]+\s*,\s*)*[\w.\[\]]+\.(state|reason)\s*(?:,\s*[\w.\[\]]+\s*)*=(?!=)")
    found = [f"{p.relative_to(GATEWAY)}:{n}: {line.strip()}"
             for p in GATEWAY.rglob("*.py") if p.name != "states.py"
             for n, line in enumerate(p.read_text().splitlines(), start=1) if writes.search(line)]
    assert found == []
