"""RabbitMQ as the broker (CELERY_BROKER_URL=amqp://...), taken away under real gunicorn
and Celery workers. Unlike Redis it keeps its durable queue and persistent messages
across a restart, and it hands an unacknowledged delivery to the next consumer as soon
as the worker holding it is gone (acks_late): so a message can reach a worker twice,
once from the broker and once from the outbox sweeper. The task's claim on the row
must make that one answer.

One private broker (tests/faults/rabbitmq.py) and one gunicorn serve the whole module:
each start costs seconds. The broker is restarted once, in the restart test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from channels_app.models import InboundMessage, MessageStatus
from tests.e2e.conftest import CeleryWorker, database_url_for_subprocess
from tests.faults.conftest import Gunicorn, post, signed_callback
from tests.faults.rabbitmq import RabbitMQServer, rabbitmq_server
from tests.processes import REPO_ROOT, group_members, process_env, wait_until

pytestmark = pytest.mark.slow

# The sweeper re-queues "received" rows older than RECEIVED_AFTER and "processing" rows
# whose task started more than STUCK_AFTER ago; STUCK_AFTER stays above a task's length.
RECEIVED_AFTER, STUCK_AFTER = 1, 4
SWEEP = "import django; django.setup(); from channels_app.tasks import sweep_outbox; print(sweep_outbox.run())"


@pytest.fixture(scope="module")
def rabbitmq():
    """Started once for the module, and stopped as soon as the module is done."""
    server = RabbitMQServer(rabbitmq_server()).start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def web(django_db_setup, rabbitmq):
    """gunicorn on the private broker, shared by the tests (a start costs seconds too);
    its hand-off connects again after any broker failure, which the tests rely on."""
    with Gunicorn(CELERY_BROKER_URL=rabbitmq.url) as server:
        yield server


@pytest.fixture
def broker(rabbitmq) -> RabbitMQServer:
    """The private broker, running, with this run's queue empty."""
    if rabbitmq.process.poll() is not None:  # a failed test left it stopped
        rabbitmq.start()
    rabbitmq.purge(queue())
    return rabbitmq


def queue() -> str:
    return os.environ["CELERY_TASK_DEFAULT_QUEUE"]


def outbox_env(broker: RabbitMQServer, stuck_after: int = STUCK_AFTER) -> dict[str, str]:
    """The environment of the worker and the sweeper: the private broker, and the outbox's
    deadlines (the task's claim reads OUTBOX_STUCK_AFTER too)."""
    return {
        "CELERY_BROKER_URL": broker.url,
        "OUTBOX_RECEIVED_AFTER": str(RECEIVED_AFTER),
        "OUTBOX_STUCK_AFTER": str(stuck_after),
    }


def sweep(broker: RabbitMQServer, stuck_after: int = STUCK_AFTER) -> str:
    """One run of the outbox sweeper as beat starts it, publishing to the private broker."""
    result = subprocess.run(
        [sys.executable, "-c", SWEEP],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=process_env(
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=database_url_for_subprocess(),
            **outbox_env(broker, stuck_after),
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def replies(wecom) -> Counter:
    """How many times each reply text reached the platform."""
    return Counter(record.json()["text"]["content"] for record in wecom.received(r"/message/send"))


def statuses(msg_ids) -> Counter:
    return Counter(
        InboundMessage.objects.filter(platform_message_id__in=[str(m) for m in msg_ids]).values_list(
            "status", flat=True
        )
    )


def deliver(web: Gunicorn, bot, text: str, msg_id: int, user: str) -> None:
    path, body = signed_callback(bot, text, msg_id, user=user)
    started = time.monotonic()
    response = post(web.url, path, body)
    assert response.status_code == 200, (msg_id, response.status_code, response.content[:300])
    assert time.monotonic() - started < 5, "WeCom stops waiting at 5 s"


def deliveries(worker: CeleryWorker) -> int:
    """How many task messages the worker has taken from the broker, as its log says."""
    return len(re.findall(r"handle_message\[[0-9a-f-]+\] received", worker.output()))


def tasks_done(worker: CeleryWorker) -> int:
    return len(re.findall(r"handle_message\[[0-9a-f-]+\] succeeded in", worker.output()))


def wait_until_replied(msg_ids, timeout: float, worker: CeleryWorker) -> None:
    """Until every row is replied; a failed row fails at once, with its reason."""
    ids = [str(m) for m in msg_ids]
    rows = InboundMessage.objects.filter(platform_message_id__in=ids)
    deadline = time.monotonic() + timeout
    while rows.exclude(status=MessageStatus.REPLIED).exists():
        failed = list(rows.filter(status=MessageStatus.FAILED).values_list("platform_message_id", "error"))
        assert not failed, failed
        assert time.monotonic() < deadline, f"not all replied: {statuses(ids)}\n{worker.output()[-3000:]}"
        time.sleep(0.3)


def test_messages_in_flight_when_rabbitmq_restarts_are_each_answered_once(broker, web, bot, wecom, model):
    """The broker stopped cleanly (and started again) with two tasks inside the model
    call and six more waiting in its queue; three callbacks arrive while it is down,
    one after it is back."""
    bot.rate_limit_qps = 1000.0  # per-bot pacing must not stretch a task towards STUCK_AFTER
    bot.save(update_fields=["rate_limit_qps"])
    model.delay = 5.0  # the two calls under way when the broker stops end during the outage
    queued, while_down, after = range(100, 108), range(108, 111), [111]
    texts = {n: f"question {n}" for n in [*queued, *while_down, *after]}
    with CeleryWorker(concurrency=2, extra_env=outbox_env(broker)) as worker:
        for n in queued:
            deliver(web, bot, texts[n], n, user=f"user{n}")
        wait_until(lambda: model.in_flight == 2, timeout=10, what="two tasks inside the model call", interval=0.05)
        in_model = set(
            InboundMessage.objects.filter(bot=bot, status=MessageStatus.PROCESSING).values_list(
                "platform_message_id", flat=True
            )
        )
        assert len(in_model) == 2, in_model
        # Prefetch is the pool's size and acknowledgement late: the rest wait in the broker.
        wait_until(
            lambda: broker.ready_messages(queue()) == len(queued) - 2,
            timeout=5,
            interval=0.1,
            what=f"{len(queued) - 2} messages waiting in the broker",
        )

        broker.stop()
        model.delay = 0.2  # for the calls to come; the two under way keep their 5 s
        for n in while_down:
            deliver(web, bot, texts[n], n, user=f"user{n}")
        assert statuses(while_down) == {MessageStatus.RECEIVED: len(while_down)}
        broker.start()  # the same port and data: the queue is back, with the unacknowledged deliveries
        for n in after:
            deliver(web, bot, texts[n], n, user=f"user{n}")  # the hand-off connects again

        # The broker alone, no sweeper: every message queued before the stop or after
        # the start is answered; the two that were in the model call finished during the
        # outage, and their deliveries, never acknowledged, came back and found the row
        # replied...
        wait_until_replied([*queued, *after], timeout=45, worker=worker)
        # ...while the callbacks that came during the outage are recorded, never queued.
        time.sleep(1.5)
        assert statuses(while_down) == {MessageStatus.RECEIVED: len(while_down)}
        assert max(replies(wecom).values()) == 1, f"answered more than once: {replies(wecom)}"
        assert deliveries(worker) == len(queued) + len(after) + len(in_model), "the broker did not deliver them again"

        assert f"'received': {len(while_down)}" in sweep(broker)
        wait_until_replied(while_down, timeout=30, worker=worker)
        time.sleep(1.5)  # room for a wrong second reply
        assert "'received': 0, 'processing': 0" in sweep(broker)
        time.sleep(0.5)

    got = replies(wecom)
    expected = {f"[m1] {texts[n]} (history=0)" for n in texts}
    assert set(got) == expected, f"missing: {expected - set(got)}, unexpected: {set(got) - expected}"
    assert all(count == 1 for count in got.values()), f"answered more than once: {got}"
    assert set(InboundMessage.objects.filter(bot=bot).values_list("status", flat=True)) == {MessageStatus.REPLIED}
    assert broker.ready_messages(queue()) == 0


def kill_pool_process(worker: CeleryWorker) -> None:
    """kill -9 the worker's pool process (concurrency 1), not its main process."""
    [child] = [m for m in group_members(worker.process.pid) if m.ppid == worker.process.pid]
    os.kill(child.pid, signal.SIGKILL)


def test_a_pool_process_killed_in_the_model_call_on_rabbitmq_answers_once(broker, web, bot, wecom, model):
    """The worker's main process lives and puts the delivery back (reject_on_worker_lost);
    the worker gets it again at once, while the row still looks taken by a live task,
    and leaves it; the sweeper re-queues the row after OUTBOX_STUCK_AFTER. Two
    deliveries of the one message, one answer."""
    stuck_after = 10  # the delivery put back comes well within it, even on a loaded host
    model.delay = 5.0
    with CeleryWorker(concurrency=1, extra_env=outbox_env(broker, stuck_after)) as worker:
        deliver(web, bot, "survive this", 200, user="zhangsan")
        model.wait_for(r"/chat/completions", 1)  # the pool process is inside the model call now
        model.delay = 0.0
        kill_pool_process(worker)
        wait_until(
            lambda: deliveries(worker) == 2 and tasks_done(worker) == 1,
            timeout=15,
            interval=0.1,
            what="the delivery put back came again and was done with",
        )
        assert "WorkerLostError" in worker.output()
        row = InboundMessage.objects.get(platform_message_id="200")
        assert row.status == MessageStatus.PROCESSING, "the second delivery took over a row still taken"
        # The lease its worker renewed while the task ran lapses OUTBOX_STUCK_AFTER after the last renewal.
        time.sleep(max(0.0, row.lease_until.timestamp() + 0.5 - time.time()))
        assert "'processing': 1" in sweep(broker, stuck_after)
        wait_until_replied([200], timeout=20, worker=worker)
        time.sleep(1.5)  # room for a wrong second reply
        assert "'received': 0, 'processing': 0" in sweep(broker, stuck_after)
        time.sleep(0.5)

    assert replies(wecom) == {"[m1] survive this (history=0)": 1}
    assert len(model.received(r"/chat/completions")) == 2  # the killed call and the one answered
    row.refresh_from_db()
    assert row.status == MessageStatus.REPLIED and row.attempts == 2
    assert broker.ready_messages(queue()) == 0


def test_a_worker_killed_in_the_model_call_on_rabbitmq_is_answered_once_by_the_next_worker(
    broker, web, bot, wecom, model
):
    """kill -9 of the whole worker inside the model call: nobody acknowledged the
    delivery (acks_late), so the broker keeps it for the next worker. That worker,
    started once the row counts as stuck, takes it over from the broker's delivery
    alone; the sweeper then finds nothing to do."""
    model.delay = 5.0
    worker = CeleryWorker(concurrency=1, extra_env=outbox_env(broker)).start()
    try:
        deliver(web, bot, "survive this too", 201, user="lisi")
        model.wait_for(r"/chat/completions", 1)
        worker.kill_hard()
    finally:
        worker.stop()
    model.delay = 0.0
    row = InboundMessage.objects.get(platform_message_id="201")
    assert row.status == MessageStatus.PROCESSING
    wait_until(
        lambda: broker.ready_messages(queue()) == 1,
        timeout=5,
        interval=0.1,
        what="the broker took back the delivery the killed worker never acknowledged",
    )
    time.sleep(max(0.0, row.lease_until.timestamp() + 0.5 - time.time()))  # the last renewal + STUCK_AFTER

    with CeleryWorker(concurrency=1, extra_env=outbox_env(broker)) as worker:
        wait_until_replied([201], timeout=20, worker=worker)  # no sweeper
        time.sleep(1.5)  # room for a wrong second reply
        assert "'received': 0, 'processing': 0" in sweep(broker)
        time.sleep(0.5)

    assert replies(wecom) == {"[m1] survive this too (history=0)": 1}
    assert len(model.received(r"/chat/completions")) == 2
    row.refresh_from_db()
    assert row.status == MessageStatus.REPLIED and row.attempts == 2
    assert broker.ready_messages(queue()) == 0
