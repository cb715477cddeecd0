#!/usr/bin/env bash
# Run the whole test suite (ruff, then pytest) on a fresh Debian machine that has only
# python3. Arguments go to pytest: bash scripts/test.sh -k readyz tests/test_health.py
set -Eeuo pipefail

case "${1:-}" in
    -h | --help)
        cat <<'EOF'
Usage: bash scripts/test.sh [PYTEST ARGUMENTS...]

  1. checks that Python can create a virtualenv (installs python3-venv with apt if needed)
  2. creates .venv and installs requirements-dev.txt (only when it changed)
  3. makes sure Redis answers at REDIS_URL (installs and starts redis-server if needed)
  4. installs Debian's chromium and chromium-driver for the browser tests, nginx,
     logrotate and prometheus (promtool) for the deployment tests, and rabbitmq-server
     for the RabbitMQ fault tests (as root)
  5. uses PostgreSQL at 127.0.0.1:5432 when it answers (DATABASE_URL wins if set),
     otherwise SQLite, with a warning
  6. ruff check . and ruff format --check .
  7. pytest with the arguments given
The exit code is ruff's if ruff fails, otherwise pytest's.
With CI=true, browser tests fail instead of skipping when Chromium is missing, and the
deployment tests when nginx, logrotate or promtool is.
EOF
        exit 0
        ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
STEP_COUNT=7
trap on_error ERR

POSTGRES_URL="postgres://postgres@127.0.0.1:5432/switchboard"

step "Python with virtualenv support"
ensure_python_venv 0

step "Virtualenv .venv and requirements-dev.txt"
ensure_requirements requirements-dev.txt 0

step "Redis"
ensure_redis "${REDIS_URL:-redis://127.0.0.1:6379/0}" 0 "${SWITCHBOARD_VAR_DIR:-var}"

step "Chromium and chromedriver for the browser tests; nginx, logrotate, promtool for tests/ops; rabbitmq-server for tests/faults"
# tests/faults starts a private rabbitmq-server of its own (it never touches the machine's).
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/sbin/nginx ] && [ -x /usr/sbin/logrotate ] \
    && [ -x /usr/bin/promtool ] && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    info "$(/usr/bin/chromium --version 2>/dev/null || echo chromium), chromedriver, nginx, logrotate, promtool and rabbitmq-server are installed"
elif is_root; then
    FIX="check the apt output above; the browser tests need /usr/bin/chromium and /usr/bin/chromedriver, tests/ops nginx, logrotate and promtool, tests/faults rabbitmq-server"
    apt_install chromium chromium-driver nginx logrotate prometheus rabbitmq-server
else
    warn "chromium, nginx, logrotate, promtool or rabbitmq-server is missing and this script is not running as root; the"
    warn "browser, deployment and RabbitMQ fault tests will skip (or fail with CI=true). Install them with:"
    warn "    sudo apt-get install -y chromium chromium-driver nginx logrotate prometheus rabbitmq-server"
fi
if [ "${CI:-}" = true ]; then
    export SWITCHBOARD_REQUIRE_BROWSER=1 SWITCHBOARD_REQUIRE_TOOLS=1
    info "CI=true: browser, deployment and RabbitMQ fault tests fail rather than skip when a tool they need is missing"
fi

step "Database"
if [ -n "${DATABASE_URL:-}" ]; then
    info "using DATABASE_URL from the environment"
elif .venv/bin/python - <<'PY'
import sys

import psycopg

try:
    psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
except psycopg.Error:
    sys.exit(1)
PY
then
    export DATABASE_URL="$POSTGRES_URL"
    info "PostgreSQL answers at 127.0.0.1:5432: DATABASE_URL=$DATABASE_URL (tests use test_switchboard)"
else
    printf '\n' >&2
    printf '!!! WARNING: PostgreSQL does not answer at 127.0.0.1:5432 (user postgres, trust auth).\n' >&2
    printf '!!! WARNING: running the suite on SQLite; what production runs on is NOT being tested.\n' >&2
    printf '!!! WARNING: install it with: apt-get install -y postgresql, then allow trust auth for\n' >&2
    printf '!!! WARNING: 127.0.0.1 in pg_hba.conf, or set DATABASE_URL to a server you can use.\n\n' >&2
fi

step "ruff check . and ruff format --check ."
ruff_status=0
.venv/bin/ruff check . || ruff_status=$?
.venv/bin/ruff format --check . || ruff_status=$?
if [ "$ruff_status" -ne 0 ]; then
    warn "ruff found problems (exit code $ruff_status); running the tests anyway"
fi

step "pytest $*"
pytest_status=0
.venv/bin/pytest "$@" || pytest_status=$?

if [ "$ruff_status" -ne 0 ]; then
    printf '\nFAILED: ruff check . or ruff format --check . (exit code %d). Fix the findings above; many go away with:\n    .venv/bin/ruff check --fix . && .venv/bin/ruff format .\n' "$ruff_status" >&2
    exit "$ruff_status"
fi
if [ "$pytest_status" -eq 5 ]; then
    printf '\nFAILED: pytest ran no tests (exit code 5); check the arguments: %s\n' "$*" >&2
    exit 5
fi
if [ "$pytest_status" -ne 0 ]; then
    printf '\nFAILED: pytest exited with code %d; see the failures above.\n' "$pytest_status" >&2
    exit "$pytest_status"
fi
printf '\nAll checks passed.\n'
