"""Leases on the outbox rows the dialog tasks work on: the worker's renewal thread (the
statements are channels_app/outbox.py's).

A task that claims a row holds it (lease_owner = its Celery task id) until lease_until.
The sweeper and a second claim take a processing row over only once its lease has
lapsed, so a task still waiting for a slow or streaming model keeps its row however long
it takes, and a dead one's row is taken over OUTBOX_STUCK_AFTER after its worker stopped
renewing it.

The renewal is one thread in the worker's main process, not one per task: it knows
every task the process's pool is running (Celery's active requests) and renews all of
their rows in one UPDATE every quarter of the lease. That is one statement per worker
and tick however many tasks run at once, and no task holds a database connection for
it. The main process sees a pool child that dies (it loses the request), so a child
killed alone stops being renewed just as a whole worker killed with -9 does.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.db import DatabaseError, close_old_connections, connection
from prometheus_client import Counter

from channels_app import outbox

logger = logging.getLogger("switchboard.dialog")

# The dialog task's registered name, kept from before it moved from routing/tasks.py to
# channels_app/tasks.py: tasks queued by an earlier release are still consumed.
TASK_NAME = "routing.tasks.handle_message"

LEASES_RENEWED = Counter(
    "switchboard_outbox_leases_renewed_total", "Outbox rows whose lease a worker renewed while their task ran"
)
RENEWALS_FAILED = Counter(
    "switchboard_outbox_lease_renewals_failed_total", "Lease renewals that did not reach the database"
)

_stop = threading.Event()


def renew_interval() -> float:
    """A quarter of the lease: three renewals may fail (a database blip) before it lapses."""
    return outbox.lease_seconds() / 4


def renew(owners: list[str]) -> int:
    """Extend the lease of every processing row held by one of these task ids."""
    renewed = outbox.renew_leases(owners)
    LEASES_RENEWED.inc(renewed)
    return renewed


def _running_dialog_tasks() -> list[str]:
    """The ids of the dialog tasks this worker's pool runs now."""
    from celery.worker import state

    while True:
        try:
            requests = list(state.active_requests)
        except RuntimeError:  # the set changed while it was copied: a task began or ended
            continue
        return [request.id for request in requests if request.name == TASK_NAME]


def _renew_loop() -> None:
    failing = False
    while not _stop.wait(renew_interval()):
        try:
            renew(_running_dialog_tasks())
            failing = False
        except DatabaseError as exc:
            RENEWALS_FAILED.inc()
            if not failing:  # once per outage, not every tick
                logger.warning("could not renew the leases of the running dialog tasks: %s", exc)
            failing = True
            connection.close()  # the next tick connects afresh
        close_old_connections()


@worker_ready.connect(dispatch_uid="switchboard-outbox-leases")
def _start_renewing(**_: object) -> None:
    _stop.clear()
    threading.Thread(target=_renew_loop, name="switchboard-outbox-leases", daemon=True).start()


@worker_shutdown.connect(dispatch_uid="switchboard-outbox-leases-stop")
def _stop_renewing(**_: object) -> None:
    _stop.set()
