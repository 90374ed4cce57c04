"""Log lines carry their syslog priority when, and only when, stdout is the journal's stream."""

import json
import os
import subprocess
import sys

from tests.harness import REPO, cli_argv

EMIT = ("import logging; from gateway.base.observability import setup_logging; setup_logging('debug'); "
        "log = logging.getLogger('localai.test'); log.debug('d'); log.info('i'); log.warning('w'); "
        "log.error('e'); log.critical('c')")


def run_logging(tmp_path, journal: bool) -> list[str]:
    out = tmp_path / "stdout"
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if journal else \
            {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        subprocess.run([sys.executable, "-c", EMIT], stdout=f, env=env, cwd=REPO, check=True, timeout=30)
    return out.read_text().splitlines()


def test_journal_lines_carry_syslog_priorities(tmp_path):
    lines = run_logging(tmp_path, journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert [json.loads(line[3:])["level"] for line in lines] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def test_plain_json_lines_off_the_journal(tmp_path):
    lines = run_logging(tmp_path, journal=False)
    assert [json.loads(line)["msg"] for line in lines] == ["d", "i", "w", "e", "c"]


def test_a_config_error_at_start_is_an_error_in_the_journal(tmp_path):
    config = tmp_path / "localai.yaml"
    config.write_text("models: [{name: m, url: 'http://127.0.0.1:1'}]\ntypo_key: 1\n")
    err = tmp_path / "stderr"
    with err.open("w") as f:
        st = os.fstat(f.fileno())
        run = subprocess.run(cli_argv("gateway", "--config", str(config)), stderr=f,
                             env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, cwd=REPO, timeout=30)
    assert run.returncode == 2
    assert err.read_text().splitlines() == ["<3>localai: invalid config", f"<3>{config}:2: typo_key: unknown key"]
