"""`manage.py doctor`: read-only checks of everything deploy.sh sets up, one result per
check, each failure with the command or change that fixes it.

A check is a function registered with @check, in the order they run. It returns a
Result or raises Failed; any other exception also counts as a failure of that check,
with its message.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from django.conf import settings

OK, FAIL, SKIP = "ok", "fail", "skip"

MIN_FREE_BYTES = 1024**3
MIN_FREE_FRACTION = 0.05
MAX_CLOCK_SKEW = 2.0
CERTIFICATE_MIN_DAYS = 14


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    detail: str
    fix: str = ""


class Failed(Exception):
    """The check failed: what is wrong, and what to do about it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


class Skipped(Exception):
    """The check does not apply here; the message says why."""


Check = Callable[["Options"], str]


@dataclass(frozen=True)
class Options:
    worker_timeout: float = 3.0


CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS[name] = function
        return function

    return register


def service_fix(service: str) -> str:
    """How to (re)start one of our three services with what runs them here."""
    manager = settings.SWITCHBOARD_SERVICE_MANAGER
    if manager == "systemd":
        unit = f"switchboard-{service}"
        return f"sudo systemctl restart {unit}; see why it stopped: journalctl -u {unit} -n 50"
    if manager == "supervisor":
        where = f"{settings.LOG_DIR}/{service}.log" if settings.LOG_DIR else f"the {service} output"
        return f"sudo switchboard-supervisor restart; see why it stopped in {where}"
    return {
        "web": "start gunicorn (bash scripts/start.sh starts gunicorn, the worker and beat)",
        "worker": "start a worker: .venv/bin/celery -A config worker (bash scripts/start.sh starts one)",
        "beat": "start beat: .venv/bin/celery -A config beat (bash scripts/start.sh starts it)",
    }[service]


# -- the checks, in the order they run ------------------------------------------------


@check("settings")
def _settings(options: Options) -> str:
    from django.core import checks

    production = settings.PRODUCTION
    messages = checks.run_checks(include_deployment_checks=production)
    serious = [m for m in messages if m.level >= checks.WARNING and not m.is_silenced()]
    if serious:
        ids = ", ".join(sorted({m.id or m.msg[:40] for m in serious}))
        command = "manage.py check --deploy" if production else "manage.py check"
        raise Failed(f"Django's system checks report {ids}", f"run `{command}` to read them; see docs/configuration.md")
    mode = "production" if production else "development (SWITCHBOARD_ENV=production on a server; deploy.sh sets it)"
    return f"{mode}; ALLOWED_HOSTS {','.join(settings.ALLOWED_HOSTS)}; system checks found no issues"


def _secret_source(name: str) -> str:
    """Where a secret came from, failing when its file can be read by others."""
    if os.environ.get(name):
        return f"{name} from the environment"
    path = Path(os.environ.get(f"{name}_FILE") or settings.VAR_DIR / name.lower())
    if not path.exists():
        return f"{name} from the environment"
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise Failed(f"{path} is readable by other users (mode {mode:o})", f"chmod 600 {path}")
    return f"{name} in {path} (mode {mode:o})"


@check("secrets")
def _secrets(options: Options) -> str:
    from django.db import connection

    from bots import encryption
    from bots.management.commands.rotate_secret_keys import encrypted_columns

    sources = [_secret_source("SECRET_KEY"), _secret_source("SWITCHBOARD_SECRET_KEYS")]
    if settings.METRICS_TOKEN:
        sources.append(_secret_source("METRICS_TOKEN"))
    ring = {key.key_id for key in encryption.key_ring()}
    stored = unreadable = 0
    quote = connection.ops.quote_name
    for model, field in encrypted_columns():
        # The stored ciphertext (the ORM would decrypt it): its key id says which key.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {quote(field.column)} FROM {quote(model._meta.db_table)} "  # noqa: S608 (names from the model)
                f"WHERE {quote(field.column)} <> ''"
            )
            for (value,) in cursor.fetchall():
                stored += 1
                unreadable += encryption.key_id_of(value) not in ring
    if unreadable:
        raise Failed(
            f"{unreadable} of {stored} stored credentials were encrypted with a key that is not in "
            "SWITCHBOARD_SECRET_KEYS",
            "restore the key ring from your backup (keep the current key first, add the old one after it)",
        )
    return f"{'; '.join(sources)}; {stored} stored credentials readable with the key ring"


@check("database")
def _database(options: Options) -> str:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    elapsed = (time.perf_counter() - started) * 1000
    where = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        where = f"{connection.settings_dict['HOST'] or 'localhost'}/{where}"
    note = (
        ""
        if connection.vendor != "sqlite" or not settings.PRODUCTION
        else (" (SQLite: one machine only; DATABASE_URL=postgres://… to scale out)")
    )
    return f"{connection.vendor} {where} answers ({elapsed:.1f} ms){note}"


@check("migrations")
def _migrations(options: Options) -> str:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:3]) + (" …" if len(plan) > 3 else "")
        raise Failed(f"{len(plan)} migrations not applied ({names})", "run: manage.py migrate (deploy.sh runs it)")
    return "all applied"


@check("capacity")
def _capacity(options: Options) -> str:
    from django.db import connection

    if connection.vendor != "postgresql":
        raise Skipped(f"{connection.vendor}: no connection limit to check")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        )
        limit, reserved, used = cursor.fetchone()
    usable, pool = limit - reserved, settings.CELERY_WORKER_CONCURRENCY
    workers, threads = settings.SWITCHBOARD_WEB_WORKERS, settings.SWITCHBOARD_WEB_THREADS
    web = workers * threads
    # Every worker process, and every thread of every gunicorn worker, keeps a connection
    # of its own (CONN_MAX_AGE); a restart or another machine like this one needs as many
    # free, or its callbacks fail to record and its tasks fail to claim.
    if usable - used < pool + web:
        raise Failed(
            f"{used} of PostgreSQL's {usable} connections are in use: another machine like this one would not get "
            f"its connections ({pool} worker processes, CELERY_WORKER_CONCURRENCY, and {workers} × {threads} "
            "web threads, SWITCHBOARD_WEB_WORKERS × SWITCHBOARD_WEB_THREADS)",
            "raise max_connections in postgresql.conf and restart PostgreSQL, or lower CELERY_WORKER_CONCURRENCY / "
            "SWITCHBOARD_WEB_WORKERS / SWITCHBOARD_WEB_THREADS (docs/performance.md, How it scales out)",
        )
    return (
        f"{used} of PostgreSQL's {usable} connections in use, room for another machine like this one: "
        f"{pool} worker processes and {workers} × {threads} web threads"
    )


@check("static")
def _static(options: Options) -> str:
    from django.contrib.staticfiles.storage import staticfiles_storage

    manifest = getattr(staticfiles_storage, "manifest_name", None)
    if manifest is None:
        raise Skipped("static files are served from the app directories (no manifest to check)")
    path = Path(settings.STATIC_ROOT) / manifest
    if not path.exists():
        raise Failed(f"{path} is missing: the console would answer 500", "run: manage.py collectstatic --noinput")
    return f"collected in {settings.STATIC_ROOT}"


@check("redis")
def _redis(options: Options) -> str:
    from django_redis import get_redis_connection

    redis = get_redis_connection("default")
    started = time.perf_counter()
    redis.ping()
    elapsed = (time.perf_counter() - started) * 1000
    return f"Redis {redis.info('server').get('redis_version', '?')} answers ({elapsed:.1f} ms)"


@check("broker")
def _broker(options: Options) -> str:
    from kombu import Connection

    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as broker:
        broker.ensure_connection(max_retries=1, timeout=2)
        return f"{broker.as_uri()} answers"


def _worker_answers(timeout: float) -> list[tuple[str, list[dict]]]:
    """Every worker on the broker that answers, with the queues it consumes. One entry
    per answer, not per name: `inspect()` keys its answers by worker name, so of two
    installations whose workers share a name it kept one, often the other's."""
    from config.celery import app

    replies = app.control.broadcast("active_queues", reply=True, timeout=timeout) or []
    return [(name, queues or []) for reply in replies for name, queues in reply.items()]


@check("worker")
def _worker(options: Options) -> str:
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    answers = _worker_answers(options.worker_timeout)
    consuming = sorted(name for name, queues in answers if any(q.get("name") == queue for q in queues))
    if consuming:
        names = [name for name, _ in answers]
        shared = sorted({name for name in consuming if names.count(name) > 1})
        note = (
            f"; {len(shared)} name(s) answer more than once ({', '.join(shared)}): give every installation on this "
            "broker its own CELERY_TASK_DEFAULT_QUEUE, which names its worker <queue>@<host>"
            if shared
            else ""
        )
        return f"{len(consuming)} worker(s) consume queue {queue!r}: {', '.join(consuming)}{note}"
    others = sorted({q.get("name") for _, queues in answers for q in queues})
    if any(name.startswith(f"{queue}@") for name, _ in answers):
        # This installation's worker (the units and start.sh name it <queue>@<host>)
        # answers, but consumes something else.
        raise Failed(
            f"workers answer, but none consumes queue {queue!r} (they consume {', '.join(others)})",
            "give the worker and the web processes the same CELERY_TASK_DEFAULT_QUEUE, then restart the worker",
        )
    # Workers of other installations on the same broker answer too; they do not count.
    elsewhere = f"; {len(answers)} other worker(s) on this broker did (queues {', '.join(others)})" if answers else ""
    raise Failed(
        f"no worker of this installation answered a ping within {options.worker_timeout:g} s: messages are "
        f"recorded but nobody answers them{elsewhere}",
        service_fix("worker"),
    )


@check("beat")
def _beat(options: Options) -> str:
    from config.heartbeat import beat_last_seen

    expected = settings.OUTBOX_SWEEP_INTERVAL
    limit = 2 * expected + 30
    last = beat_last_seen()
    if last is None:
        raise Failed("Celery beat never ran against this Redis: stuck messages are not re-queued", service_fix("beat"))
    age = time.time() - last
    if age > limit:
        raise Failed(
            f"Celery beat last queued the outbox sweep {age:.0f} s ago (it should every {expected} s)",
            service_fix("beat"),
        )
    return f"queued the outbox sweep {max(age, 0):.0f} s ago (every {expected} s)"


def _listening_program(port: int) -> str:
    """Who listens on a TCP port, as `ss` names it ("" if unknown)."""
    if not shutil.which("ss"):
        return ""
    shown = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
    ).stdout
    return " ".join(shown.split()[5:]) if shown.strip() else ""


def _reachable_from_outside(bind: str) -> bool:
    host = bind.rpartition(":")[0].strip("[]")
    return host not in ("localhost", "::1") and not host.startswith("127.")


def _local_address(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 (reading a bind address, not binding)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def _host_header() -> str:
    names = [h.lstrip(".") for h in settings.ALLOWED_HOSTS if h not in ("*",)]
    return names[0] if names else "localhost"


def _get(connection: socket.socket, host: str, path: str) -> tuple[int, bytes, str]:
    """(status, body, the Server header) of GET path."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    response = http.client.HTTPResponse(connection)  # type: ignore[arg-type]
    response.begin()
    return response.status, response.read(4096), response.getheader("Server", "")


def _is_healthz(status: int, body: bytes) -> bool:
    try:
        return status == 200 and json.loads(body) == {"status": "ok"}
    except ValueError:
        return False


def running_start() -> dict[str, str]:
    """What the scripts/start.sh running from this var dir recorded (bind, gunicorn_bind,
    worker, pid); {} when none runs. It holds a lock on the file while it runs, so a
    file left by one that has stopped is not believed."""
    path = Path(settings.VAR_DIR) / "start.lock"
    try:
        with path.open() as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return dict(line.split("=", 1) for line in handle.read().splitlines() if "=" in line)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        pass
    return {}


def configured_bind() -> str:
    """The address clients call: the running scripts/start.sh's (it may have been given
    SWITCHBOARD_BIND in a shell this one does not share), else SWITCHBOARD_BIND."""
    return running_start().get("bind") or settings.SWITCHBOARD_BIND


@check("port")
def _port(options: Options) -> str:
    bind = configured_bind()
    host, port = _local_address(bind)
    try:
        with socket.create_connection((host, port), timeout=3) as connection:
            connection.settimeout(5)
            status, body, server = _get(connection, _host_header(), "/healthz")
    except ConnectionRefusedError:
        raise Failed(f"nothing listens on {host}:{port}: gunicorn is not running", service_fix("web")) from None
    except (OSError, http.client.HTTPException) as exc:
        status, body, server = 0, str(exc).encode(), ""
    if _is_healthz(status, body):
        if server.startswith("nginx"):
            return f"Switchboard answers /healthz on {host}:{port} through nginx"
        if _reachable_from_outside(bind):
            raise Failed(
                f"gunicorn itself answers {bind}, which other machines can reach: two clients sending their "
                "headers slowly hold its workers, and every callback waits",
                "put nginx in front, as deploy.sh and scripts/start.sh do: nginx on SWITCHBOARD_BIND, gunicorn "
                "on SWITCHBOARD_GUNICORN_BIND (127.0.0.1); docs/operations.md",
            )
        return f"gunicorn answers /healthz on {host}:{port}"
    if server.startswith("nginx") and status in (502, 504):
        raise Failed(
            f"nginx answers {host}:{port}, but gunicorn behind it does not (HTTP {status}; "
            f"SWITCHBOARD_GUNICORN_BIND {running_start().get('gunicorn_bind') or settings.SWITCHBOARD_GUNICORN_BIND})",
            service_fix("web"),
        )
    owner = _listening_program(port)
    raise Failed(
        f"port {port} is taken by another program{f' ({owner})' if owner else ''}: it answered /healthz with "
        f"{status or body.decode(errors='replace')[:80]}",
        f"stop that program, or move Switchboard to a free port: deploy.sh --port=N (ss -ltnp 'sport = :{port}')",
    )


def _served_certificate() -> tuple[int, bytes, bytes]:
    """GET /healthz through nginx: (status, body, the certificate it served, DER)."""
    url = urlsplit(settings.SWITCHBOARD_PUBLIC_URL)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the tls check judges the certificate
    with socket.create_connection(("127.0.0.1", url.port or 443), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as connection:
            connection.settimeout(5)
            certificate = connection.getpeercert(binary_form=True) or b""
            status, body, _ = _get(connection, url.netloc, "/healthz")
    return status, body, certificate


@check("nginx")
def _nginx(options: Options) -> str:
    url = urlsplit(settings.SWITCHBOARD_PUBLIC_URL)
    if url.scheme != "https":
        raise Skipped("SWITCHBOARD_PUBLIC_URL is not an https:// URL (deploy.sh sets it); not checking nginx")
    fix = (
        "sudo nginx -t, then sudo systemctl reload nginx (or: sudo nginx -s reload); "
        "the site is /etc/nginx/sites-available/switchboard.conf"
    )
    try:
        status, body, _ = _served_certificate()
    except ConnectionRefusedError:
        raise Failed(f"nothing listens on port {url.port or 443}: nginx is not running", fix) from None
    except (OSError, http.client.HTTPException) as exc:
        raise Failed(f"{settings.SWITCHBOARD_PUBLIC_URL}/healthz: {exc}", fix) from None
    if not _is_healthz(status, body):
        raise Failed(
            f"{settings.SWITCHBOARD_PUBLIC_URL}/healthz answered {status} through nginx, not Switchboard's ok",
            f"check that gunicorn runs (the port check) and nginx proxies to it; {fix}",
        )
    return f"serves {settings.SWITCHBOARD_PUBLIC_URL}/healthz over HTTPS"


@check("tls")
def _tls(options: Options) -> str:
    if settings.TLS_CERTIFICATE_PATH:
        source = settings.TLS_CERTIFICATE_PATH
        certificate = x509.load_pem_x509_certificate(Path(source).read_bytes())
    elif urlsplit(settings.SWITCHBOARD_PUBLIC_URL).scheme == "https":
        source = f"served at {settings.SWITCHBOARD_PUBLIC_URL}"
        certificate = x509.load_der_x509_certificate(_served_certificate()[2])
    else:
        raise Skipped("no TLS_CERTIFICATE_PATH and no https SWITCHBOARD_PUBLIC_URL")
    left = certificate.not_valid_after_utc - datetime.now(UTC)
    days = left.total_seconds() / 86400
    renew = f"put a renewed certificate and key where nginx reads them ({source}) and reload nginx"
    if days < 0:
        raise Failed(f"the certificate ({source}) expired {-days:.0f} days ago", renew)
    if days < CERTIFICATE_MIN_DAYS:
        raise Failed(f"the certificate ({source}) expires in {days:.1f} days", renew)
    note = ""
    if certificate.issuer == certificate.subject:
        note = "; self-signed: platforms that verify certificates (Feishu, Slack, Telegram) need a real one"
    return f"{source} valid for {days:.0f} more days{note}"


@check("clock")
def _clock(options: Options) -> str:
    from django_redis import get_redis_connection

    redis = get_redis_connection("default")
    before = time.time()
    seconds, micros = redis.time()
    after = time.time()
    skew = seconds + micros / 1e6 - (before + after) / 2
    if abs(skew) > MAX_CLOCK_SKEW:
        raise Failed(
            f"this machine's clock is {abs(skew):.1f} s {'behind' if skew > 0 else 'ahead of'} Redis's: "
            "callback timestamps, rate limits and sign-in codes depend on it",
            "keep every machine's clock in sync: apt-get install -y systemd-timesyncd (or chrony)",
        )
    return f"within {abs(skew) * 1000:.0f} ms of Redis's clock"


@check("disk")
def _disk(options: Options) -> str:
    paths = [Path(settings.VAR_DIR), Path(settings.STATIC_ROOT)]
    if settings.LOG_DIR:
        paths.append(Path(settings.LOG_DIR))
    seen: dict[int, Path] = {}
    for path in paths:
        existing = next(p for p in (path, *path.parents) if p.exists())
        seen.setdefault(existing.stat().st_dev, existing)
    shown = []
    for path in seen.values():
        usage = shutil.disk_usage(path)
        free_gib = usage.free / 1024**3
        if usage.free < MIN_FREE_BYTES or usage.free < MIN_FREE_FRACTION * usage.total:
            raise Failed(
                f"only {free_gib:.2f} GiB ({usage.free / usage.total:.0%}) free on {path}",
                "free disk space: old logs (/var/log), journalctl --vacuum-size=200M, apt-get clean",
            )
        shown.append(f"{free_gib:.1f} GiB free on {path}")
    return "; ".join(shown)


@check("logs")
def _logs(options: Options) -> str:
    if not settings.LOG_DIR:
        raise Skipped("LOG_DIR is not set: logs go to standard output only")
    log = Path(settings.LOG_DIR) / "switchboard.log"
    target = log if log.exists() else Path(settings.LOG_DIR)
    if not os.access(target, os.W_OK):
        raise Failed(f"{target} is not writable by this user", f"chown the log directory to the service user: {target}")
    return f"JSON lines to {log}"


# -- running them ---------------------------------------------------------------------


def run_checks(options: Options, skip: frozenset[str] = frozenset()) -> list[Result]:
    results = []
    for name, function in CHECKS.items():
        if name in skip:
            results.append(Result(name, SKIP, "skipped (--skip)"))
            continue
        try:
            detail = function(options)
        except Skipped as exc:
            results.append(Result(name, SKIP, str(exc)))
        except Failed as exc:
            results.append(Result(name, FAIL, exc.detail, exc.fix))
        except Exception as exc:  # an unexpected error is this check's failure, not doctor's crash
            fix = _FIXES.get(name, "read the error; docs/operations.md#doctor says what this check needs")
            results.append(Result(name, FAIL, f"{type(exc).__name__}: {exc}"[:300], fix))
        else:
            results.append(Result(name, OK, detail))
    return results


_DATABASE_FIX = "check that the database server runs and DATABASE_URL is right (docs/configuration.md)"
# The advice for an unexpected error, by check.
_FIXES = {
    "database": _DATABASE_FIX,
    "migrations": _DATABASE_FIX,
    "capacity": _DATABASE_FIX,
    "secrets": "check SECRET_KEY(_FILE) and SWITCHBOARD_SECRET_KEYS(_FILE) (docs/configuration.md)",
    "redis": "start Redis (systemctl start redis-server) or fix REDIS_URL",
    "broker": "start Redis (systemctl start redis-server) or fix CELERY_BROKER_URL / REDIS_URL",
    "worker": "the broker must answer first (see the broker check)",
    "beat": "Redis must answer first (see the redis check)",
    "clock": "Redis must answer first (see the redis check)",
    "settings": "run manage.py check --deploy and read its messages (docs/configuration.md)",
    "static": "run: manage.py collectstatic --noinput",
    "tls": "TLS_CERTIFICATE_PATH must name a readable PEM certificate",
}


def as_json(results: list[Result]) -> str:
    return json.dumps({"ok": all(r.status != FAIL for r in results), "checks": [asdict(r) for r in results]}, indent=2)
