"""Render the unit templates in units/ with the roles' defaults, without Ansible.

The static tests (test_static.py) verify the rendered units with
`systemd-analyze verify` and score them with `systemd-analyze security`; the
container tier checks the units Ansible itself rendered.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"
UNITS = REPO / "units"


def _bool(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["bool"] = _bool
    env.filters["dirname"] = lambda p: str(Path(p).parent)
    return env


def role_defaults(**overrides) -> dict:
    """Every role's defaults, templated values resolved (plain string references only)."""
    raw: dict = {"playbook_dir": str(REPO / "ansible"), "ansible_managed": "Ansible managed: test render",
                 "localai_checks_plan_host": "local"}  # a fact of the plan: the config's one host
    for f in sorted(ROLES.glob("*/defaults/main.yml")):
        raw.update(yaml.safe_load(f.read_text()) or {})
    raw.update(overrides)
    env = _env()
    for _ in range(10):  # resolve nested references
        changed = False
        for key, value in list(raw.items()):
            if isinstance(value, str) and "{{" in value:
                try:
                    new = env.from_string(value).render(**raw)
                except jinja2.UndefinedError:
                    continue
                if new != value:
                    raw[key], changed = new, True
        if not changed:
            break
    return raw


def render_units(dest: Path, **overrides) -> list[Path]:
    """Render units/*.j2 into dest; returns the unit files."""
    env = _env()
    ctx = role_defaults(**overrides)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for tpl in sorted(UNITS.glob("*.j2")):
        path = dest / tpl.name.removesuffix(".j2")
        path.write_text(env.from_string(tpl.read_text()).render(**ctx))
        out.append(path)
    return out


if __name__ == "__main__":
    import sys

    for p in render_units(Path(sys.argv[1] if len(sys.argv) > 1 else "build/units")):
        print(p)
