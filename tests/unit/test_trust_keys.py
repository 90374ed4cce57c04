"""Issue 18, defect 1: no key file, key line or reload can switch authentication off.

A key source that is configured (gateway.api_key_file, $LOCALAI_API_KEY) and yields no key
stops the start; a reload that would leave no key changes nothing and says so at ERROR; the
key file's syntax has no spelling that means two things, and every refusal names FILE:LINE,
never the key."""

from __future__ import annotations

import logging
import os

import aiohttp
import pytest
import yaml

from gateway.app.reload import RELOADER
from gateway.config.schema import ConfigError
from gateway.keys.keyring import load_keyring, parse_key_file
from gateway.plan.validate import load_config
from tests.fakebackend import FakeBackend
from tests.harness import free_port, localai, serving, wait_until

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("LOCALAI_API_KEY", raising=False)


def key_file(tmp_path, text: str, mode: int = 0o600):
    f = tmp_path / "api-keys"
    f.write_text(text)
    f.chmod(mode)
    return f


# --- fail closed at start -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " \n\t\n", "# the team's keys\n# alice: (to come)\n"])
async def test_a_key_file_without_a_key_stops_the_start(stack, tmp_path, text):
    f = key_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        await stack({"m": FakeBackend()}, api_key_file=str(f))
    message = str(err.value)
    assert message.startswith(f"{f}: ") and "holds no key" in message
    assert "set gateway.api_key_file" not in message  # it is set: say what is wrong with it


def test_localai_gateway_refuses_to_start_on_an_empty_key_file(tmp_path):
    f = key_file(tmp_path, "# keys go here\n")
    config = tmp_path / "localai.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"port": free_port(), "webui": False, "api_key_file": str(f)},
                                      "models": [{"name": "m", "url": "http://127.0.0.1:1", "default": True}]}))
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_API_KEY"}
    run = localai("gateway", config=config, env=env, timeout=15)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{f}: the API key file holds no key" in run.stderr
    assert "Traceback" not in run.stderr and "OPEN" not in run.stdout + run.stderr


@pytest.mark.parametrize(("value", "needle"), [
    ("", "set but empty"), ("   ", "set but empty"), ("sk-short", "8 characters; a key needs at least 16"),
])
def test_a_blank_or_short_localai_api_key_stops_the_start(monkeypatch, value, needle):
    monkeypatch.setenv("LOCALAI_API_KEY", value)
    with pytest.raises(ConfigError) as err:
        load_keyring(None)
    assert str(err.value).startswith("$LOCALAI_API_KEY: ") and needle in str(err.value)
    assert value.strip() == "" or value not in str(err.value)


def test_no_key_source_at_all_is_open_and_says_how_to_close_it(caplog):
    from gateway.app.factory import create_app
    from tests.harness import make_config

    cfg = make_config([{"name": "m", "url": "http://127.0.0.1:1", "default": True}])
    with caplog.at_level(logging.WARNING):
        create_app(cfg)
    assert "OPEN" in caplog.text and "set gateway.api_key_file or LOCALAI_API_KEY" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_app(cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"api_key_file": "/k"})}),
                   api_keys=[])
    assert "OPEN" in caplog.text and "set gateway.api_key_file" not in caplog.text


# --- file permissions -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_others_can_read_or_change_is_refused(tmp_path, mode):
    f = key_file(tmp_path, f"alice: {ALICE}\n", mode)
    with pytest.raises(ConfigError) as err:
        load_keyring(f)
    assert f"{f}: " in str(err.value) and f"chmod 600 {f}" in str(err.value)
    assert f"mode {mode:04o}" in str(err.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_file_only_its_owner_reads_is_taken(tmp_path, mode):
    assert load_keyring(key_file(tmp_path, f"alice: {ALICE}\n", mode)).key_names() == {"alice"}


# --- the key file's syntax ------------------------------------------------------------------


def test_each_spelling_of_the_key_file():
    text = (f"# the team's keys\n#\n## laptops\n   # indented comment\nalice: {ALICE}\nbob:\t{BOB}\n"
            "sk-carol-0123456789abcdef  # carol\nsk-dave-0123456789abcdef #dave\n"
            "sk-anon-0123456789abcdef\nsk-anon2-0123456789abcdef\r\nsk-with#hash-0123456789\n")
    assert parse_key_file(text, "k") == [
        ("alice", ALICE), ("bob", BOB), ("carol", "sk-carol-0123456789abcdef"),
        ("dave", "sk-dave-0123456789abcdef"), ("key-1", "sk-anon-0123456789abcdef"),
        ("key-2", "sk-anon2-0123456789abcdef"), ("key-3", "sk-with#hash-0123456789")]


@pytest.mark.parametrize(("line", "needle"), [
    # A key that begins with '#' was a comment, silently: the only key gone, the gateway open.
    ("#Zx8f0123456789abcdef", "a comment is '#' then a space; a key cannot begin with '#'"),
    ("alice: #Zx8f0123456789abcdef", "a key cannot begin with '#'"),
    # name:key or a key with a colon? Neither: say so.
    ("sk-abc:def0123456789abcdef", "':' without a space after it"),
    ("alice:sk-alice-0123456789abcdef", "':' without a space after it"),
    ("alice: sk-a:b-0123456789abcdef", "a key cannot contain ':'"),
    # The name $LOCALAI_API_KEY's key goes by.
    (f"env: {ALICE}", "the name 'env' is $LOCALAI_API_KEY's"),
    (f"{ALICE}  # env", "the name 'env' is $LOCALAI_API_KEY's"),
    ("alice: sk-0123456789", "this key is 13 characters; a key needs at least 16"),
    ("sk-0123456789", "this key is 13 characters; a key needs at least 16"),
    ("bad name: sk-0123456789abcdefgh", "expected 'name: key'"),
    (f"alice: {ALICE} extra", "expected 'name: key'"),
])
def test_an_ambiguous_or_weak_key_line_is_refused_with_file_and_line(line, needle):
    with pytest.raises(ConfigError) as err:
        parse_key_file(f"# keys\n{line}\n", "/etc/localai/api-keys")
    message = str(err.value)
    assert message.startswith("/etc/localai/api-keys:2: ") and needle in message, message
    assert "sk-" not in message and "Zx8f" not in message  # never the key


# --- reload -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["empty the file", "comment the key out", "drop api_key_file"])
async def test_a_reload_that_would_leave_no_key_keeps_the_keys(aiohttp_server, tmp_path, caplog, change):
    fake = FakeBackend()
    backend = str((await aiohttp_server(fake.app())).make_url("/")).rstrip("/")
    keys = key_file(tmp_path, f"alice: {ALICE}\n")
    config = tmp_path / "localai.yaml"
    gateway = {"port": free_port(), "webui": False, "health_interval": 0.05, "api_key_file": str(keys)}

    def write_config() -> None:
        config.write_text(yaml.safe_dump({"gateway": gateway, "models": [
            {"name": "m", "url": backend, "served_model": fake.model_id, "default": True}]}))

    write_config()
    async with serving(load_config(config)) as app, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gateway['port']}/v1/chat/completions"

        async def status(key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with http.post(url, json=CHAT, headers=headers) as r:
                return r.status

        async def alice_served() -> bool:
            return await status(ALICE) == 200

        await wait_until(alice_served, what="the model ready")
        if change == "empty the file":
            keys.write_text("")
        elif change == "comment the key out":
            keys.write_text(f"# alice: {ALICE}\n")
        else:
            del gateway["api_key_file"]
            write_config()
        with caplog.at_level(logging.INFO):
            assert app[RELOADER].reload() is False
        failed = [r for r in caplog.records if r.getMessage().startswith("reload failed")]
        assert failed and failed[0].levelno == logging.ERROR, caplog.text
        assert "no key" in failed[0].getMessage() and "0 keys" not in caplog.text
        assert await status(None) == 401
        assert await status(ALICE) == 200
