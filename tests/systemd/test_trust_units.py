"""Issue #18, defect 8, without a container: the units and the polkit rule as the roles write them.

The model servers (vLLM, and a model's own code with --trust-remote-code) ran as the gateway's
user, so they could read its key copy and start or stop every model unit through the polkit
rule. Rendered from the same templates and defaults the playbook uses: the model unit's user is
not the gateway's, is named by no polkit rule, and its view of the file system lacks the keys.
The deployed box shows the same at run time (test_trust_sysuser_tls.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402

RULE = HERE.parents[1] / "ansible" / "roles" / "localai_models" / "templates" / "localai-models.rules.j2"


def service(path: Path) -> dict[str, list[str]]:
    """[Service] of a unit: each key's values in order."""
    values: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_model_servers_run_as_a_user_of_their_own_the_polkit_rule_does_not_name(tmp_path):
    units = {p.name: p for p in render.render_units(tmp_path)}
    model, gateway = service(units["localai-model@.service"]), service(units["localai-gateway.service"])
    defaults = render.role_defaults()
    assert model["User"] != gateway["User"] == [defaults["localai_user"]]
    assert model["Group"] != gateway["Group"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    model_user = model["User"][0]
    # On the gateway's host the rule names the gateway's user; on another host, its SSH login there.
    for polkit_user in (gateway["User"][0], defaults["localai_units_user"]):
        rule = env.from_string(RULE.read_text()).render(**defaults, localai_models_polkit_user=polkit_user)
        assert re.findall(r'subject\.user !== "([^"]+)"', rule) == [polkit_user]
        assert f'"{model_user}"' not in rule  # the user (the units are named localai-model@ too)
    assert model_user != defaults["localai_units_user"]
    # The secrets the gateway keeps are not even in the model servers' view of the file system.
    hidden = " ".join(model.get("InaccessiblePaths", [])).split()
    for secret in (defaults["localai_api_key_path"], str(Path(defaults["localai_api_key_credential"]).parent),
                   defaults["localai_tls_dir"]):
        assert f"-{secret}" in hidden, (secret, hidden)
