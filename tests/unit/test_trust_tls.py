"""HTTPS (`gateway.tls`, issue #18): real clients against a certificate made the playbook's way.

The certificate comes from ansible/roles/localai_gateway/files/tls-cert.sh, the very script the
role runs on the gateway's host (a private CA, then the host's certificate signed by it). The
openai SDK and curl, trusting that CA and nothing else, talk to the gateway over HTTPS; plain
HTTP on the same port still answers this machine's own clients, and no other.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest
import yaml

import gateway.app.tls as tls
from tests.fakebackend import FakeBackend
from tests.harness import REPO, free_port, localai

SCRIPT = REPO / "ansible" / "roles" / "localai_gateway" / "files" / "tls-cert.sh"
KEY = "sk-tls-test-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """The role's way: `tls-cert.sh DIR NAME...` for this host's names."""
    where = tmp_path_factory.mktemp("tls") / "tls"
    res = subprocess.run(["sh", str(SCRIPT), str(where), "localhost", "127.0.0.1", "::1"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "CHANGED"
    return where


def tls_config(certs: Path) -> dict:
    return {"cert": str(certs / "gateway.pem"), "key": str(certs / "gateway.key")}


def test_the_script_is_idempotent_and_keeps_the_ca(certs, tmp_path):
    where = tmp_path / "copy"
    shutil.copytree(certs, where)
    ca = (where / "ca.pem").read_bytes()
    again = subprocess.run(["sh", str(SCRIPT), str(where), "localhost", "127.0.0.1", "::1"],
                           capture_output=True, text=True, check=True)
    assert again.stdout == ""  # nothing to do: the role reports no change
    renamed = subprocess.run(["sh", str(SCRIPT), str(where), "localhost", "127.0.0.1", "::1", "box.lan"],
                             capture_output=True, text=True, check=True)
    assert renamed.stdout.strip() == "CHANGED"
    assert (where / "ca.pem").read_bytes() == ca  # clients keep trusting the same CA
    assert (where / "ca.key").stat().st_mode & 0o077 == 0 and (where / "gateway.key").stat().st_mode & 0o077 == 0


async def test_openai_sdk_and_curl_over_https_trusting_the_private_ca(stack, certs):
    s = await stack({"m": FakeBackend("m-id")}, api_keys=[KEY], tls=tls_config(certs))
    trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))  # VERIFY_X509_STRICT where Python sets it
    async with httpx.AsyncClient(verify=trust) as http:
        client = openai.AsyncOpenAI(base_url=f"https://localhost:{s.port}/v1", api_key=KEY, http_client=http)
        answer = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    curl = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "--cacert", str(certs / "ca.pem"), "-H", f"Authorization: Bearer {KEY}",
                         f"https://127.0.0.1:{s.port}/v1/models"], capture_output=True, text=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    assert [m["id"] for m in json.loads(curl.stdout)["data"]] == ["m"]
    # A client that trusts only the public CAs refuses the certificate: nothing is sent in clear.
    async with httpx.AsyncClient() as untrusting:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.get(f"https://localhost:{s.port}/health")
    assert any(r.get("tls") is True and r["msg"].startswith("gateway listening on https://")
               for r in s.log_lines())


async def test_plain_http_answers_this_machine_and_refuses_others(stack, certs, monkeypatch):
    s = await stack({"m": FakeBackend("m-id")}, api_keys=[KEY], tls=tls_config(certs))
    async with s.http.get(s.url + "/health") as r:  # http://127.0.0.1: the CLI's and the playbook's way
        assert r.status == 200
    # The same request from another machine of the LAN (a peer that is not this host).
    monkeypatch.setattr(tls, "same_machine", lambda peer, local: False)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as lan, \
            lan.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=chat) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == "https_required"
    assert f"use https://127.0.0.1:{s.port}" in body["error"]["message"]
    assert s.fakes["m"].received == []  # nothing reached a model


def test_same_machine_is_loopback_or_the_address_it_connected_to():
    assert tls.same_machine(("127.0.0.1", 5000), ("127.0.0.1", 8080))
    assert tls.same_machine(("::1", 5000, 0, 0), ("::1", 8080, 0, 0))
    assert tls.same_machine(("::ffff:127.0.0.1", 5000, 0, 0), ("::", 8080, 0, 0))
    assert tls.same_machine(("192.0.2.2", 5000), ("192.0.2.2", 8080))  # the host's own LAN address
    assert not tls.same_machine(("192.0.2.7", 5000), ("192.0.2.2", 8080))
    assert not tls.same_machine(("fe80::1%eth0", 5000, 0, 2), ("fe80::2%eth0", 8080, 0, 2))


def config_with(cert: Path, key: Path) -> str:
    return yaml.safe_dump({"gateway": {"port": free_port(), "tls": {"cert": str(cert), "key": str(key)}},
                           "models": [{"name": "m", "url": "http://127.0.0.1:9", "default": True}]})


def test_a_certificate_that_does_not_load_stops_the_gateway_with_its_file(tmp_path, certs):
    cfg = tmp_path / "localai.yaml"
    cfg.write_text(config_with(tmp_path / "missing.pem", certs / "gateway.key"))
    res = localai("gateway", config=cfg)
    assert res.returncode == 2
    assert f"gateway.tls: {tmp_path / 'missing.pem'}: no such file" in res.stderr
    assert "Traceback" not in res.stderr
    # A key that is not the certificate's.
    other = tmp_path / "other"
    subprocess.run(["sh", str(SCRIPT), str(other), "localhost"], capture_output=True, check=True)
    cfg.write_text(config_with(certs / "gateway.pem", other / "gateway.key"))
    res = localai("gateway", config=cfg)
    assert res.returncode == 2 and "do not load" in res.stderr and "Traceback" not in res.stderr


async def test_silent_connections_are_bounded_before_they_say_what_they_speak(stack, certs):
    """A client that connects and sends nothing holds its connection header_timeout at most, and one
    address holds max_connections_per_client of them at most: the rest are closed at once."""
    s = await stack({"m": FakeBackend("m-id")}, api_keys=[KEY], tls=tls_config(certs),
                    header_timeout=0.5, max_connections_per_client=2)
    loop = asyncio.get_running_loop()
    opened = [await asyncio.open_connection("127.0.0.1", s.port) for _ in range(3)]
    started = loop.time()
    # The third is over the bound: closed without waiting; the first two when their time is up.
    closed_after = []
    for reader, _ in reversed(opened):
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        closed_after.append(loop.time() - started)
    assert closed_after[0] < 0.4 and 0.4 < closed_after[2] < 3, closed_after
    for _, writer in opened:
        writer.close()
    trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    async with httpx.AsyncClient(verify=trust) as http:
        assert (await http.get(f"https://localhost:{s.port}/health")).status_code == 200
