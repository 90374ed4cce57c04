#!/usr/bin/env bash
# Install localai on THIS host: bootstrap Ansible in a private venv, then run
# ansible/site.yml against localhost. Run as root (or it re-runs itself with sudo).
#
#   ./install.sh                              # GPU or CPU, picked for you
#   ./install.sh -e localai_profile=24gb      # any ansible-playbook option passes through
#   ./install.sh --check --diff               # what would change
#   ./install.sh --uninstall                  # stop and remove units and venvs (keeps models, config)
#   ./install.sh --uninstall -e localai_uninstall_purge=true   # ...and the models, config and keys
#
# Environment: LOCALAI_ANSIBLE_VENV (default /opt/localai/ansible),
# LOCALAI_PIP_ARGS (extra pip options for the bootstrap, e.g. --find-links DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ANSIBLE_VENV="${LOCALAI_ANSIBLE_VENV:-/opt/localai/ansible}"
# Pinned: ansible-core 2.17 is the last line whose controller runs on Python
# 3.10 (Ubuntu 22.04's python3); it manages Python 3.7+ targets.
ANSIBLE_CORE_VERSION="2.17.14"
PLAYBOOK="site.yml"

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

args=()
for a in "$@"; do
    case "$a" in
        --uninstall) PLAYBOOK="uninstall.yml" ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$a") ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run me as root (sudo is not installed)"
    exec sudo -E -- "$0" "$@"
fi

[ -r /etc/os-release ] && . /etc/os-release
case "${ID:-}" in
    ubuntu|debian) ;;
    *) die "this installer knows Ubuntu 22.04/24.04 and Debian 12; this host is ${PRETTY_NAME:-unknown}" ;;
esac

# Python for Ansible itself (not for vLLM: the playbook provides that one).
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv for the Ansible bootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv >/dev/null
fi

if ! "$ANSIBLE_VENV/bin/ansible-playbook" --version 2>/dev/null | grep -q "core $ANSIBLE_CORE_VERSION"; then
    say "installing ansible-core $ANSIBLE_CORE_VERSION into $ANSIBLE_VENV"
    python3 -m venv "$ANSIBLE_VENV"
    # shellcheck disable=SC2086
    "$ANSIBLE_VENV/bin/pip" install -q ${LOCALAI_PIP_ARGS:-} "ansible-core==$ANSIBLE_CORE_VERSION"
fi

export ANSIBLE_CONFIG="$HERE/ansible/ansible.cfg"
exec "$ANSIBLE_VENV/bin/ansible-playbook" "$HERE/ansible/$PLAYBOOK" "${args[@]}"
