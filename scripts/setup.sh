#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine (as root): MIT Kerberos, a virtualenv, the project.
# Idempotent: a stamp file skips the work when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# acl: setfacl, for the stand-in's per-principal accounts and shares (winexec/sim/accounts.py)
# postgresql: Airflow with two schedulers (tests/test_schedulers_postgres.py); SQLite allows one
need_pkgs=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc python3-venv python3-dev acl postgresql)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
stamp=".venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: creating .venv and installing winexec[scheduler,test,bench]"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[scheduler,test,bench]'
    rm -f .venv/.stamp-*
    touch "$stamp"
fi
