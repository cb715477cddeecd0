"""Switchboard settings: everything an operator may change comes from the environment.

See docs/configuration.md (and deploy/.env.example) for every variable.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    env_bool,
    env_int,
    env_list,
    env_networks,
    env_secret,
    env_str,
    new_django_secret_key,
    secret_or_generated,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SWITCHBOARD_VAR_DIR", str(BASE_DIR / "var")))

SWITCHBOARD_ENV = env_str("SWITCHBOARD_ENV", "development")
if SWITCHBOARD_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"SWITCHBOARD_ENV={SWITCHBOARD_ENV!r}; use development or production.")
PRODUCTION = SWITCHBOARD_ENV == "production"

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_or_generated("SECRET_KEY", VAR_DIR, PRODUCTION, new_django_secret_key)
SWITCHBOARD_SECRET_KEYS = secret_or_generated(
    "SWITCHBOARD_SECRET_KEYS",
    VAR_DIR,
    PRODUCTION,
    lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
)
# A malformed key ring stops start-up here, not at the first secret a worker reads.
for _position, _item in enumerate(SWITCHBOARD_SECRET_KEYS.split(","), start=1):
    try:
        _key_bytes = len(base64.b64decode(_item.strip(), validate=True))
    except ValueError:
        _key_bytes = 0
    if _item.strip() and _key_bytes != 32:
        raise ImproperlyConfigured(
            f"SWITCHBOARD_SECRET_KEYS entry {_position} is not a base64-encoded 32-byte key. Make one with: "
            'python3 -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"'
        )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1]")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is not set. SWITCHBOARD_ENV=production requires the host names "
        "the console and callbacks are served under, e.g. ALLOWED_HOSTS=bots.example.com."
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Who may open /admin/ (in addition to AdminAccessRule rows). The default keeps the
# console off the public internet: loopback and private networks only.
ADMIN_ALLOWED_CIDRS = env_networks(
    "ADMIN_ALLOWED_CIDRS",
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
)
# Peers whose X-Forwarded-For we believe (nginx on the same host: 127.0.0.1).
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES", "")

INSTALLED_APPS = [
    "config.apps.SwitchboardAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # django-otp without its TOTP and static plugins: they keep seeds and backup codes
    # in clear; the console's devices are bots.otp_devices.
    "django_otp",
    "auditlog",
    "django_prometheus",
    "bots",
    "channels_app",
    "routing",
    "audit",
]

MIDDLEWARE = [
    # First: every later is_secure() must see X-Forwarded-Proto only from a trusted proxy.
    "config.clientip.ForwardedProtoMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "config.jsonlog.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "bots.middleware.AdminIPAllowlistMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "bots.console_security.ConsoleIdleTimeoutMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "bots.console_security.ConsoleContentSecurityPolicyMiddleware",
    "audit.middleware.AuditContextMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'switchboard.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # WAL lets the worker read while gunicorn writes; a busy timeout turns brief lock
    # contention into a short wait instead of "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
    }
else:
    # Off by default: the check is a round trip before every request's first query. A
    # connection that died while idle then fails one request, which the callback view
    # answers 503 (the platform delivers again) and Django replaces the connection.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("DATABASE_HEALTH_CHECKS", False)
# The callback's outbox INSERT as a server-side prepared statement: PostgreSQL parses and
# plans it once per connection instead of on every callback. Turn off behind a
# transaction-pooling pgbouncer older than 1.21 (it cannot carry prepared statements).
# Every other query goes through Django's client-side binding, which never prepares.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    # psycopg prepares nothing, not even on request, while this is None (Django's default).
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5 if DATABASE_PREPARED_STATEMENTS else None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "sb"),
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# A cheaper publish on the stock Redis transport (config/broker.py); any other broker
# URL keeps the transport its scheme names.
CELERY_BROKER_TRANSPORT = "config.broker:Transport" if CELERY_BROKER_URL.startswith("redis://") else None
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task holds its worker process for the whole model call (seconds, not milliseconds),
# so the pool is sized for waiting, not for the cores: Celery's default (one process per
# core) answered two conversations at a time on a two-core machine.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", min(max(8, 2 * (os.cpu_count() or 1)), 32), minimum=1)
# Celery's Django fix-up closes the database connection around every task, so each
# message paid for a new PostgreSQL connection. Django's own rules decide instead
# (config/celery.py): kept for CONN_MAX_AGE, dropped after an error.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "switchboard")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=300)
# A console session also ends after this long without a request (bots/console_security.py).
SESSION_IDLE_TIMEOUT = env_int("SESSION_IDLE_TIMEOUT", 1800, minimum=60)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
# Messages stay on the server: a new API key is shown once through one, and must not
# travel in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# Console lockout (bots/lockout.py): this many failed passwords or codes for one account
# from one address within the window lock that account, from that address, for a while.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", 900, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "twofactor:login"
FORMS_URLFIELD_ASSUME_HTTPS = True

OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Switchboard")

AUDITLOG_MASK_CALLABLE = "audit.masking.mask_secret"
AUDITLOG_INCLUDE_ALL_MODELS = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
    # The API (config/api_urls.py) speaks JSON only, without the browsable pages, and
    # answers every error as {"error": {"code", "message"}}.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["bots.api_body.BodyParser"],
    "EXCEPTION_HANDLER": "bots.api_auth.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchboard API",
    "DESCRIPTION": "Call a bot's dialog engine and export the audit log. Authenticate with "
    "`Authorization: Api-Key <key>`; see docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
}
# The chat API (routing/api.py): the longest one turn may take, and each key's rate.
# The turn must end before gunicorn's worker timeout (30 s) kills the worker under it.
CHAT_API_TIMEOUT = env_int("CHAT_API_TIMEOUT", 25, minimum=1)
CHAT_API_RATE = env_str("CHAT_API_RATE", "60/min")
_rate_count, _, _rate_period = CHAT_API_RATE.partition("/")
if not (_rate_count.isdigit() and _rate_period in {"s", "sec", "m", "min", "h", "hour", "d", "day"}):
    raise ImproperlyConfigured(f"CHAT_API_RATE={CHAT_API_RATE!r}; use requests/period, e.g. 60/min or 5/s.")

# Security headers. Behind nginx the TLS hop ends at the proxy, which says so in
# X-Forwarded-Proto (believed only from TRUSTED_PROXIES: config.clientip); HTTPS-only
# cookies and HSTS are on whenever we run in production.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Platforms call the callbacks over plain HTTP on the callback port when an operator
    # chooses so; only the console is forced onto HTTPS.
    SECURE_REDIRECT_EXEMPT = [r"^callback/", r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# JSON lines (config/jsonlog.py) to standard output and, with LOG_DIR, to
# LOG_DIR/switchboard.log. WatchedFileHandler reopens the file after logrotate moved it.
LOG_FORMAT = env_str("LOG_FORMAT", "json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}; use json or plain.")
LOG_STDOUT = env_bool("LOG_STDOUT", True)
LOG_DIR = env_str("LOG_DIR", "")
if LOG_DIR and not Path(LOG_DIR).is_dir():
    raise ImproperlyConfigured(f"LOG_DIR={LOG_DIR!r} is not a directory; create it or unset LOG_DIR.")
_log_handlers = {}
if LOG_STDOUT:
    _log_handlers["console"] = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
        "formatter": LOG_FORMAT,
        "filters": ["redact_credentials"],
    }
if LOG_DIR:
    _log_handlers["file"] = {
        "class": "logging.handlers.WatchedFileHandler",
        "filename": str(Path(LOG_DIR) / "switchboard.log"),
        "formatter": "json",
        "filters": ["redact_credentials"],
    }
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.jsonlog.JsonFormatter"},
    },
    "filters": {"redact_credentials": {"()": "config.logredact.RedactCredentials"}},
    "handlers": _log_handlers,
    "root": {"handlers": list(_log_handlers), "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Platforms take secrets and tokens in query strings; httpx logs request URLs.
        "httpx": {"level": "WARNING", "filters": ["redact_credentials"]},
    },
}
# Celery keeps the handlers above instead of installing its own plain-text ones.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Imported by the worker and beat at start: their signal handlers write the heartbeats
# /metrics and doctor read, and give each task a fresh log context.
CELERY_IMPORTS = ("config.heartbeat", "config.jsonlog")

# Limits of the callback path.
CALLBACK_MAX_BODY_BYTES = env_int("CALLBACK_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
# How far a callback's timestamp may be from our clock; a nonce is kept until its timestamp leaves it.
CALLBACK_TIMESTAMP_WINDOW = env_int("CALLBACK_TIMESTAMP_WINDOW", 300, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = CALLBACK_MAX_BODY_BYTES

# The outbox: when the sweeper re-queues a message, and how long finished rows are kept.
OUTBOX_RECEIVED_AFTER = env_int("OUTBOX_RECEIVED_AFTER", 60, minimum=1)
OUTBOX_STUCK_AFTER = env_int("OUTBOX_STUCK_AFTER", 300, minimum=1)
OUTBOX_SWEEP_INTERVAL = env_int("OUTBOX_SWEEP_INTERVAL", 30, minimum=1)
OUTBOX_SWEEP_BATCH = env_int("OUTBOX_SWEEP_BATCH", 500, minimum=1)
OUTBOX_RETENTION_DAYS = env_int("OUTBOX_RETENTION_DAYS", 30, minimum=1)
# WeCom's message/send drops a request identical to one sent within this many seconds
# (enable_duplicate_check): a reply part sent again after a lost send arrives once, and an
# identical reply to the same user within it is shown once too. WeCom allows up to 4 h;
# 0 turns the check off.
WECOM_DUPLICATE_CHECK_INTERVAL = env_int("WECOM_DUPLICATE_CHECK_INTERVAL", 1800, minimum=0)
if WECOM_DUPLICATE_CHECK_INTERVAL > 4 * 3600:
    raise ImproperlyConfigured(
        f"WECOM_DUPLICATE_CHECK_INTERVAL={WECOM_DUPLICATE_CHECK_INTERVAL}; WeCom accepts at most 14400 (4 hours)."
    )
CELERY_BEAT_SCHEDULE = {
    # channels_app/tasks.py, under the name it had in routing/tasks.py (kept for upgrades)
    "sweep-outbox": {"task": "routing.tasks.sweep_outbox", "schedule": float(OUTBOX_SWEEP_INTERVAL)},
    "check-api-key-expiry": {"task": "bots.tasks.check_api_key_expiry", "schedule": crontab(hour=6, minute=0)},
}
# An unacknowledged task returns to the queue after this long (a worker killed with
# kill -9 never acknowledges); it must exceed the longest task. Connecting gives up
# after 2 s, as the cache does: a broker host that drops packets must not hold a
# callback past the platform's deadline (the message is safe; the sweeper queues it).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60),
    "socket_connect_timeout": 2,
}

# Operations: /metrics, and what `manage.py doctor` checks (docs/operations.md).
# Prometheus may scrape from these networks without a token, or from anywhere with
# `Authorization: Bearer <METRICS_TOKEN>`.
METRICS_ALLOWED_CIDRS = env_networks("METRICS_ALLOWED_CIDRS", "127.0.0.0/8,::1/128")
METRICS_TOKEN = env_secret("METRICS_TOKEN") or ""
SWITCHBOARD_BIND = env_str("SWITCHBOARD_BIND", "0.0.0.0:18789")
# gunicorn itself listens on this machine only: nginx answers SWITCHBOARD_BIND and passes
# a request on once it has read it whole, so a client trickling its headers holds one of
# nginx's connections and never a web thread (deploy/nginx, docs/operations.md).
# Unset: 127.0.0.1 and the port after SWITCHBOARD_BIND's.
SWITCHBOARD_GUNICORN_BIND = env_str("SWITCHBOARD_GUNICORN_BIND", "") or (
    f"127.0.0.1:{int(SWITCHBOARD_BIND.rpartition(':')[2] or 18789) + 1}"
)
# gunicorn's processes and threads per process (gthread): a passive WeChat reply holds a
# thread for up to WECHAT_PASSIVE_HOLD_MS, and every thread may keep a database
# connection open (CONN_MAX_AGE), which doctor's capacity check counts.
SWITCHBOARD_WEB_WORKERS = env_int("SWITCHBOARD_WEB_WORKERS", 2, minimum=1)
SWITCHBOARD_WEB_THREADS = env_int("SWITCHBOARD_WEB_THREADS", 4, minimum=1)
SWITCHBOARD_PUBLIC_URL = env_str("SWITCHBOARD_PUBLIC_URL", "").rstrip("/")
TLS_CERTIFICATE_PATH = env_str("TLS_CERTIFICATE_PATH", "")
SWITCHBOARD_SERVICE_MANAGER = env_str("SWITCHBOARD_SERVICE_MANAGER", "")
if SWITCHBOARD_SERVICE_MANAGER not in {"", "systemd", "supervisor"}:
    raise ImproperlyConfigured(
        f"SWITCHBOARD_SERVICE_MANAGER={SWITCHBOARD_SERVICE_MANAGER!r}; use systemd, supervisor or leave it empty."
    )

# WeChat Official Accounts that answer with passive replies (no customer-service API):
# how long a callback waits for the model's answer (WeChat stops waiting at 5 s), and how
# long it keeps the connection open when the answer is not ready, so that WeChat delivers
# the message again rather than take an empty answer. See channels_app/adapters/wechat_mp.
WECHAT_PASSIVE_WAIT_MS = env_int("WECHAT_PASSIVE_WAIT_MS", 4500, minimum=500)
WECHAT_PASSIVE_HOLD_MS = env_int("WECHAT_PASSIVE_HOLD_MS", 5500, minimum=5000)
if WECHAT_PASSIVE_WAIT_MS > 4800:
    raise ImproperlyConfigured(
        f"WECHAT_PASSIVE_WAIT_MS={WECHAT_PASSIVE_WAIT_MS} is too long: WeChat stops waiting at 5000 ms, and an "
        "answer handed over later would be lost. Use at most 4800."
    )

# /readyz always reports whether a Celery worker is alive; with this it also answers 503
# when none is (see config/health.py for why that is not the default).
READYZ_REQUIRES_WORKER = env_bool("READYZ_REQUIRES_WORKER", False)
