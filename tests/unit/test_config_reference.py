"""The README's configuration reference is the schema's: defaults and meanings made from it, not copied."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import REPO


def check(readme) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.config.reference", "--check", str(readme)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_the_readme_reference_is_made_from_the_schema():
    run = check(REPO / "README.md")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""


def test_a_default_changed_by_hand_in_the_readme_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    row = "| `max_queue` | `100` | "
    assert row in text
    readme.write_text(text.replace(row, "| `max_queue` | `200` | "))
    run = check(readme)
    assert run.returncode == 1
    assert "differs from gateway/config/schema.py; run `python -m gateway.config.reference`" in run.stderr
    # Without --check it is written anew, as the schema says.
    subprocess.run([sys.executable, "-m", "gateway.config.reference", str(readme)], cwd=REPO, check=True,
                   capture_output=True, timeout=60)
    assert readme.read_text() == text


def test_every_field_of_the_referenced_sections_has_a_meaning():
    from gateway.config.reference import SECTIONS

    missing = [f"{section}.{name}" for section, model in SECTIONS.items()
               for name, field in model.model_fields.items() if not field.description]
    assert missing == []
