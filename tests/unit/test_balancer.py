"""The balancer's choices (gateway/balancer.py), as pure logic: no servers, the clock given."""

from __future__ import annotations

from collections import Counter

from gateway.routing.balancer import BREAK_AFTER, COOL_DOWN, PROMPT_CHARS, Balancer, Replica, affinity_key


def replicas(n: int) -> list[Replica]:
    return [Replica(f"h{i}", f"http://10.0.0.{i}:8001", f"10.0.0.{i}:8001", state="ready")
            for i in range(n)]


def chat(conversation: int, turns: int) -> dict:
    """Turn `turns` of a conversation: the same system prompt as every other conversation."""
    messages = [{"role": "system", "content": "You are a coding agent. " * 20},
                {"role": "user", "content": f"task {conversation}"}]
    for t in range(1, turns):
        messages += [{"role": "assistant", "content": f"answer {t}"}, {"role": "user", "content": f"more {t}"}]
    return {"model": "m", "messages": messages}


def test_least_outstanding_takes_the_least_busy_replica():
    rs = replicas(3)
    b = Balancer(rs)
    rs[0].in_flight, rs[1].in_flight, rs[2].in_flight = 4, 1, 3
    assert [b.pick(None, 0.0) for _ in range(5)] == [rs[1]] * 5


def test_idle_replicas_share_requests_without_a_key():
    rs = replicas(3)
    b = Balancer(rs)
    assert Counter(b.pick(None, 0.0).host for _ in range(30)) == {"h0": 10, "h1": 10, "h2": 10}


def test_round_robin_ignores_load():
    rs = replicas(2)
    b = Balancer(rs, "round_robin")
    rs[0].in_flight = 50
    picks = [b.pick(affinity_key(chat(1, 1)), 0.0) for _ in range(4)]
    assert sorted(r.host for r in picks) == ["h0", "h0", "h1", "h1"]
    assert not b.affine


def test_every_turn_of_a_conversation_goes_to_one_replica_and_conversations_spread():
    rs = replicas(2)
    b = Balancer(rs)
    home = {}
    for conversation in range(200):
        for turn in range(1, 5):
            r = b.pick(affinity_key(chat(conversation, turn)), 0.0)
            assert home.setdefault(conversation, r) is r  # idle replicas: affinity always wins
    spread = Counter(r.host for r in home.values())
    assert min(spread.values()) > 70, spread  # 200 conversations over 2 replicas, by hash


def test_affinity_holds_until_its_replica_is_full():
    rs = replicas(2)
    b = Balancer(rs, capacity=4)
    key = affinity_key(chat(7, 1))
    home = b.pick(key, 0.0)
    other = rs[1 - rs.index(home)]
    # Light load never splits a conversation: its replica takes every request while it has a free slot.
    for _ in range(4):
        r = b.pick(key, 0.0)
        assert r is home
        r.in_flight += 1
    assert other.in_flight == 0
    # Full: the next goes to the least loaded replica.
    for _ in range(4):
        r = b.pick(key, 0.0)
        assert r is other
        r.in_flight += 1
    home.in_flight -= 1
    assert b.pick(key, 0.0) is home  # a freed slot brings it back


def test_a_replica_taken_out_sends_its_conversations_to_the_others_evenly():
    rs = replicas(3)
    b = Balancer(rs)
    keys = [affinity_key(chat(c, 1)) for c in range(600)]
    before = {k: b.pick(k, 0.0) for k in keys}
    rs[0].state = "failed"
    after = {k: b.pick(k, 0.0) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert all(before[k] is rs[0] for k in moved)  # only the lost replica's keys move
    assert Counter(after[k].host for k in moved).keys() == {"h1", "h2"}
    assert min(Counter(after[k].host for k in moved).values()) > len(moved) / 4


def test_breaker_opens_after_failures_in_a_row_and_half_opens_for_one_trial():
    rs = replicas(2)
    b = Balancer(rs)
    bad = rs[0]
    for i in range(BREAK_AFTER):
        assert bad.breaker(0.0) == "closed"
        assert bad.failed(0.0) is (i == BREAK_AFTER - 1)
    assert bad.breaker(0.0) == "open"
    assert {b.pick(None, 1.0).host for _ in range(10)} == {"h1"}
    # After the cool-down one request may try it; the others keep away until it answers.
    later = COOL_DOWN + 0.1
    assert bad.breaker(later) == "half-open"
    trial = [b.pick(None, later) for _ in range(4)]
    assert trial.count(bad) == 1
    bad.failed(later)  # the trial failed: open again
    assert bad.breaker(later + 1) == "open"
    bad.succeeded()  # a later trial (or health check) passed
    assert bad.breaker(later + 1) == "closed"
    assert bad in {b.pick(None, later + 1) for _ in range(4)}


def test_a_retry_never_goes_back_to_a_replica_it_tried():
    rs = replicas(3)
    b = Balancer(rs)
    key = affinity_key(chat(1, 1))
    tried = []
    for _ in range(3):
        r = b.pick(key, 0.0, tried)
        assert r not in tried
        tried.append(r)
    assert b.pick(key, 0.0, tried) is None


def test_the_conversation_key_is_its_opening_not_its_latest_turn():
    assert affinity_key(chat(1, 1)) == affinity_key(chat(1, 6))
    assert affinity_key(chat(1, 1)) != affinity_key(chat(2, 1))
    # Anthropic's top-level system and the Responses API's instructions are part of the opening.
    anthropic = {"system": "be brief", "messages": [{"role": "user", "content": "hi"}]}
    assert affinity_key(anthropic) != affinity_key({**anthropic, "system": "be long"})
    assert affinity_key({**anthropic, "messages": [*anthropic["messages"], {"role": "assistant", "content": "x"}]}) \
        == affinity_key(anthropic)
    responses = {"instructions": "be brief", "input": [{"role": "user", "content": "hi"}]}
    assert affinity_key(responses) == affinity_key(
        {**responses, "input": [*responses["input"], {"type": "function_call_output", "output": "1"}]})
    # A prompt string: its first PROMPT_CHARS characters, so a longer next turn keeps the key.
    head = "x" * PROMPT_CHARS
    assert affinity_key({"prompt": head + "turn 1"}) == affinity_key({"prompt": head + "turn 2, longer"})
    assert affinity_key({"input": head + "a"}) == affinity_key({"input": head + "b"})
    assert affinity_key({"input": [1, 2]}) is not None
    assert affinity_key({"prompt": [1, 2, 3]}) is None  # token ids: nothing to go by
