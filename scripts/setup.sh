#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine (as root): MIT Kerberos, a virtualenv, the project.
# Idempotent: a stamp file skips the work when pyproject.toml has not changed. A line per step;
# what apt and pip print goes to .setup.log, shown when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$PWD/.setup.log"

step() {  # step DESCRIPTION COMMAND...: run COMMAND with its output in the log
    local what="$1"
    shift
    echo "setup: $what"
    echo "=== $(date -u +%FT%TZ) $what" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        echo "setup: failed: $what; the end of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# acl: setfacl, for the stand-in's per-principal accounts and shares (winexec/sim/accounts.py)
# postgresql: Airflow with two schedulers (tests/test_schedulers_postgres.py); SQLite allows one
need_pkgs=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc python3-venv python3-dev acl postgresql)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    step "updating Debian's package lists" $SUDO apt-get update -qq
    step "installing Debian packages: ${missing[*]}" \
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY="${PYTHON:-python3}"
stamp=".venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || step "creating .venv" "$PY" -m venv .venv
    step "upgrading pip" .venv/bin/pip install -q --upgrade pip
    step "installing winexec[scheduler,test,bench] with Airflow (a few minutes the first time; progress in $log)" \
        .venv/bin/pip install -e '.[scheduler,test,bench]'
    rm -f .venv/.stamp-*
    touch "$stamp"
    echo "setup: done (the full output is in $log)"
fi
