# Shared by scripts/start.sh, scripts/test.sh and deploy.sh; source it, do not run it.
#
# Each script announces its steps with `step`, sets FIX to the advice for the step that
# is running, and installs `trap on_error ERR`, so any failing command ends with the name
# of the step and what to do about it instead of a bare exit code.

STEP_NUMBER=0
STEP_TITLE=""
FIX=""
APT_UPDATED=0

step() {
    STEP_NUMBER=$((STEP_NUMBER + 1))
    STEP_TITLE="$1"
    FIX=""
    printf '\n[%d/%d] %s\n' "$STEP_NUMBER" "$STEP_COUNT" "$STEP_TITLE"
}

info() { printf '      %s\n' "$*"; }

warn() { printf '      WARNING: %s\n' "$*" >&2; }

# Stop with the failed step, the reason, and how to fix it.
fail() {
    local reason="$1"
    trap - ERR
    {
        printf '\nFAILED at step %d/%d (%s): %s\n' "$STEP_NUMBER" "$STEP_COUNT" "$STEP_TITLE" "$reason"
        if [ -n "$FIX" ]; then
            printf 'How to fix: %s\n' "$FIX"
        fi
    } >&2
    exit 1
}

on_error() {
    local code=$?
    fail "the command \`$BASH_COMMAND\` exited with code $code"
}

is_root() { [ "$(id -u)" -eq 0 ]; }

has_systemd() { [ -d /run/systemd/system ]; }

# apt-get install, running `apt-get update` once per script run first.
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        info "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    info "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Python 3.11+ that can create a virtualenv. Debian ships `venv` without ensurepip's
# wheels (they are in python3-venv), so the only reliable test is making one.
ensure_python_venv() {
    local no_install="$1"
    FIX="install Python 3.11 or newer: apt-get install -y python3"
    command -v python3 >/dev/null || fail "python3 is not installed"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "$(python3 --version 2>&1) is too old; Switchboard needs Python 3.11 or newer"
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' 2>/dev/null; then
        info "virtualenv .venv exists ($(.venv/bin/python --version))"
        return
    fi
    local probe
    probe="$(mktemp -d)"
    if python3 -m venv "$probe/venv" >/dev/null 2>&1; then
        rm -rf "$probe"
        info "$(python3 --version) can create virtualenvs"
        return
    fi
    rm -rf "$probe"
    FIX="run: sudo apt-get install -y python3-venv   (then run this script again)"
    [ "$no_install" -eq 0 ] || fail "python3 -m venv does not work and --no-install forbids installing python3-venv"
    is_root || fail "python3 -m venv does not work (the python3-venv package is missing) and this script is not running as root"
    apt_install python3-venv
    probe="$(mktemp -d)"
    python3 -m venv "$probe/venv" >/dev/null || { rm -rf "$probe"; fail "python3 -m venv still fails after installing python3-venv"; }
    rm -rf "$probe"
    info "installed python3-venv"
}

# A fingerprint of a requirements file and the files it includes with -r.
requirements_hash() {
    local file="$1"
    {
        python3 -c 'import sys; print(sys.version)'
        cat requirements.txt
        [ "$file" = requirements.txt ] || cat "$file"
    } | sha256sum | cut -d' ' -f1
}

# Create .venv if needed and install FILE into it, but only when FILE (or requirements.txt,
# which every requirements file includes) changed since the last successful install.
ensure_requirements() {
    local file="$1" no_install="$2"
    local stamp=".venv/.installed-${file%.txt}.sha256"
    local wanted
    wanted="$(requirements_hash "$file")"
    if [ ! -x .venv/bin/python ]; then
        FIX="run this script without --no-install, or create it: python3 -m venv .venv && .venv/bin/pip install -r $file"
        [ "$no_install" -eq 0 ] || fail ".venv does not exist and --no-install forbids creating it"
        FIX="remove the broken virtualenv (rm -rf .venv) and run this script again"
        rm -rf .venv
        info "creating .venv"
        python3 -m venv .venv
    fi
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        info "$file unchanged since the last install; nothing to do"
        return
    fi
    if [ "$no_install" -eq 1 ]; then
        warn "$file changed since the last install (or was never installed by this script); --no-install: not installing"
        return
    fi
    FIX="check the network connection and the pip output above; to start from scratch: rm -rf .venv"
    info "installing $file (this takes a few minutes the first time)"
    .venv/bin/python -m pip install --disable-pip-version-check --quiet -r "$file"
    printf '%s\n' "$wanted" >"$stamp"
    info "installed $file"
}

# Print "host port" of a redis:// URL (127.0.0.1 6379 when absent).
redis_host_port() {
    python3 - "$1" <<'PY'
import sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
print(url.hostname or "127.0.0.1", url.port or 6379)
PY
}

# Succeeds when a Redis server answers PING at the URL. Plain python3, no packages, so it
# works before the virtualenv exists.
redis_answers() {
    python3 - "$1" <<'PY'
import socket
import ssl
import sys
from urllib.parse import unquote, urlsplit

url = urlsplit(sys.argv[1])
try:
    if url.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(2)
        sock.connect(url.path)
    else:
        sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=2)
        if url.scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname)
    with sock:
        if url.password:
            auth = [url.username, url.password] if url.username else [url.password]
            parts = ["AUTH", *(unquote(p) for p in auth)]
            command = f"*{len(parts)}\r\n" + "".join(f"${len(p.encode())}\r\n{p}\r\n" for p in parts)
            sock.sendall(command.encode())
            sock.recv(1024)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        sys.exit(0 if sock.recv(1024).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

# Redis answering at REDIS_URL: install redis-server with apt if it is missing, start it
# if it is not running (systemd when the machine runs it, a daemonized server otherwise).
ensure_redis() {
    local url="$1" no_install="$2" var_dir="$3"
    if redis_answers "$url"; then
        info "Redis answers at $(redis_host_port "$url" | tr ' ' ':')"
        return
    fi
    if [[ "$url" == unix://* ]]; then
        FIX="start the Redis server that owns that socket, or point REDIS_URL at one that is running"
        fail "no Redis answers at $url"
    fi
    local host port
    read -r host port < <(redis_host_port "$url")
    case "$host" in
        127.0.0.1 | localhost | ::1) ;;
        *)
            FIX="start Redis on $host:$port, or point REDIS_URL at a Redis server that is running"
            fail "no Redis answers at $host:$port, and it is not on this machine"
            ;;
    esac
    if ! command -v redis-server >/dev/null; then
        FIX="run: sudo apt-get install -y redis-server   (then run this script again)"
        [ "$no_install" -eq 0 ] || fail "redis-server is not installed and --no-install forbids installing it"
        is_root || fail "redis-server is not installed and this script is not running as root"
        apt_install redis-server
        # The package starts its service where it can; give it a moment before we try.
        for _ in 1 2 3 4 5; do
            redis_answers "$url" && break
            sleep 1
        done
    fi
    if ! redis_answers "$url"; then
        if has_systemd && [ "$port" = 6379 ]; then
            FIX="run: sudo systemctl start redis-server; see: journalctl -u redis-server"
            is_root || fail "Redis is installed but not running, and starting it needs root"
            info "systemctl start redis-server"
            systemctl start redis-server
        else
            local dir password
            mkdir -p "$var_dir/redis"
            dir="$(cd "$var_dir/redis" && pwd)"  # redis-server changes into --dir first
            FIX="see $dir/redis-server.log; is another program using port $port?"
            info "redis-server --daemonize yes --port $port (data and log in $dir)"
            password="$(python3 -c 'import sys; from urllib.parse import unquote, urlsplit; print(unquote(urlsplit(sys.argv[1]).password or ""))' "$url")"
            # 9>&-: the Redis server outlives this script and must not keep start.sh's lock.
            redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
                --logfile "$dir/redis-server.log" --pidfile "$dir/redis-server.pid" \
                ${password:+--requirepass "$password"} 9>&-
        fi
    fi
    for _ in $(seq 1 20); do
        if redis_answers "$url"; then
            info "Redis answers at $host:$port"
            return
        fi
        sleep 0.5
    done
    fail "Redis was started but does not answer at $host:$port after 10 seconds"
}

# nginx installed: apt-get install it when missing (and allowed). Prints nothing; the
# caller says what it uses nginx for.
ensure_nginx() {
    local no_install="$1"
    if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
        return
    fi
    FIX="run: sudo apt-get install -y nginx   (then run this script again)"
    [ "$no_install" -eq 0 ] || fail "nginx is not installed and --no-install forbids installing it"
    is_root || fail "nginx is not installed and this script is not running as root"
    apt_install nginx
}

nginx_binary() { command -v nginx || printf /usr/sbin/nginx; }

# Succeeds when another program listens on HOST:PORT (a bind address, [v6] allowed):
# binding it the way gunicorn and nginx do (SO_REUSEADDR) fails.
port_taken() {
    python3 - "$1" <<'PY'
import socket
import sys

host, _, port = sys.argv[1].rpartition(":")
host = host.strip("[]") or "0.0.0.0"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, int(port)))
    except OSError:
        sys.exit(0)
sys.exit(1)
PY
}

# Who listens on a TCP port, as `ss` names it ("" when it cannot tell).
port_owner() {
    command -v ss >/dev/null || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | awk '{for (i = 6; i <= NF; i++) printf "%s ", $i}' | sed 's/ $//'
}

# A template from deploy/ with every @NAME@ replaced by the NAME=value arguments.
render() {
    python3 - "$@" <<'PY'
import re
import sys

template, *pairs = sys.argv[1:]
values = dict(pair.split("=", 1) for pair in pairs)
text = open(template).read()
missing = sorted(set(re.findall(r"@([A-Z_]+)@", text)) - values.keys())
if missing:
    sys.exit(f"{template}: no value for {', '.join(missing)}")
print(re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text), end="")
PY
}

# nginx's client_max_body_size for a CALLBACK_MAX_BODY_BYTES: room above it, so that
# Switchboard itself refuses a body a little too large with its own answer (a JSON error
# on the API); nginx answers 413 only to one far too large to be worth buffering.
nginx_body_limit() { printf '%s' "$(($1 * 4))"; }
