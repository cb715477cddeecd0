"""kombu's Redis transport with one client object per channel, and publishes that can
share one round trip with other commands.

The stock channel builds a new `redis.Redis` around the same connection pool for every
publish, and redis-py fills a table of about 170 response callbacks each time: a third
of a publish's CPU (docs/performance.md). The client holds no state of its own beyond
the pool, so one per channel is the same behaviour for less work. Used only for
redis:// brokers (config/settings.py).

`batch()` collects the commands of one round trip (the callback's replay-check SET NX and
the task's LPUSH, channels_app/handoff.py) and sends them on a connection the channel
keeps for that: redis-py's Pipeline spent more CPU on its bookkeeping than the round trip
itself cost.
"""

from __future__ import annotations

from django.conf import settings
from kombu import Connection
from kombu.exceptions import ChannelError
from kombu.transport import redis
from redis import exceptions as redis_errors


def _packed(commands: list[tuple]) -> bytes:
    """The commands in the Redis protocol (RESP). redis-py's packer type-checks and
    re-encodes every argument on a path that cost more than sending them."""
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _ready(connection) -> None:
    """Connect, or reconnect a connection the server closed while it was idle (Redis
    restarted), as redis-py's pool does on checkout. Only before sending: after the
    commands went out, trying again could claim a nonce twice and take the message for
    a replay of itself."""
    connection.connect()
    try:
        stale = connection.can_read()  # an idle connection has nothing to read, unless closed
    except (ConnectionError, TimeoutError, OSError, redis_errors.ConnectionError, redis_errors.TimeoutError):
        stale = True
    if stale:
        connection.disconnect()
        connection.connect()


class Batch:
    """Commands sent together, one reply read per command. kombu's publish hands its
    final commands to `add` (the `_publish_batch` seam of its Redis channel's `_put`)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.commands: list[tuple] = []

    def add(self, name: str, *args) -> None:
        self.commands.append((name.upper(), *args))

    def execute(self) -> list:
        connection = self.connection
        _ready(connection)
        try:
            connection.send_packed_command([_packed(self.commands)], check_health=False)
            return [connection.read_response() for _ in self.commands]
        except BaseException:
            # Replies left unread would answer the next batch's commands.
            connection.disconnect()
            raise


class Channel(redis.Channel):
    _sync_client = None
    _batch_connection = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client

    def batch(self) -> Batch:
        if self._batch_connection is None:
            self._batch_connection = self.client.connection_pool.get_connection()
        return Batch(self._batch_connection)

    def close(self) -> None:
        connection, self._batch_connection = self._batch_connection, None
        if connection is not None:
            self.client.connection_pool.release(connection)  # the pool's clean-up closes it
        super().close()


class Transport(redis.Transport):
    Channel = Channel


def queue_depth(queue: str | None = None) -> int:
    """How many task messages wait in the queue (the default one) right now: ready,
    not yet delivered to a worker. On any broker (a passive declare); raises what the
    broker raises when it cannot be reached."""
    queue = queue or settings.CELERY_TASK_DEFAULT_QUEUE
    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=2, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS
    ) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        try:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
        except ChannelError:  # no such queue yet: nothing was ever queued, or it is empty
            return 0
