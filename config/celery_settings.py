"""The Django settings named CELERY_*, copied once into a dict for config/celery.py.

Imported only when Celery first reads its configuration, after Django's settings are
loaded. Settings changed later at run time (a test's override_settings) do not reach
Celery; none of ours needs that.
"""

from django.conf import settings

CELERY = {name: getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")}
