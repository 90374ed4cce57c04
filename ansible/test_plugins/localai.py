"""Tests for the localai roles (`... | select('localai_hub_id')`)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "filter_plugins"))

from localai import is_hub_id  # noqa: E402


class TestModule:
    def tests(self):
        return {"localai_hub_id": is_hub_id}
