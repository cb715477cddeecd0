#!/usr/bin/env bash
# Deploy Switchboard on a Debian/Ubuntu server in one command: system packages, a service
# user, the code and its virtualenv, secrets, database, the first admin, a default model
# backend, systemd units (or a supervisor of its own where systemd does not run), nginx
# on 443 and logrotate. Running it again upgrades in place and keeps every secret and all
# data. See docs/operations.md.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
Usage: sudo ./deploy.sh [OPTIONS]

Deploys Switchboard on this machine: numbered steps, and on a failure the step that
failed and how to fix it. Running it again upgrades in place: secrets, the database
and the settings you changed are kept; options not given keep their last value.

Seed options:
  --model_type=dialog     what the default model backend is for; "dialog" (chat
                          completion) is the only type there is
  --gpu=false             false: the default backend is a cloud OpenAI-compatible API
                          (https://api.openai.com/v1, gpt-4o-mini); paste its API key
                          in the console (or set SWITCHBOARD_MODEL_API_KEY)
                          true: a model server on this machine's GPU, OpenAI-compatible
                          at http://127.0.0.1:11434/v1 (Ollama; qwen2.5:7b-instruct)
  --port=18789            the plain-HTTP port platforms may call directly: nginx, which
                          reads each request whole before gunicorn gets it
  --gunicorn-port=N       the port gunicorn itself listens on, on 127.0.0.1 only
                          (default: --port + 1)

Server options:
  --domain=NAME           the public host name: nginx server_name, ALLOWED_HOSTS, the
                          certificate's name (default: this machine's name)
  --admin-email=EMAIL     the first admin's email address
  --database-url=URL      postgres://USER:PASSWORD@HOST:5432/NAME (default: SQLite in
                          /var/lib/switchboard, fine for one machine)
  --redis-url=URL         Redis for cache and broker (default redis://127.0.0.1:6379/0;
                          installed and started here when it is local)
  --listen=ADDRESS        the address nginx listens on (default: all)
  --https-port=443        nginx's HTTPS port;  --http-port=80  its plain-HTTP port
  --tls-cert=FILE --tls-key=FILE
                          the certificate (full chain) and key nginx serves; without
                          them a self-signed pair is made once in /etc/switchboard/tls/
  --model-url=URL --model-name=NAME
                          another OpenAI-compatible endpoint for the default backend
  --set KEY=VALUE         one more setting for /etc/switchboard/switchboard.env
                          (docs/configuration.md); repeat as needed
  --supervisor            run the services under deploy/supervisor.py even where
                          systemd runs (without systemd this is automatic)
  --no-start              write and prepare everything, start nothing
  --root=DIR              install under DIR instead of / (trying it out, tests): no apt,
                          no service user, nginx and the services run by the supervisor
  --venv=DIR              use this existing virtualenv instead of making one
  --dry-run               show every step and what it would do; change nothing
  --help                  show this help

Unattended first admin: SWITCHBOARD_ADMIN_USER and SWITCHBOARD_ADMIN_PASSWORD (and
SWITCHBOARD_ADMIN_EMAIL); otherwise it asks on a terminal.
EOF
}

SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SOURCE_DIR"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
STEP_COUNT=14
trap on_error ERR
# Code, virtualenv and configuration must be readable by the service user and nginx
# whatever root's umask is; secrets get mode 600 explicitly.
umask 022

# -- options --------------------------------------------------------------------------

declare -A OPT=() GIVEN=()
EXTRA_SETTINGS=()
DRY_RUN=0
NO_START=0
ROOT="${SWITCHBOARD_DEPLOY_ROOT:-}"

while [ $# -gt 0 ]; do
    arg="$1"
    name="${arg%%=*}"
    name="${name//_/-}"
    case "$name" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; shift; continue ;;
        --no-start) NO_START=1; shift; continue ;;
        --supervisor) OPT[supervisor]=1; shift; continue ;;
        --model-type | --gpu | --port | --gunicorn-port | --domain | --admin-email | --database-url | --redis-url | \
            --listen | --https-port | --http-port | --tls-cert | --tls-key | --model-url | --model-name | --set | --root | --venv)
            if [[ "$arg" == *=* ]]; then  # --name=value
                value="${arg#*=}"
                shift
            elif [ $# -ge 2 ] && [[ "$2" != --* ]]; then  # --name value
                value="$2"
                shift 2
            else
                printf 'Option %s needs a value.\n' "$arg" >&2
                exit 2
            fi
            case "$name" in
                --set)
                    [[ "$value" =~ ^[A-Z][A-Z0-9_]*=.*$ ]] || { printf -- '--set %s: use KEY=VALUE\n' "$value" >&2; exit 2; }
                    EXTRA_SETTINGS+=("$value")
                    ;;
                --root) ROOT="$value" ;;
                --venv) OPT[venv]="$(realpath -ms "$value")" ;;
                *) OPT[${name#--}]="$value" GIVEN[${name#--}]=1 ;;
            esac
            ;;
        *) printf 'Unknown option: %s\n\n' "$arg" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -n "$ROOT" ]; then
    ROOT="$(realpath -m "$ROOT")"
    [ "$ROOT" != / ] || ROOT=""
fi

# -- layout -----------------------------------------------------------------------------

ETC_DIR="$ROOT/etc/switchboard"
ENV_FILE="$ETC_DIR/switchboard.env"
STATE_FILE="$ETC_DIR/deploy.conf"
TLS_DIR="$ETC_DIR/tls"
APP_HOME="$ROOT/opt/switchboard"
APP_DIR="$APP_HOME/app"
VAR_DIR="$ROOT/var/lib/switchboard"
LOG_DIR="$ROOT/var/log/switchboard"
RUN_DIR="$ROOT/run/switchboard"
UNIT_DIR="$ROOT/etc/systemd/system"
NGINX_DIR="$ROOT/etc/nginx"
LOGROTATE_FILE="$ROOT/etc/logrotate.d/switchboard"
BIN_DIR="$ROOT/usr/local/bin"
SERVICES=(web worker beat)

# The last deploy's choices; options given now win.
if [ -f "$STATE_FILE" ]; then
    while IFS='=' read -r key value; do
        case "$key" in '' | \#*) continue ;; esac
        [ -n "${OPT[$key]+set}" ] || OPT[$key]="$value"
    done <"$STATE_FILE"
fi

VENV_GIVEN="${OPT[venv]:-}"
MODEL_TYPE="${OPT[model-type]:-dialog}"
GPU="${OPT[gpu]:-false}"
PORT="${OPT[port]:-18789}"
LISTEN="${OPT[listen]:-}"
HTTPS_PORT="${OPT[https-port]:-443}"
HTTP_PORT="${OPT[http-port]:-80}"
WEB_WORKERS="${SWITCHBOARD_WEB_WORKERS:-${OPT[web-workers]:-$(($(nproc) * 2 + 1 > 9 ? 9 : $(nproc) * 2 + 1))}}"
WEB_THREADS="${SWITCHBOARD_WEB_THREADS:-${OPT[web-threads]:-4}}"

case "$MODEL_TYPE" in
    dialog) ;;
    *) printf -- '--model_type=%s: the only model type is dialog (chat completion).\n' "$MODEL_TYPE" >&2; exit 2 ;;
esac
case "$GPU" in
    true | false) ;;
    *) printf -- '--gpu=%s: use true or false.\n' "$GPU" >&2; exit 2 ;;
esac
for port_option in "port=$PORT" "https-port=$HTTPS_PORT" "http-port=$HTTP_PORT" "gunicorn-port=${OPT[gunicorn-port]:-1}" \
    "SWITCHBOARD_WEB_WORKERS=$WEB_WORKERS" "SWITCHBOARD_WEB_THREADS=$WEB_THREADS"; do
    case "${port_option#*=}" in
        '' | *[!0-9]* | 0) printf -- '%s is not a positive whole number.\n' "$port_option" >&2; exit 2 ;;
    esac
done
if { [ -n "${OPT[tls-cert]:-}" ] && [ -z "${OPT[tls-key]:-}" ]; } || { [ -z "${OPT[tls-cert]:-}" ] && [ -n "${OPT[tls-key]:-}" ]; }; then
    printf -- '--tls-cert and --tls-key go together.\n' >&2
    exit 2
fi

DOMAIN="${OPT[domain]:-}"
if [ -z "$DOMAIN" ]; then
    case "$LISTEN" in
        127.* | ::1 | localhost) DOMAIN=localhost ;;
        *)
            DOMAIN="$(hostname -f 2>/dev/null || hostname)"
            [[ "$DOMAIN" == *.* ]] || DOMAIN="$(hostname -I 2>/dev/null | awk '{print $1}')"
            DOMAIN="${DOMAIN:-localhost}"
            ;;
    esac
fi
[[ "$DOMAIN" =~ ^[A-Za-z0-9.:-]+$ ]] || { printf -- '--domain=%s is not a host name.\n' "$DOMAIN" >&2; exit 2; }

if [ -n "$ROOT" ] || { ! is_root && [ "$DRY_RUN" -eq 0 ]; }; then
    SERVICE_USER="$(id -un)"
    SERVICE_GROUP="$(id -gn)"
else
    SERVICE_USER=switchboard
    SERVICE_GROUP=switchboard
fi
if [ -n "$ROOT" ] || [ -n "${OPT[supervisor]:-}" ] || ! has_systemd; then
    MANAGER=supervisor
else
    MANAGER=systemd
fi
VENV="${VENV_GIVEN:-$APP_HOME/venv}"
PUBLIC_URL="https://$DOMAIN$([ "$HTTPS_PORT" = 443 ] || printf ':%s' "$HTTPS_PORT")"
BIND="${LISTEN:-0.0.0.0}:$PORT"
case "$LISTEN" in *:*) BIND="[$LISTEN]:$PORT" ;; esac
# gunicorn is reached through nginx only (deploy/nginx/switchboard-clients.conf says why).
GUNICORN_BIND="127.0.0.1:${OPT[gunicorn-port]:-$((PORT + 1))}"
if [ "${GUNICORN_BIND##*:}" = "$PORT" ]; then
    printf -- '--gunicorn-port=%s: nginx listens on that port (--port); choose another.\n' "${GUNICORN_BIND##*:}" >&2
    exit 2
fi

# -- helpers ----------------------------------------------------------------------------

# Run a command, or in a dry run say what it would run.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        info "would run: $*"
        return 0
    fi
    "$@"
}

# Write standard input to FILE with MODE, owned by OWNER:GROUP where we may chown,
# replacing it in one rename. A dry run says so and writes nothing.
put() {
    local file="$1" mode="$2" owner="${3:-}"
    if [ "$DRY_RUN" -eq 1 ]; then
        cat >/dev/null
        info "would write $file (mode $mode)"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    local tmp
    tmp="$(mktemp "$file.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -n "$owner" ] && is_root; then chown "$owner" "$tmp"; fi
    mv -f "$tmp" "$file"
}

# Say what was done; a dry run did not do it, and `run` has said what it would do.
did() {
    if [ "$DRY_RUN" -eq 0 ]; then info "$@"; fi
}

# Make a directory with MODE and owner (where we may chown).
make_dir() {
    local dir="$1" mode="$2" owner="${3:-}"
    if [ "$DRY_RUN" -eq 1 ]; then
        info "would make $dir (mode $mode${owner:+, owner $owner})"
        return 0
    fi
    mkdir -p "$dir"
    chmod "$mode" "$dir"
    if [ -n "$owner" ] && is_root; then chown "$owner" "$dir"; fi
}

# Set KEY=VALUE in the env file (replacing an existing line), or add it.
env_set() {
    local key="$1" value="$2"
    if [ "$DRY_RUN" -eq 1 ]; then
        info "would set $key in $ENV_FILE"
        return 0
    fi
    python3 - "$ENV_FILE" "$key" "$value" <<'PY'
import os
import sys

path, key, value = sys.argv[1:]
lines = open(path).read().splitlines()
for index, line in enumerate(lines):
    if line.split("=", 1)[0].strip() == key:
        lines[index] = f"{key}={value}"
        break
else:
    lines.append(f"{key}={value}")
tmp = f"{path}.tmp"
with open(tmp, "w") as handle:
    handle.write("\n".join(lines) + "\n")
os.chmod(tmp, os.stat(path).st_mode & 0o777)
try:
    os.chown(tmp, os.stat(path).st_uid, os.stat(path).st_gid)
except PermissionError:
    pass
os.replace(tmp, path)
PY
}

# The value of KEY in the env file ("" when absent).
env_get() {
    [ -f "$ENV_FILE" ] || return 0
    sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1
}

# manage.py of the installed copy, with the installed settings, as the service user.
manage() {
    "$BIN_DIR/switchboard-manage" "$@"
}

# Generate a secret into FILE once; an existing file is never replaced.
ensure_secret() {
    local file="$1" what="$2" generator="$3"
    if [ -s "$file" ]; then
        info "kept the existing $what ($file)"
        return 0
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        info "would generate the $what into $file (mode 600)"
        return 0
    fi
    python3 -c "$generator" | put "$file" 600 "$SERVICE_USER:$SERVICE_GROUP"
    info "generated the $what into $file (mode 600, owner $SERVICE_USER)"
}

systemd_units() {
    local service units=()
    for service in "${SERVICES[@]}"; do units+=("switchboard-$service.service"); done
    printf '%s\n' "${units[@]}"
}

local_url() { printf 'http://%s:%s' "$([ -n "$LISTEN" ] && [ "$LISTEN" != 0.0.0.0 ] && printf '%s' "$LISTEN" || printf '127.0.0.1')" "$PORT"; }

# -- 1 ----------------------------------------------------------------------------------

step "Check the system: OS, Python, libraries, memory, disk"
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    os_name="$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-$ID}")"
    os_like="$(. /etc/os-release && printf '%s %s' "${ID:-}" "${ID_LIKE:-}")"
    info "OS: $os_name"
    case " $os_like " in
        *" debian "* | *" ubuntu "*) ;;
        *) warn "deploy.sh is written for Debian and Ubuntu (apt, /etc/nginx/sites-enabled); elsewhere install redis-server, nginx, openssl and logrotate yourself" ;;
    esac
else
    warn "no /etc/os-release: cannot tell which OS this is"
fi
FIX="install Python 3.11 or newer: apt-get install -y python3 (Debian 12 and Ubuntu 24.04 ship one)"
command -v python3 >/dev/null || fail "python3 is not installed"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$(python3 --version 2>&1) is too old; Switchboard needs Python 3.11 or newer"
info "$(python3 --version)"
FIX="install the missing system libraries: apt-get install -y libssl3 libsqlite3-0 libffi8 (or reinstall python3)"
python3 -c 'import ctypes, sqlite3, ssl' || fail "Python cannot load its SSL, SQLite or ctypes modules"
glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
FIX="use Debian 11 or newer, Ubuntu 20.04 or newer: the Python packages need glibc 2.28+"
python3 -c 'import sys; v = tuple(int(p) for p in sys.argv[1].split(".")[:2]); sys.exit(v < (2, 28))' "${glibc:-0.0}" \
    || fail "glibc ${glibc:-unknown} is too old for the prebuilt Python packages"
info "glibc $glibc, OpenSSL $(python3 -c 'import ssl; print(ssl.OPENSSL_VERSION.split()[1])'), SQLite $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')"
memory_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
if [ "$memory_mb" -lt 2000 ]; then
    warn "only $memory_mb MB of memory: Switchboard needs 2 GB (gunicorn, a Celery worker, Redis and nginx)"
else
    info "memory: $memory_mb MB"
fi
disk_path="${ROOT:-/}"
while [ ! -e "$disk_path" ]; do disk_path="$(dirname "$disk_path")"; done
disk_mb="$(df -Pm "$disk_path" | awk 'NR == 2 {print $4}')"
if [ "$disk_mb" -lt 2048 ]; then
    warn "only $disk_mb MB free on $disk_path: the virtualenv, database and logs want 2 GB"
else
    info "disk: $disk_mb MB free on $disk_path"
fi
if [ -z "$ROOT" ] && ! is_root && [ "$DRY_RUN" -eq 0 ]; then
    FIX="run it as root: sudo ./deploy.sh $*; or try it out under a directory of yours: ./deploy.sh --root=\$HOME/switchboard-root"
    fail "deploy.sh writes /etc, /opt and /var and starts services: it needs root"
fi
if [ -n "$ROOT" ]; then
    info "installing under $ROOT (--root): no apt, no service user; services run by the supervisor as $SERVICE_USER"
fi

# -- 2 ----------------------------------------------------------------------------------

step "System packages: redis-server, nginx, openssl, logrotate, python3-venv"
missing=()
redis_local=0
REDIS_URL_WANTED="${OPT[redis-url]:-$(env_get REDIS_URL)}"
REDIS_URL_WANTED="${REDIS_URL_WANTED:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"
read -r redis_host _ < <(redis_host_port "$REDIS_URL_WANTED")
case "$redis_host" in 127.0.0.1 | localhost | ::1) redis_local=1 ;; esac
if [ "$redis_local" -eq 1 ] && ! command -v redis-server >/dev/null && ! redis_answers "$REDIS_URL_WANTED"; then
    missing+=(redis-server)
fi
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
if [ -z "$VENV_GIVEN" ] && [ ! -x "$VENV/bin/python" ]; then
    probe="$(mktemp -d)"
    python3 -m venv "$probe/venv" >/dev/null 2>&1 || missing+=(python3-venv)
    rm -rf "$probe"
fi
if [ "${#missing[@]}" -eq 0 ]; then
    info "all present"
elif [ -z "$ROOT" ] && { is_root || [ "$DRY_RUN" -eq 1 ]; }; then
    FIX="check the apt output above and the network; then run deploy.sh again"
    if [ "$DRY_RUN" -eq 1 ]; then
        info "would run: apt-get install -y ${missing[*]}"
    else
        apt_install "${missing[@]}"
    fi
else
    FIX="install them first: sudo apt-get install -y ${missing[*]}"
    fail "missing: ${missing[*]}"
fi
NGINX_BIN="$(command -v nginx || printf /usr/sbin/nginx)"
LOGROTATE_BIN="$(command -v logrotate || printf /usr/sbin/logrotate)"

# -- 3 ----------------------------------------------------------------------------------

step "Service user and directories"
if [ "$SERVICE_USER" = switchboard ]; then
    if id -u switchboard >/dev/null 2>&1; then
        info "user switchboard exists"
    else
        FIX="create it by hand: useradd --system --user-group --home-dir /var/lib/switchboard --shell /usr/sbin/nologin switchboard"
        run useradd --system --user-group --home-dir "$VAR_DIR" --no-create-home --shell /usr/sbin/nologin switchboard
        did "created the system user switchboard"
    fi
else
    info "services run as $SERVICE_USER"
fi
FIX="check that the file system is writable and has room"
make_dir "$ETC_DIR" 750 "root:$SERVICE_GROUP"
make_dir "$APP_HOME" 755
make_dir "$VAR_DIR" 750 "$SERVICE_USER:$SERVICE_GROUP"
make_dir "$LOG_DIR" 750 "$SERVICE_USER:$SERVICE_GROUP"
make_dir "$RUN_DIR" 755
make_dir "$BIN_DIR" 755
info "settings and secrets in $ETC_DIR, code in $APP_DIR, data in $VAR_DIR, logs in $LOG_DIR"

# -- 4 ----------------------------------------------------------------------------------

step "Application code and virtualenv"
FIX="check the disk space and permissions of $APP_HOME"
# Each deploy's code goes into a release directory of its own and $APP_DIR points at the
# current one, so processes still running from the last release keep finding its files
# until step 13 restarts them; the release before is kept for going back.
if [ "$SOURCE_DIR" = "$(readlink -f "$APP_DIR" 2>/dev/null || true)" ]; then
    info "running from the installed copy: code unchanged"
elif [ "$DRY_RUN" -eq 1 ]; then
    info "would copy $SOURCE_DIR to a new release in $APP_HOME/releases/ and point $APP_DIR at it"
else
    release="$(date -u +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$APP_HOME/releases/$release"
    tar -C "$SOURCE_DIR" --exclude=./.git --exclude=./.venv --exclude=./var --exclude='__pycache__' \
        --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . | tar -C "$APP_HOME/releases/$release" -xf -
    chmod -R go-w "$APP_HOME/releases/$release"
    ln -sfn "releases/$release" "$APP_DIR.new"
    mv -Tf "$APP_DIR.new" "$APP_DIR"
    info "copied $SOURCE_DIR to $APP_HOME/releases/$release ($APP_DIR points at it)"
fi
if [ -n "$VENV_GIVEN" ]; then
    FIX="--venv must name a virtualenv with requirements.txt installed (it needs bin/gunicorn and bin/celery)"
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/gunicorn" ] && [ -x "$VENV/bin/celery" ] \
        || fail "$VENV is not a virtualenv with Switchboard's requirements"
    info "using the virtualenv $VENV (--venv): not installing anything into it"
else
    stamp="$VENV/.installed-requirements.sha256"
    wanted="$( { python3 -c 'import sys; print(sys.version)'; cat requirements.txt; } | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        FIX="remove the broken virtualenv (rm -rf $VENV) and run deploy.sh again"
        run python3 -m venv "$VENV"
        did "created $VENV"
    fi
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        info "requirements.txt unchanged since the last install"
    else
        FIX="check the network and the pip output above; to start the virtualenv over: rm -rf $VENV"
        info "installing requirements.txt (a few minutes the first time)"
        run "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r requirements.txt
        if [ "$DRY_RUN" -eq 0 ]; then printf '%s\n' "$wanted" >"$stamp"; fi
        did "installed requirements.txt"
    fi
fi
render deploy/switchboard-manage.sh ENV_FILE="$ENV_FILE" APP_DIR="$APP_DIR" VENV="$VENV" \
    USER="$SERVICE_USER" GROUP="$SERVICE_GROUP" HOME_DIR="$VAR_DIR" | put "$BIN_DIR/switchboard-manage" 755
info "$BIN_DIR/switchboard-manage runs manage.py with the installed settings (try: switchboard-manage doctor)"

# -- 5 ----------------------------------------------------------------------------------

step "Settings and secrets"
FIX="check that $ETC_DIR is writable"
ensure_secret "$ETC_DIR/secret_key" "Django SECRET_KEY" 'import secrets; print(secrets.token_urlsafe(64))'
ensure_secret "$ETC_DIR/secret_keys" "encryption key ring (back it up with the database)" \
    'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'
ensure_secret "$ETC_DIR/metrics_token" "/metrics bearer token" 'import secrets; print(secrets.token_urlsafe(32))'
if [ ! -f "$ENV_FILE" ]; then
    printf '%s\n' \
        "# Switchboard's settings, read by the switchboard-* services and switchboard-manage." \
        "# Every variable is described in docs/configuration.md and deploy/.env.example." \
        "# deploy.sh keeps what you add or change here, except the lines it manages (the" \
        "# paths of its layout and the options you pass it)." | put "$ENV_FILE" 640 "root:$SERVICE_GROUP"
    [ "$DRY_RUN" -eq 1 ] || info "created $ENV_FILE"
fi
# The public name, and the names doctor and deploy.sh use on this machine.
hosts="$DOMAIN"
names=(localhost 127.0.0.1)
if [ -z "$ROOT" ]; then
    read -r -a more <<<"$(hostname 2>/dev/null) $(hostname -I 2>/dev/null)"
    names+=("${more[@]}")
fi
for name in "${names[@]}"; do
    case "$name" in *:*) name="[$name]" ;; esac
    case ",$hosts," in *",$name,"*) ;; *) hosts="$hosts,$name" ;; esac
done
env_set SWITCHBOARD_ENV production
env_set SECRET_KEY_FILE "$ETC_DIR/secret_key"
env_set SWITCHBOARD_SECRET_KEYS_FILE "$ETC_DIR/secret_keys"
env_set METRICS_TOKEN_FILE "$ETC_DIR/metrics_token"
env_set SWITCHBOARD_VAR_DIR "$VAR_DIR"
env_set STATIC_ROOT "$VAR_DIR/static"
env_set LOG_DIR "$LOG_DIR"
env_set SWITCHBOARD_SERVICE_MANAGER "$MANAGER"
env_set SWITCHBOARD_BIND "$BIND"
env_set SWITCHBOARD_GUNICORN_BIND "$GUNICORN_BIND"
env_set SWITCHBOARD_WEB_WORKERS "$WEB_WORKERS"
env_set SWITCHBOARD_WEB_THREADS "$WEB_THREADS"
env_set SWITCHBOARD_PUBLIC_URL "$PUBLIC_URL"
env_set TLS_CERTIFICATE_PATH "${OPT[tls-cert]:-$TLS_DIR/fullchain.pem}"
env_set REDIS_URL "$REDIS_URL_WANTED"
if [ -n "${GIVEN[domain]:-}" ] || [ -z "$(env_get ALLOWED_HOSTS)" ]; then
    env_set ALLOWED_HOSTS "$hosts"
fi
# nginx on this machine passes the client's address in X-Forwarded-For.
trusted="$(env_get TRUSTED_PROXIES)"
case ",$trusted," in
    *",127.0.0.1/32,"* | *",127.0.0.1,"*) ;;
    *) env_set TRUSTED_PROXIES "${trusted:+$trusted,}127.0.0.1/32,::1/128" ;;
esac
if [ -n "${OPT[database-url]:-}" ]; then
    env_set DATABASE_URL "${OPT[database-url]}"
fi
for pair in "${EXTRA_SETTINGS[@]}"; do
    env_set "${pair%%=*}" "${pair#*=}"
done
if [ "$DRY_RUN" -eq 0 ]; then
    {
        printf '# deploy.sh options of the last run; options given next time win.\n'
        for key in model-type gpu port gunicorn-port domain listen https-port http-port tls-cert tls-key model-url \
            model-name supervisor web-workers web-threads venv; do
            value="${OPT[$key]:-}"
            case "$key" in
                model-type) value="$MODEL_TYPE" ;; gpu) value="$GPU" ;; port) value="$PORT" ;;
                https-port) value="$HTTPS_PORT" ;; http-port) value="$HTTP_PORT" ;;
                web-workers) value="$WEB_WORKERS" ;; web-threads) value="$WEB_THREADS" ;;
            esac
            [ -z "$value" ] || printf '%s=%s\n' "$key" "$value"
        done
    } | put "$STATE_FILE" 640 "root:$SERVICE_GROUP"
fi
did "production settings in $ENV_FILE (SWITCHBOARD_ENV=production, TRUSTED_PROXIES with 127.0.0.1 for nginx)"

# -- 6 ----------------------------------------------------------------------------------

step "Redis"
if [ "$DRY_RUN" -eq 1 ]; then
    info "would make sure Redis answers at $REDIS_URL_WANTED (starting redis-server if it is local)"
else
    no_install=1
    [ -n "$ROOT" ] || no_install=0
    ensure_redis "$REDIS_URL_WANTED" "$no_install" "$VAR_DIR"
    if [ "$redis_local" -eq 1 ] && has_systemd && [ -z "$ROOT" ]; then
        run systemctl enable --quiet redis-server 2>/dev/null || warn "could not enable redis-server at boot"
    fi
fi

# -- 7 ----------------------------------------------------------------------------------

step "Database migrations"
FIX="check that the database answers and DATABASE_URL in $ENV_FILE is right (docs/configuration.md); then run deploy.sh again"
if [ -z "$(env_get DATABASE_URL)" ]; then
    info "no DATABASE_URL: SQLite in $VAR_DIR/switchboard.sqlite3 (use --database-url=postgres://… to scale out)"
fi
run manage migrate --noinput

# -- 8 ----------------------------------------------------------------------------------

step "Static files"
FIX="read the error above; $VAR_DIR/static must be writable by $SERVICE_USER"
run manage collectstatic --noinput --verbosity 0
did "collected into $VAR_DIR/static"

# -- 9 ----------------------------------------------------------------------------------

step "First admin"
FIX="create the admin by hand: $BIN_DIR/switchboard-manage createsuperuser"
if [ "$DRY_RUN" -eq 1 ]; then
    info "would create the first admin unless one exists (SWITCHBOARD_ADMIN_USER/PASSWORD, or asking on the terminal)"
else
    has_admin="$(manage shell --no-imports -c \
        'from django.contrib.auth import get_user_model; print(get_user_model().objects.filter(is_superuser=True).exists())' | tail -n 1)"
    admin_email="${OPT[admin-email]:-${SWITCHBOARD_ADMIN_EMAIL:-}}"
    if [ "$has_admin" = True ]; then
        info "an admin account exists"
    elif [ -n "${SWITCHBOARD_ADMIN_USER:-}" ] && [ -n "${SWITCHBOARD_ADMIN_PASSWORD:-}" ]; then
        info "creating admin '$SWITCHBOARD_ADMIN_USER' from SWITCHBOARD_ADMIN_USER / SWITCHBOARD_ADMIN_PASSWORD"
        DJANGO_SUPERUSER_PASSWORD="$SWITCHBOARD_ADMIN_PASSWORD" DJANGO_SUPERUSER_USERNAME="$SWITCHBOARD_ADMIN_USER" \
            DJANGO_SUPERUSER_EMAIL="${admin_email:-$SWITCHBOARD_ADMIN_USER@$DOMAIN}" manage createsuperuser --noinput
    elif [ -t 0 ]; then
        info "no admin account yet; create one now"
        manage createsuperuser ${admin_email:+--email "$admin_email"}
    else
        warn "no admin account yet, and no terminal to ask for one. Create it with:"
        warn "    $BIN_DIR/switchboard-manage createsuperuser"
        warn "or run deploy.sh with SWITCHBOARD_ADMIN_USER and SWITCHBOARD_ADMIN_PASSWORD set."
    fi
fi
info "Two-factor sign-in: the admin's first sign-in at $PUBLIC_URL/admin/ asks for the password, then"
info "shows a QR code to scan with an authenticator app (Google Authenticator, Authy, 1Password…),"
info "asks for its six-digit code, and shows ten backup codes once. Keep them somewhere safe."

# -- 10 ---------------------------------------------------------------------------------

step "Default model backend ($MODEL_TYPE, gpu=$GPU)"
if [ "$GPU" = true ]; then
    preset_name=local
    model_url="${OPT[model-url]:-http://127.0.0.1:11434/v1}"
    model_name="${OPT[model-name]:-qwen2.5:7b-instruct}"
    model_timeout=60
else
    preset_name=cloud
    model_url="${OPT[model-url]:-https://api.openai.com/v1}"
    model_name="${OPT[model-name]:-gpt-4o-mini}"
    model_timeout=30
fi
FIX="check the model URL and name; or create the backend in the console (Routing › Model backends)"
if [ "$DRY_RUN" -eq 1 ]; then
    info "would create model backend '$preset_name' ($model_name at $model_url) unless a backend exists"
else
    backends="$(manage shell --no-imports -c 'from routing.models import ModelBackend; print(ModelBackend.objects.count())' | tail -n 1)"
    if [ "$backends" != 0 ]; then
        info "$backends model backend(s) exist: leaving them as they are"
    else
        preset="$(python3 - "$preset_name" "$model_url" "$model_name" "$model_timeout" <<'PY'
import json
import os
import sys

name, url, model, timeout = sys.argv[1:]
backend = {"name": name, "kind": "openai", "base_url": url, "model": model, "timeout": int(timeout)}
if os.environ.get("SWITCHBOARD_MODEL_API_KEY"):
    backend["api_key"] = os.environ["SWITCHBOARD_MODEL_API_KEY"]
print(json.dumps({"backends": [backend]}))
PY
)"
        manage import_config - <<<"$preset" | sed 's/^/      /'
        info "created model backend '$preset_name': $model_name at $model_url"
        if [ "$GPU" = true ]; then
            info "start the model server on this machine, e.g. Ollama: ollama pull $model_name (it serves $model_url);"
            info "or vLLM: vllm serve MODEL --port 8000, and change the backend's URL to http://127.0.0.1:8000/v1"
        elif [ -z "${SWITCHBOARD_MODEL_API_KEY:-}" ]; then
            info "paste its API key in the console: Routing › Model backends › $preset_name"
        fi
    fi
    info "bots answer with the backend chosen as their default backend (or by routing rules)"
fi

# -- 11 ---------------------------------------------------------------------------------

step "nginx on $HTTPS_PORT (HTTPS) and $HTTP_PORT, TLS certificate"
if [ -n "${OPT[tls-cert]:-}" ]; then
    TLS_CERT="${OPT[tls-cert]}"
    TLS_KEY="${OPT[tls-key]}"
    FIX="--tls-cert and --tls-key must name readable PEM files (certificate with its chain, and the key)"
    [ -r "$TLS_CERT" ] && [ -r "$TLS_KEY" ] || fail "cannot read $TLS_CERT or $TLS_KEY"
    info "serving the certificate $TLS_CERT"
else
    TLS_CERT="$TLS_DIR/fullchain.pem"
    TLS_KEY="$TLS_DIR/privkey.pem"
    make_dir "$TLS_DIR" 755
    if [ -s "$TLS_CERT" ] && [ -s "$TLS_KEY" ]; then
        info "keeping the certificate in $TLS_CERT"
    else
        FIX="read the openssl error above"
        san="DNS:$DOMAIN,DNS:localhost,IP:127.0.0.1"
        [[ "$DOMAIN" =~ ^[0-9.]+$ ]] && san="IP:$DOMAIN,DNS:localhost,IP:127.0.0.1"
        run openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$DOMAIN" -addext "subjectAltName=$san" \
            -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null
        run chmod 600 "$TLS_KEY"
        run chmod 644 "$TLS_CERT"
        did "made a self-signed certificate for $DOMAIN (valid 825 days) in $TLS_DIR"
    fi
    info "to serve a real certificate: put its full chain in $TLS_CERT and its key in $TLS_KEY"
    info "(or run deploy.sh --tls-cert=FILE --tls-key=FILE), then reload nginx"
fi
if [ -n "$LISTEN" ]; then
    https_listen="$LISTEN:$HTTPS_PORT"
    http_listen="$LISTEN:$HTTP_PORT"
    direct_listen="$BIND"
    case "$LISTEN" in *:*) https_listen="[$LISTEN]:$HTTPS_PORT" http_listen="[$LISTEN]:$HTTP_PORT" ;; esac
else
    https_listen="$HTTPS_PORT"
    http_listen="$HTTP_PORT"
    direct_listen="$PORT"
fi
default_server=""
if [ -z "${OPT[domain]:-}" ]; then
    # No host name: this site answers whatever name the machine is called by.
    default_server=" default_server"
    if [ -z "$ROOT" ] && [ -L "$NGINX_DIR/sites-enabled/default" ]; then
        run rm -f "$NGINX_DIR/sites-enabled/default"
        did "disabled nginx's stock default site (sites-enabled/default) so this one answers every name"
    fi
fi
max_body="$(env_get CALLBACK_MAX_BODY_BYTES)"
for snippet in switchboard-proxy switchboard-clients; do
    render "deploy/nginx/$snippet.conf" | put "$NGINX_DIR/snippets/$snippet.conf" 644
done
render deploy/nginx/switchboard.conf GUNICORN_BIND="$GUNICORN_BIND" DIRECT_LISTEN="$direct_listen" \
    HTTP_LISTEN="$http_listen" HTTPS_LISTEN="$https_listen" \
    DEFAULT_SERVER="$default_server" SERVER_NAME="$([ -n "${OPT[domain]:-}" ] && printf '%s' "$DOMAIN" || printf '_')" \
    HTTPS_PORT_SUFFIX="$([ "$HTTPS_PORT" = 443 ] || printf ':%s' "$HTTPS_PORT")" TLS_CERT="$TLS_CERT" TLS_KEY="$TLS_KEY" \
    MAX_BODY="$(nginx_body_limit "${max_body:-1048576}")" NGINX_DIR="$NGINX_DIR" \
    | put "$NGINX_DIR/sites-available/switchboard.conf" 644
run mkdir -p "$NGINX_DIR/sites-enabled"
run ln -sfn ../sites-available/switchboard.conf "$NGINX_DIR/sites-enabled/switchboard.conf"
if [ -n "$ROOT" ]; then
    NGINX_CONF="$NGINX_DIR/nginx.conf"
    make_dir "$RUN_DIR/nginx" 755
    render deploy/nginx/nginx.conf RUN_DIR="$RUN_DIR" NGINX_DIR="$NGINX_DIR" | put "$NGINX_CONF" 644
else
    NGINX_CONF=/etc/nginx/nginx.conf
fi
FIX="read nginx's message above; the site is $NGINX_DIR/sites-available/switchboard.conf (is another server using port $HTTPS_PORT or $HTTP_PORT?)"
run "$NGINX_BIN" -t -q -c "$NGINX_CONF"
did "nginx accepts the configuration ($NGINX_DIR/sites-available/switchboard.conf)"
if [ -z "$ROOT" ]; then
    info "nginx takes the new site once the services have restarted (step 13): until then gunicorn may still hold port $PORT"
fi

# -- 12 ---------------------------------------------------------------------------------

step "logrotate for $LOG_DIR"
sed "s#/var/log/switchboard/#$LOG_DIR/#" deploy/logrotate | put "$LOGROTATE_FILE" 644
FIX="read logrotate's message above; the policy is $LOGROTATE_FILE"
if [ "$DRY_RUN" -eq 0 ]; then
    "$LOGROTATE_BIN" -d -s "$RUN_DIR/logrotate.status" "$LOGROTATE_FILE" >/dev/null 2>"$RUN_DIR/logrotate.check" \
        || { cat "$RUN_DIR/logrotate.check" >&2; fail "logrotate refuses $LOGROTATE_FILE"; }
    rm -f "$RUN_DIR/logrotate.check" "$RUN_DIR/logrotate.status"
fi
info "daily, 7 kept, compressed: $LOGROTATE_FILE"
if [ -n "$ROOT" ]; then
    info "(under --root, the system's logrotate does not read it)"
elif ! has_systemd && ! [ -x /etc/cron.daily/logrotate ]; then
    warn "neither systemd's logrotate.timer nor cron runs logrotate here; run it daily: logrotate $LOGROTATE_FILE"
fi

# -- 13 ---------------------------------------------------------------------------------

step "Services: gunicorn on $GUNICORN_BIND behind nginx on $BIND, Celery worker, Celery beat ($MANAGER)"
# The worker's name is this installation's queue: two installations sharing a broker
# must have a queue each, and workers of the same name would answer doctor's ping as one.
worker_name="$(env_get CELERY_TASK_DEFAULT_QUEUE)"
unit_values=(APP_DIR="$APP_DIR" USER="$SERVICE_USER" GROUP="$SERVICE_GROUP" ENV_FILE="$ENV_FILE" RUN_DIR="$RUN_DIR"
    VENV="$VENV" GUNICORN_BIND="$GUNICORN_BIND" WEB_WORKERS="$WEB_WORKERS" WEB_THREADS="$WEB_THREADS"
    WORKER_NAME="${worker_name:-switchboard}" VAR_DIR="$VAR_DIR" LOG_DIR="$LOG_DIR")
for service in "${SERVICES[@]}"; do
    render "deploy/systemd/switchboard-$service.service" "${unit_values[@]}" | put "$UNIT_DIR/switchboard-$service.service" 644
done
if [ -n "$ROOT" ]; then
    render deploy/systemd/switchboard-nginx.service ROOT="$ROOT" NGINX="$NGINX_BIN" NGINX_DIR="$NGINX_DIR" \
        | put "$UNIT_DIR/switchboard-nginx.service" 644
fi
render deploy/switchboard-supervisor.sh VENV="$VENV" APP_DIR="$APP_DIR" UNIT_DIR="$UNIT_DIR" RUN_DIR="$RUN_DIR" \
    LOG_DIR="$LOG_DIR" | put "$BIN_DIR/switchboard-supervisor" 755
info "units in $UNIT_DIR: $(systemd_units | tr '\n' ' ')"
FIX="see why it does not start: journalctl -u switchboard-web -u switchboard-worker -u switchboard-beat -n 50"
[ "$MANAGER" = systemd ] || FIX="see why it does not start: $LOG_DIR/supervisor.log and $LOG_DIR/{web,worker,beat}.log"
if [ "$NO_START" -eq 1 ]; then
    info "not starting anything (--no-start); start them with:"
    if [ "$MANAGER" = systemd ]; then
        info "    systemctl daemon-reload && systemctl enable --now $(systemd_units | tr '\n' ' ')"
    else
        info "    $BIN_DIR/switchboard-supervisor start"
    fi
elif [ "$MANAGER" = systemd ]; then
    mapfile -t units < <(systemd_units)
    run systemctl daemon-reload
    # Stopped together, so the metrics of the old processes can be cleared before the new
    # ones start (PROMETHEUS_MULTIPROC_DIR adds up every file in it).
    run systemctl stop "${units[@]}"
    run rm -rf "$RUN_DIR/metrics"
    run systemctl enable --now --quiet "${units[@]}"
    did "started and enabled at boot: ${units[*]} (Restart=on-failure)"
else
    if has_systemd; then
        info "the services run under deploy/supervisor.py, not systemd ($([ -n "$ROOT" ] && printf -- '--root' || printf -- '--supervisor'))"
    else
        info "systemd is not running here (a container?): the same three services run under"
        info "deploy/supervisor.py, which restarts one that fails. It does not start at boot:"
        info "run $BIN_DIR/switchboard-supervisor start from your container's entry point or rc.local."
    fi
    run "$BIN_DIR/switchboard-supervisor" stop >/dev/null
    run "$BIN_DIR/switchboard-supervisor" start
    info "stop: $BIN_DIR/switchboard-supervisor stop; status: $BIN_DIR/switchboard-supervisor status"
fi
# The system's nginx takes the site only now: until the services restarted, a gunicorn
# of the last release may still have listened on --port itself.
if [ -z "$ROOT" ] && [ "$NO_START" -eq 0 ]; then
    FIX="see why nginx does not start: journalctl -u nginx -n 50 (or /var/log/nginx/error.log); is port $PORT free?"
    if has_systemd; then
        run systemctl enable --quiet nginx
        run systemctl reload-or-restart nginx
    elif [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
        run "$NGINX_BIN" -s reload
    else
        run "$NGINX_BIN"
        did "started nginx (no systemd: it runs as a daemon of its own; it does not start at boot)"
    fi
    did "nginx serves $PUBLIC_URL and http://$DOMAIN:$PORT/"
fi
if [ "$NO_START" -eq 0 ] && [ "$DRY_RUN" -eq 0 ] && [ -d "$APP_HOME/releases" ]; then
    # Nothing runs older code now: keep the current release and the one before.
    find "$APP_HOME/releases" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +3 \
        | cut -d' ' -f2- | while IFS= read -r old; do rm -rf "$old"; done
fi

# -- 14 ---------------------------------------------------------------------------------

step "Check and summary"
if [ "$NO_START" -eq 1 ] || [ "$DRY_RUN" -eq 1 ]; then
    info "would wait for $(local_url)/readyz, then run: switchboard-manage doctor"
else
    FIX="read the service logs ($([ "$MANAGER" = systemd ] && printf 'journalctl -u switchboard-web' || printf '%s/web.log' "$LOG_DIR")); is port $PORT free?"
    ready=0
    for _ in $(seq 1 120); do
        if python3 - "$(local_url)/readyz" "$DOMAIN" <<'PY'
import sys
import urllib.request

request = urllib.request.Request(sys.argv[1], headers={"Host": sys.argv[2]})
try:
    sys.exit(0 if urllib.request.urlopen(request, timeout=2).status == 200 else 1)
except OSError:
    sys.exit(1)
PY
        then
            ready=1
            break
        fi
        sleep 1
    done
    [ "$ready" -eq 1 ] || fail "gunicorn did not answer $(local_url)/readyz with 200 within 2 minutes"
    # The worker and beat need a few seconds more than gunicorn to come up.
    FIX="fix what doctor reports above, then check again: $BIN_DIR/switchboard-manage doctor"
    for attempt in $(seq 1 12); do
        if manage doctor >"$RUN_DIR/doctor.out" 2>&1; then
            break
        fi
        if [ "$attempt" -eq 12 ]; then
            sed 's/^/      /' "$RUN_DIR/doctor.out"
            fail "doctor still finds problems after a minute"
        fi
        sleep 5
    done
    sed 's/^/      /' "$RUN_DIR/doctor.out"
    rm -f "$RUN_DIR/doctor.out"
fi

if [ "$DRY_RUN" -eq 1 ]; then
    printf '\nDry run: nothing was changed. Without --dry-run, Switchboard would answer at:\n'
elif [ "$NO_START" -eq 1 ]; then
    printf '\nSwitchboard is installed (not started: --no-start). Once started:\n'
else
    printf '\nSwitchboard is deployed.\n'
fi
printf '  Console:    %s/admin/   (two-factor sign-in; admins from ADMIN_ALLOWED_CIDRS only)\n' "$PUBLIC_URL"
printf '  Callbacks:  %s/callback/<platform>/<bot-uuid>/\n' "$PUBLIC_URL"
printf '              or http://%s:%s/callback/<platform>/<bot-uuid>/ over plain HTTP\n' "$DOMAIN" "$PORT"
if [ "$DRY_RUN" -eq 0 ]; then
    manage shell --no-imports -c '
from bots.models import Bot
for bot in Bot.objects.order_by("name"):
    print(f"{bot.name} ({bot.platform}): {bot.callback_path}")
' | while IFS= read -r line; do printf '              %s\n' "${line/: \//: $PUBLIC_URL/}"; done
fi
printf '  Metrics:    %s/metrics  (Authorization: Bearer <%s>) or from this machine\n' "$PUBLIC_URL" "$ETC_DIR/metrics_token"
printf '  Logs:       %s/switchboard.log (JSON lines)\n' "$LOG_DIR"
printf '  Settings:   %s; after a change: %s\n' "$ENV_FILE" \
    "$([ "$MANAGER" = systemd ] && printf 'systemctl restart switchboard-web switchboard-worker switchboard-beat' || printf '%s/switchboard-supervisor restart' "$BIN_DIR")"
printf '  Check:      %s/switchboard-manage doctor\n' "$BIN_DIR"
printf '  Back up:    %s (secrets) and the database%s\n' "$ETC_DIR" "$([ -n "$(env_get DATABASE_URL)" ] || printf ' (%s/switchboard.sqlite3)' "$VAR_DIR")"
