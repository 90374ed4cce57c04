"""`localai drain MODEL --replica N [--wait S] [--force]` and `localai undrain MODEL --replica N
[--wait S]`: take one of a model's replicas out of the running gateway's rotation before its
server restarts, and put it back (gateway/http/admin.py; docs/deploy.md, "Rolling restarts").
The key: $LOCALAI_API_KEY, else the first of the config's key file named in gateway.admin_keys.

Exit: 0 done (with --wait: drained to no request in flight / serving again), 1 the wait ran out,
and the gateway's refusal (a last replica, a key that is not an admin's) as any verb's.
"""

from __future__ import annotations

import sys

from gateway.cli.ollama_verbs import Gateway, _call

# Beyond the wait itself: the gateway's answer on a busy machine.
SLACK_S = 30.0


def _describe(card: dict) -> str:
    return (f"{card['model']} replica {card['replica']} ({card.get('host', '?')} {card.get('address', '?')}): "
            f"{card.get('state', '?')}, {card.get('in_flight', 0)} in flight")


def drain_main(gateway: Gateway, model: str, replica: int, wait: float, force: bool) -> int:
    card = _call(gateway, "POST", f"/v1/admin/models/{model}/replicas/{replica}/drain",
                 {"wait": wait, "force": force}, timeout=wait + SLACK_S)
    print(f"draining {_describe(card)}")
    if wait and card.get("in_flight", 0):
        print(f"localai: still {card['in_flight']} requests in flight after {wait:g} s; it drains on", file=sys.stderr)
        return 1
    return 0


def undrain_main(gateway: Gateway, model: str, replica: int, wait: float) -> int:
    card = _call(gateway, "POST", f"/v1/admin/models/{model}/replicas/{replica}/undrain",
                 {"wait": wait}, timeout=wait + SLACK_S)
    print(f"undrained {_describe(card)}")
    if wait and card.get("state") != "ready":
        why = f" ({card['state_reason']})" if card.get("state_reason") else ""
        print(f"localai: not serving after {wait:g} s{why}; it takes requests once its health checks pass",
              file=sys.stderr)
        return 1
    return 0


def add_arguments(p, drain: bool) -> None:
    p.add_argument("model", help="the model's name or alias")
    p.add_argument("--replica", type=int, required=True, metavar="N",
                   help="the replica's number: unit NAME is 0, NAME.1 is 1 (`localai check`, GET /v1/models)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until " + ("no request is in flight on it" if drain
                                                          else "it serves (its health checks pass)"))
    if drain:
        p.add_argument("--force", action="store_true",
                       help="drain it even when it is the model's last serving replica")
