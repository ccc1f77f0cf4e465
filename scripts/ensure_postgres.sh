#!/usr/bin/env bash
# PostgreSQL server binaries for tests/test_postgres.py, which starts a throwaway server on loopback.
# Idempotent: does nothing when initdb is found. As root it installs the distribution's `postgresql`
# package (and makes sure the non-root `postgres` user the server must run as exists); otherwise it
# fails with the command to run, so the test is never skipped silently.
set -euo pipefail

have_server() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! have_server; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL server binaries (initdb, pg_ctl) are missing; as root run:" \
            "apt-get update && apt-get install -y postgresql" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
    have_server || { echo "installed postgresql but found no initdb" >&2; exit 1; }
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
fi
