"""A private RabbitMQ node for the fault tests, which stop and start their broker.

The machine's own RabbitMQ (5672) may carry other installations' queues, so it is never
touched: this node has its own name, ports, data and log directories, configuration and
Erlang cookie (HOME), and reads nothing from /etc/rabbitmq. It needs only the installed
binaries. Measured on a 2-core host: 6 to 9 s from start until it accepts AMQP
connections (12 to 15 s while other test runs load the host), 1 to 3 s for a clean
stop; so a test session starts it once, and a restart is worth one test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import amqp
import pytest

from tests.processes import free_port, start_group, stop_group, wait_until

# Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user (as
# root: onto that user's HOME and cookie) or refuses to run (anyone else); the script it
# wraps runs the node as whoever starts it.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin",)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DEBIAN_WRAPPER = "rabbitmq-script-wrapper"


def rabbitmq_server() -> Path:
    """The rabbitmq-server script to run. Skips the test where RabbitMQ is not
    installed, or fails it with SWITCHBOARD_REQUIRE_TOOLS=1 (CI)."""
    for directory in SCRIPT_DIRS:
        if os.access(Path(directory) / "rabbitmq-server", os.X_OK):
            return Path(directory) / "rabbitmq-server"
    found = shutil.which("rabbitmq-server", path=SEARCH_PATH)
    if found and not os.path.realpath(found).endswith(DEBIAN_WRAPPER):
        return Path(found)
    message = "rabbitmq-server is not installed (apt-get install -y rabbitmq-server)"
    if os.environ.get("SWITCHBOARD_REQUIRE_TOOLS") == "1":
        pytest.fail(message + "; SWITCHBOARD_REQUIRE_TOOLS=1 makes this a failure")
    pytest.skip(message)


class RabbitMQServer:
    """rabbitmq-server in its own process group and scratch directory. start() waits
    until it accepts AMQP connections; stop() shuts it down cleanly (SIGTERM: durable
    queues and persistent messages are written to disk); start() again brings it back
    on the same port with the same data, as a restarted broker."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.root = Path(tempfile.mkdtemp(prefix="rabbitmq-fault-"))
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.node = f"sbtest{os.getpid()}@localhost"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        (self.root / "home").mkdir()
        (self.root / "enabled_plugins").write_text("[].\n")  # no management plugin: a faster start
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.root / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **inherited,
            "HOME": str(self.root / "home"),  # the Erlang cookie is created there
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            # Our own files (the AMQP port; nothing else), or the node reads
            # /etc/rabbitmq's: the machine's node name and port.
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            # Erlang distribution (what rabbitmqctl would use) on loopback only, and
            # epmd there if this node is the one to start it.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def connect(self) -> amqp.Connection:
        connection = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest", connect_timeout=2)
        connection.connect()
        return connection

    def _accepts_amqp(self) -> bool:
        self.connect().close()
        return True

    def start(self) -> RabbitMQServer:
        self.process = start_group([str(self.script)], self.env(), self.log, cwd=self.root)
        wait_until(
            self._accepts_amqp,
            timeout=90,
            what=f"rabbitmq-server {self.node} on port {self.port}",
            interval=0.1,
            alive=self.process,
        )
        return self

    def stop(self) -> None:
        """A clean shutdown (the Erlang VM stops on SIGTERM), as `systemctl stop` does."""
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=30)

    def ready_messages(self, queue: str) -> int:
        """Messages waiting in queue for a consumer; those delivered to one and not yet
        acknowledged are not counted."""
        connection = self.connect()
        try:
            _, count, _ = connection.channel().queue_declare(queue, passive=True)
            return count
        except amqp.NotFound:
            return 0
        finally:
            connection.close()

    def purge(self, queue: str) -> None:
        connection = self.connect()
        try:
            connection.channel().queue_purge(queue)
        except amqp.NotFound:
            pass
        finally:
            connection.close()

    def remove(self) -> None:
        """Stop the node and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
