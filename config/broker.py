"""kombu's Redis transport with one client object per channel.

The stock channel builds a new `redis.Redis` around the same connection pool for every
publish, and redis-py fills a table of about 170 response callbacks each time: a third
of a publish's CPU (docs/performance.md). The client holds no state of its own beyond
the pool, so one per channel is the same behaviour for less work. Used only for
redis:// brokers (config/settings.py).
"""

from __future__ import annotations

from kombu.transport import redis


class Channel(redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client


class Transport(redis.Transport):
    Channel = Channel
