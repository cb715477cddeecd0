"""Settings for the test suite: the real settings, pointed at the test run's own
Redis db index, key prefix, Celery queue and scratch directory.

Variables are set in os.environ (not only here) so that the processes the tests start
(gunicorn, Celery workers, manage.py) see the same world.
"""

import os
import tempfile

_run = f"sbtest{os.getpid()}"
os.environ.setdefault("SWITCHBOARD_TEST_RUN", _run)
_run = os.environ["SWITCHBOARD_TEST_RUN"]
os.environ.setdefault("SWITCHBOARD_VAR_DIR", tempfile.mkdtemp(prefix=f"{_run}-"))
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("CACHE_KEY_PREFIX", _run)
os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", _run)
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")

from config.settings import *  # noqa: E402,F403
from config.settings import DATABASES, VAR_DIR  # noqa: E402

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so gunicorn and Celery started by the tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

# Fast password hashing: the tests create many users; production keeps Django's default.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The manifest storage needs collectstatic; the tests serve from the app directories.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
