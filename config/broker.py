"""kombu's Redis transport with one client object per channel, and publishes that can
share a pipeline with other commands.

The stock channel builds a new `redis.Redis` around the same connection pool for every
publish, and redis-py fills a table of about 170 response callbacks each time: a third
of a publish's CPU (docs/performance.md). The client holds no state of its own beyond
the pool, so one per channel is the same behaviour for less work. Used only for
redis:// brokers (config/settings.py).

`pipelined()` lets the callback's hand-off send its replay-check SET NX and the task's
LPUSH in one round trip (channels_app/handoff.py).
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis


class Channel(redis.Channel):
    _sync_client = None
    _pipeline = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client

    @contextmanager
    def conn_or_acquire(self, client=None):
        # kombu's own seam: every publish takes its client here.
        if client is None and self._pipeline is not None:
            yield self._pipeline
        else:
            with super().conn_or_acquire(client) as acquired:
                yield acquired

    @contextmanager
    def pipelined(self):
        """A non-transactional pipeline that the publishes made inside join; the caller
        adds its own commands and executes it."""
        self._pipeline = self.client.pipeline(transaction=False)
        try:
            yield self._pipeline
        finally:
            self._pipeline = None


class Transport(redis.Transport):
    Channel = Channel
