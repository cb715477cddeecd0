"""Slowing PostgreSQL down for one table, as a test needs it: a lock that holds every
INSERT into the outbox until the test lets go, so a callback can be caught while it
waits for the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection

from channels_app.models import InboundMessage
from tests.e2e.conftest import database_url_for_subprocess


@contextmanager
def outbox_inserts_held() -> Iterator[Callable[[], int]]:
    """Holds every INSERT into the outbox table (reads still pass) until the block ends;
    yields how many INSERTs wait for it. PostgreSQL only."""
    holder = psycopg.connect(database_url_for_subprocess())
    try:
        holder.execute(f"LOCK TABLE {InboundMessage._meta.db_table} IN EXCLUSIVE MODE")

        def waiting() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'INSERT%%'"
                )
                return cursor.fetchone()[0]

        yield waiting
    finally:
        holder.rollback()
        holder.close()
