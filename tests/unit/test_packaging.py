"""`pip install .` (not editable) gives a gateway that serves the WebUI and every API family."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.harness import REPO


def test_wheel_ships_the_webui_and_every_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path / "wheel"), str(REPO)], check=True, cwd=tmp_path,
                   capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("localai-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for p in (REPO / "gateway").rglob("*.py")}
    assert sources <= names, sources - names
    assert "gateway/webui_dist/index.html" in names
    built = {str(p.relative_to(REPO / "webui" / "dist")) for p in (REPO / "webui" / "dist").rglob("*") if p.is_file()}
    assert {f"gateway/webui_dist/{name}" for name in built} <= names

    # Installed apart from the source tree, the gateway finds its bundle in the package.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("from gateway.app.factory import webui_root; from gateway.plan.validate import parse_config; "
             "cfg = parse_config('models: [{name: m, url: \"http://127.0.0.1:9\"}]'); "
             "print((webui_root(cfg) / 'index.html').is_file(), webui_root(cfg))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and out[1].startswith(str(site))
