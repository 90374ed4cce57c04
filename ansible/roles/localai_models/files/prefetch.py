#!/usr/bin/env python3
"""Fetch one hub model into $HF_HOME before its unit starts.

Prints CACHED when an earlier run completed the download (a marker file in
the snapshot), FETCHED after downloading. Exits 2 with a plain sentence when
the model is gated or missing. Run with the vLLM venv's python (it has
huggingface_hub); the hub token, if any, comes in $HF_TOKEN.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = ".localai-complete"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("--allow", action="append", default=None, help="file pattern to fetch")
    ap.add_argument("--revision", default=None)
    args = ap.parse_args()

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    token = os.environ.get("HF_TOKEN") or None
    try:
        path = Path(snapshot_download(args.repo, revision=args.revision, allow_patterns=args.allow,
                                      local_files_only=True))
        if (path / MARKER).exists():
            print(f"CACHED {args.repo} {path}")
            return 0
    except Exception:  # noqa: BLE001 - not cached (or incomplete): fetch below
        pass
    try:
        path = Path(snapshot_download(args.repo, revision=args.revision, allow_patterns=args.allow,
                                      token=token))
    except GatedRepoError:
        print(f"{args.repo} is gated: accept its license on the hub with your account, then put a "
              f"read token in /etc/localai/hf-token (mode 0600) and run the playbook again.", file=sys.stderr)
        return 2
    except RepositoryNotFoundError:
        print(f"{args.repo} was not found on the hub (or is private: put a token in "
              f"/etc/localai/hf-token).", file=sys.stderr)
        return 2
    (path / MARKER).write_text("")
    print(f"FETCHED {args.repo} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
