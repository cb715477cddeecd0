"""The deployed settings plus one URL: a bare DRF POST returning {} (bench/urls.py), the
yardstick the callback is measured against. Only `python -m bench` (or whoever sets
DJANGO_SETTINGS_MODULE=bench.settings) serves it; config.settings never does."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
