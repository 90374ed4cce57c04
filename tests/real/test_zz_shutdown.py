"""Runs last in the real tier: stopping `localai up` leaves no process behind."""

import pytest

pytestmark = pytest.mark.real


def test_sigterm_stops_every_child(real_stack):
    pid = real_stack.vllm_pid("coder")
    leftovers = real_stack.stop()
    assert leftovers == set(), f"processes outlived localai up: {sorted(leftovers)}"
    assert pid not in leftovers
