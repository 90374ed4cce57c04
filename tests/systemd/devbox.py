"""Keep a tier container running while you work on the roles.

    python tests/systemd/devbox.py up        # boot + stage (prints how to enter)
    python tests/systemd/devbox.py install   # re-copy the repo, run install.sh inside
    python tests/systemd/devbox.py sh 'systemctl status localai-*'
    python tests/systemd/devbox.py down      # always tear it down when done
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.harness

import container as ct  # noqa: E402
import stage  # noqa: E402

STATE = ct.CACHE / "devbox.json"


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else "help"
    if cmd == "up":
        if STATE.exists():
            print(f"a devbox is up already ({STATE}); run down first")
            return 1
        rw, ro = stage.binds()
        c = ct.Container("localai-devbox", binds=rw, binds_ro=ro, log_path=ct.CACHE / "devbox-console.log",
                         workdir=Path("/var/tmp"))
        c.create(ct.cached_rootfs())
        stage.stage(c.root)
        c.boot()
        STATE.write_text(json.dumps(c.state()))
        print(json.dumps(c.state()))
        return 0
    c = ct.Container.from_state(json.loads(STATE.read_text()))
    if cmd == "down":
        c.teardown_detached()
        STATE.unlink()
        return 0
    if cmd == "install":
        subprocess.run(["rm", "-rf", str(c.path(stage.SRC_IN))], check=True)
        stage.stage(c.root)
        argv = ["bash", "-c", f"cd {stage.SRC_IN} && " + " ".join(stage.INSTALL_ARGV + sys.argv[2:])]
        return subprocess.run(c._nsenter(argv)).returncode
    if cmd == "sh":
        return subprocess.run(c._nsenter(["bash", "-c", " ".join(sys.argv[2:])])).returncode
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
