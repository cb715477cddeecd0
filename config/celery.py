import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("switchboard")
# The CELERY_* settings as a plain dict (config/celery_settings.py), read when Celery
# first needs them: Celery looks up a dozen names on every publish, most of them unset,
# and each miss on Django's settings object raises and catches an AttributeError.
app.config_from_object("config.celery_settings:CELERY", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect(dispatch_uid="switchboard-db-connections-before")
@task_postrun.connect(dispatch_uid="switchboard-db-connections-after")
def _close_old_connections(task=None, **kwargs) -> None:
    """What Django does around a request, around a task: a connection past CONN_MAX_AGE,
    or one that saw an error, is closed; a healthy one is kept (CELERY_DB_REUSE_MAX).
    Not for a task run in-process (apply()): the caller's connection is not ours."""
    from django.db import close_old_connections

    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
