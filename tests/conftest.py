"""Fixtures shared by every tier."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(models: list[dict], **gateway) -> Config:
    data = {"gateway": {"port": free_port(), "health_interval": 0.05, "webui": False, **gateway},
            "models": models}
    return parse_config(yaml.safe_dump(data), "test.yaml")


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a condition with a deadline (for states we can only observe, not await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
