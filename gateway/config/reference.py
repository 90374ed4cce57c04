"""The README's configuration reference, made from the schema (schema.py) rather than copied by hand.

Each table of the README's `gateway:`, `vllm:` and `hosts:` sections lies between marker comments
and is rendered from the model's fields: its name, its default (or `shown_default` where the value
says too little: "the name", "none") and its description.

    python -m gateway.config.reference            rewrite the tables in README.md
    python -m gateway.config.reference --check    exit 1 if README.md differs from the schema
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.config.schema import GatewaySettings, Host, VllmSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS: dict[str, type[BaseModel]] = {"gateway": GatewaySettings, "vllm": VllmSettings, "hosts": Host}


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table(model: type[BaseModel]) -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_default(field)} | {field.description or ''} |")
    return "\n".join(rows)


def _markers(section: str) -> tuple[str, str]:
    return (f"<!-- config-reference {section}: made from gateway/config/schema.py by "
            "`python -m gateway.config.reference`; edit the schema, not this table -->",
            f"<!-- /config-reference {section} -->")


def render(text: str) -> str:
    """The README's text with every reference table made anew from the schema."""
    for section, model in SECTIONS.items():
        begin, end = _markers(section)
        found = re.search(re.escape(begin) + r"\n.*?" + re.escape(end), text, re.S)
        if found is None:
            raise ValueError(f"the README has no table for `{section}:` between {begin} and {end}")
        text = f"{text[:found.start()]}{begin}\n{table(model)}\n{end}{text[found.end():]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.config.reference", description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="?", type=Path, default=README, help=f"default: {README}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs from the schema")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        made = render(text)
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 1
    if made == text:
        return 0
    if args.check:
        print(f"{args.readme}: the configuration reference differs from gateway/config/schema.py; "
              "run `python -m gateway.config.reference`", file=sys.stderr)
        return 1
    args.readme.write_text(made)
    print(f"{args.readme}: configuration reference rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
