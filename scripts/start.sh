#!/usr/bin/env bash
# Set up and run Switchboard on its embedded default (SQLite in var/, Redis on this machine):
# the one command for a fresh Debian machine that has only python3.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/start.sh [--no-install] [--help]

Sets up and runs Switchboard in the foreground:
  1. checks that Python can create a virtualenv (installs python3-venv with apt if needed)
  2. makes sure Redis answers at REDIS_URL (installs and starts redis-server if needed)
  3. makes sure nginx is installed (with apt if needed)
  4. creates .venv and installs requirements.txt (only when it changed)
  5. applies database migrations
  6. collects static files
  7. makes sure a console admin (superuser) exists
  8. starts a Celery worker, Celery beat, gunicorn on this machine only and nginx in
     front of it on SWITCHBOARD_BIND; Ctrl-C (or any of them exiting) stops them all

It refuses to start, before it changes anything, while Switchboard already runs from
the same var dir or another program holds one of its ports.

Options:
  --no-install   never run apt-get or pip (the virtualenv must exist already)
  --help         show this help

Environment (see docs/configuration.md for the settings themselves):
  SWITCHBOARD_BIND          address clients call (nginx)    (default 0.0.0.0:18789)
  SWITCHBOARD_GUNICORN_BIND gunicorn's own address          (default 127.0.0.1:<port + 1>)
  SWITCHBOARD_WEB_WORKERS   gunicorn worker processes       (default 2)
  SWITCHBOARD_WEB_THREADS   threads per gunicorn worker     (default 4)
  SWITCHBOARD_ADMIN_USER, SWITCHBOARD_ADMIN_PASSWORD, SWITCHBOARD_ADMIN_EMAIL
                            create the first admin without prompting
  REDIS_URL                 Redis to use                    (default redis://127.0.0.1:6379/0)
  SWITCHBOARD_VAR_DIR       database, secrets, static files (default var/)
  PROMETHEUS_MULTIPROC_DIR  metrics of all processes        (default var/metrics)
EOF
}

NO_INSTALL=0
for arg in "$@"; do
    case "$arg" in
        --no-install) NO_INSTALL=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'Unknown option: %s\n\n' "$arg" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
STEP_COUNT=8
trap on_error ERR
# The database, generated secrets, logs and Redis data in var/ are for this user only.
umask 077

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
VAR_DIR="${SWITCHBOARD_VAR_DIR:-var}"
BIND="${SWITCHBOARD_BIND:-0.0.0.0:18789}"
WEB_WORKERS="${SWITCHBOARD_WEB_WORKERS:-2}"
WEB_THREADS="${SWITCHBOARD_WEB_THREADS:-4}"
QUEUE="${CELERY_TASK_DEFAULT_QUEUE:-switchboard}"
PORT="${BIND##*:}"
BIND_HOST="${BIND%:*}"
METRICS_DIR="${PROMETHEUS_MULTIPROC_DIR:-$VAR_DIR/metrics}"

for count in "SWITCHBOARD_WEB_WORKERS=$WEB_WORKERS" "SWITCHBOARD_WEB_THREADS=$WEB_THREADS"; do
    case "${count#*=}" in
        '' | *[!0-9]* | 0) printf '%s is not a positive whole number.\n' "$count" >&2; exit 2 ;;
    esac
done
case "$PORT" in
    '' | *[!0-9]*) printf 'SWITCHBOARD_BIND=%s is not HOST:PORT (e.g. 0.0.0.0:18789).\n' "$BIND" >&2; exit 2 ;;
esac
# gunicorn is reached through nginx only: nginx reads each request whole before passing
# it on, so clients that send slowly cannot hold gunicorn's threads (deploy/nginx).
GUNICORN_BIND="${SWITCHBOARD_GUNICORN_BIND:-127.0.0.1:$((PORT + 1))}"
case "${GUNICORN_BIND##*:}" in
    '' | *[!0-9]* | "$PORT") printf 'SWITCHBOARD_GUNICORN_BIND=%s is not HOST:PORT with a port of its own.\n' "$GUNICORN_BIND" >&2; exit 2 ;;
esac

# One start per var dir. The lock is held for as long as this script or any service it
# started runs (they inherit it); a second start refuses here, before it changes
# anything: it would empty the running instance's metrics and then fail on the port.
mkdir -p "$VAR_DIR"
LOCK_FILE="$VAR_DIR/start.lock"
exec 9>>"$LOCK_FILE"
if ! flock -n 9; then
    running="$(sed -n 's/^pid=//p' "$LOCK_FILE")" running_bind="$(sed -n 's/^bind=//p' "$LOCK_FILE")"
    printf 'Switchboard already runs from %s: scripts/start.sh (pid %s) serves %s.\n' \
        "$VAR_DIR" "${running:-?}" "${running_bind:-?}" >&2
    printf 'Nothing was changed. Stop it first (Ctrl-C in its terminal, or: kill %s), or run another\n' \
        "${running:-PID}" >&2
    printf 'installation with a var dir and port of its own (SWITCHBOARD_VAR_DIR, SWITCHBOARD_BIND).\n' >&2
    exit 1
fi
for address in "SWITCHBOARD_BIND=$BIND" "SWITCHBOARD_GUNICORN_BIND=$GUNICORN_BIND"; do
    if port_taken "${address#*=}"; then
        owner="$(port_owner "${address##*:}")"
        printf 'Port %s (%s) is taken by another program%s.\n' "${address##*:}" "$address" "${owner:+: $owner}" >&2
        printf 'Nothing was changed. Stop that program, or choose another port: %s=HOST:PORT\n' "${address%%=*}" >&2
        exit 1
    fi
done
# Who runs from this var dir, for the message above and for doctor (config/doctor.py).
printf 'pid=%s\nbind=%s\ngunicorn_bind=%s\nworker=%s\n' "$$" "$BIND" "$GUNICORN_BIND" "$QUEUE@$(hostname)" >"$LOCK_FILE"

# The address a person on this network types into a browser.
if [ "$BIND_HOST" = 0.0.0.0 ] || [ "$BIND_HOST" = "[::]" ]; then
    PUBLIC_HOST="$(hostname -I 2>/dev/null | awk '{print $1}')"
    PUBLIC_HOST="${PUBLIC_HOST:-127.0.0.1}"
else
    PUBLIC_HOST="$BIND_HOST"
fi

# Django answers only host names it knows. Unless the operator chose them, accept this
# machine's own names and addresses, so the console and callbacks work on the LAN.
if [ -z "${ALLOWED_HOSTS:-}" ]; then
    hosts="localhost,127.0.0.1,[::1]"
    for name in $(hostname 2>/dev/null) $(hostname -f 2>/dev/null) $(hostname -I 2>/dev/null); do
        case "$name" in *:*) name="[$name]" ;; esac
        case ",$hosts," in *",$name,"*) ;; *) hosts="$hosts,$name" ;; esac
    done
    export ALLOWED_HOSTS="$hosts"
    ALLOWED_HOSTS_NOTE="ALLOWED_HOSTS is not set; accepting $ALLOWED_HOSTS (set ALLOWED_HOSTS to the public host name platforms call)"
fi

# nginx, on this machine, is every request's first hop and writes the peer's address into
# X-Forwarded-For: believe it from there, or every client would look like 127.0.0.1 (and
# pass a console allowlist kept to loopback).
case ",${TRUSTED_PROXIES:-}," in
    *",127.0.0.1/32,"* | *",127.0.0.1,"*) ;;
    *) export TRUSTED_PROXIES="${TRUSTED_PROXIES:+$TRUSTED_PROXIES,}127.0.0.1/32,::1/128" ;;
esac

step "Python with virtualenv support"
ensure_python_venv "$NO_INSTALL"

step "Redis"
ensure_redis "$REDIS_URL" "$NO_INSTALL" "$VAR_DIR"

step "nginx"
ensure_nginx "$NO_INSTALL"
NGINX_BIN="$(nginx_binary)"
info "$("$NGINX_BIN" -v 2>&1): it answers $BIND and hands gunicorn ($GUNICORN_BIND) only requests read whole"

step "Virtualenv .venv and requirements.txt"
ensure_requirements requirements.txt "$NO_INSTALL"

step "Database migrations"
FIX="read the error above; with DATABASE_URL set, check that the database server runs and the URL is right (docs/configuration.md)"
if [ -z "${DATABASE_URL:-}" ]; then
    info "DATABASE_URL is not set: using SQLite at $VAR_DIR/switchboard.sqlite3"
fi
.venv/bin/python manage.py migrate --noinput

step "Static files"
FIX="read the error above; STATIC_ROOT (default $VAR_DIR/static) must be writable"
.venv/bin/python manage.py collectstatic --noinput --verbosity 0
info "collected into ${STATIC_ROOT:-$VAR_DIR/static}"

step "Console admin"
FIX="read the error above; you can also create the admin by hand: .venv/bin/python manage.py createsuperuser"
has_admin="$(.venv/bin/python manage.py shell --no-imports -c \
    'from django.contrib.auth import get_user_model; print(get_user_model().objects.filter(is_superuser=True).exists())' | tail -n 1)"
if [ "$has_admin" = True ]; then
    info "an admin account exists"
elif [ -n "${SWITCHBOARD_ADMIN_USER:-}" ] && [ -n "${SWITCHBOARD_ADMIN_PASSWORD:-}" ]; then
    info "creating admin '$SWITCHBOARD_ADMIN_USER' from SWITCHBOARD_ADMIN_USER / SWITCHBOARD_ADMIN_PASSWORD"
    DJANGO_SUPERUSER_PASSWORD="$SWITCHBOARD_ADMIN_PASSWORD" .venv/bin/python manage.py createsuperuser --noinput \
        --username "$SWITCHBOARD_ADMIN_USER" --email "${SWITCHBOARD_ADMIN_EMAIL:-$SWITCHBOARD_ADMIN_USER@localhost}"
elif [ -t 0 ]; then
    info "no admin account yet; create one now"
    .venv/bin/python manage.py createsuperuser
else
    info "no admin account yet, and no terminal to ask for one. Create it with:"
    info "    .venv/bin/python manage.py createsuperuser"
    info "or run this script with SWITCHBOARD_ADMIN_USER and SWITCHBOARD_ADMIN_PASSWORD set."
fi
info "First sign-in: http://$PUBLIC_HOST:$PORT/admin/ asks for the password, then has you set up"
info "an authenticator app (scan the QR code) and shows backup codes once; keep them safe."
if [ -n "${ALLOWED_HOSTS_NOTE:-}" ]; then
    info "$ALLOWED_HOSTS_NOTE"
fi

step "Celery worker, Celery beat, gunicorn on $GUNICORN_BIND and nginx on $BIND"
WEB_PID="" WORKER_PID="" BEAT_PID="" NGINX_PID=""

# Stop every service still running: TERM, then KILL whatever has not gone after 30 s.
stop_services() {
    trap - INT TERM EXIT ERR
    local pid pids=""
    for pid in "$NGINX_PID" "$WEB_PID" "$WORKER_PID" "$BEAT_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids="$pids $pid"
        fi
    done
    [ -n "$pids" ] || return 0
    info "stopping nginx, gunicorn, Celery worker and beat"
    for _ in $(seq 1 150); do
        local alive=""
        for pid in $pids; do
            if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi
        done
        [ -n "$alive" ] || return 0
        sleep 0.2
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_services; exit 130' INT
trap 'stop_services; exit 143' TERM
trap stop_services EXIT

# gunicorn's processes and the Celery worker's all write their metrics here, so /metrics
# adds them up (config/metrics.py); emptied at every start.
rm -rf "$METRICS_DIR"
mkdir -p "$METRICS_DIR"
export PROMETHEUS_MULTIPROC_DIR="$METRICS_DIR"
FIX="is Redis reachable at CELERY_BROKER_URL (default REDIS_URL)? read the Celery log above"
.venv/bin/celery -A config worker --loglevel INFO --hostname "$QUEUE@%h" &
WORKER_PID=$!
.venv/bin/celery -A config beat --loglevel INFO --schedule "$VAR_DIR/celerybeat-schedule" &
BEAT_PID=$!
# Threads: a callback waiting for its answer (WeChat's passive replies, up to
# WECHAT_PASSIVE_HOLD_MS) holds one thread, not a whole process. --keep-alive outlasts
# nginx's upstream keepalive_timeout, so nginx never reuses a connection being closed.
.venv/bin/gunicorn config.wsgi:application --bind "$GUNICORN_BIND" --workers "$WEB_WORKERS" --worker-class gthread \
    --threads "$WEB_THREADS" --keep-alive 65 --no-control-socket --access-logfile - --error-logfile - &
WEB_PID=$!
NGINX_RUN_DIR="$(cd "$VAR_DIR" && pwd)/nginx"
mkdir -p "$NGINX_RUN_DIR"
FIX="read nginx's message above; its configuration is $NGINX_RUN_DIR/nginx.conf (from deploy/nginx/standalone.conf)"
render deploy/nginx/standalone.conf RUN_DIR="$NGINX_RUN_DIR" LISTEN="$BIND" GUNICORN_BIND="$GUNICORN_BIND" \
    SNIPPETS="$PWD/deploy/nginx" MAX_BODY="$(nginx_body_limit "${CALLBACK_MAX_BODY_BYTES:-1048576}")" \
    >"$NGINX_RUN_DIR/nginx.conf"
"$NGINX_BIN" -q -t -p "$NGINX_RUN_DIR" -e stderr -c "$NGINX_RUN_DIR/nginx.conf"
"$NGINX_BIN" -p "$NGINX_RUN_DIR" -e stderr -c "$NGINX_RUN_DIR/nginx.conf" -g "daemon off;" &
NGINX_PID=$!
info "Switchboard runs on http://$PUBLIC_HOST:$PORT/ (console /admin/, health /healthz, /readyz). Ctrl-C stops it."

# Run until one of the four exits. Ctrl-C reaches all of them (they share the terminal's
# process group) and each stops cleanly with code 0, as does gunicorn after a plain TERM;
# a non-zero code is a failure, and the EXIT trap stops whichever are still running.
status=0
exited=""
wait -n -p exited "$NGINX_PID" "$WEB_PID" "$WORKER_PID" "$BEAT_PID" || status=$?
case "$exited" in
    "$NGINX_PID") NGINX_PID="" name=nginx ;;
    "$WEB_PID") WEB_PID="" name=gunicorn ;;
    "$WORKER_PID") WORKER_PID="" name="the Celery worker" ;;
    "$BEAT_PID") BEAT_PID="" name="Celery beat" ;;
    *) exit "$status" ;;
esac
if [ "$status" -eq 0 ]; then
    info "$name stopped"
    exit 0
fi
case "$name" in
    gunicorn) FIX="is another program listening on $GUNICORN_BIND? (ss -ltnp | grep :${GUNICORN_BIND##*:}) Choose another with SWITCHBOARD_GUNICORN_BIND=HOST:PORT" ;;
    nginx) FIX="read nginx's message above; is another program listening on $BIND? (ss -ltnp | grep :$PORT) Choose another with SWITCHBOARD_BIND=HOST:PORT" ;;
    "Celery beat") FIX="read the Celery beat log above; the schedule file is $VAR_DIR/celerybeat-schedule (delete it if it is corrupt)" ;;
esac
fail "$name exited with code $status"
