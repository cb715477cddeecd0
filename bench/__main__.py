"""`python -m bench`: ingestion, end-to-end and context figures in one run.

Needs PostgreSQL (or SQLite) at DATABASE_URL and Redis at REDIS_URL, like the app. It
makes its own bots (named bench-…), queue and key prefix, and removes them at the end.
Prints a table and writes the figures as JSON to var/bench/. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per phase (figures meaningless)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per ingestion phase")
    p.add_argument("--e2e-duration", type=float, default=10.0, help="seconds per end-to-end rate")
    p.add_argument("--e2e-rates", default="50,100", help="end-to-end messages per second, comma-separated")
    p.add_argument("--ack-rate", type=float, default=200.0, help="fixed rate for the ack-latency phase")
    p.add_argument("--concurrency", type=int, default=16, help="load generator connections (closed loop)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (deployed default: 2)")
    p.add_argument(
        "--celery-concurrency",
        type=int,
        help="Celery worker processes (default: as deployed, CELERY_WORKER_CONCURRENCY)",
    )
    p.add_argument(
        "--slow-model", type=float, default=1.0, help="seconds the model takes to answer in the slow-model part"
    )
    p.add_argument("--slow-rate", type=float, default=5.0, help="messages per second in the slow-model part")
    p.add_argument("--phases", default="ingestion,e2e,slow-model,context", help="which parts to run")
    p.add_argument("--no-migrate", action="store_true", help="the database is migrated already")
    p.add_argument("--out", help="JSON file to write (default var/bench/bench-<time>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.e2e_duration, args.e2e_rates, args.ack_rate = 1.5, 2.0, "20", 50.0
        args.slow_model = min(args.slow_model, 0.2)
    return args


def _setup_django() -> str:
    """Point this process and the ones it starts at bench.settings, on a private queue and
    key prefix; returns the run's name."""
    run = os.environ.get("SWITCHBOARD_BENCH_RUN") or f"bench{os.getpid()}"
    os.environ["SWITCHBOARD_BENCH_RUN"] = run
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = run
    os.environ["CACHE_KEY_PREFIX"] = run
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{run}-metrics-")
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    return run


def _subprocess_env() -> dict[str, str]:
    from tests.processes import process_env

    env = process_env()
    env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    return env


class Gunicorn:
    def __init__(self, workers: int, log_dir: Path) -> None:
        from tests.processes import free_port

        self.workers = workers
        self.port = free_port()
        self.log = log_dir / "gunicorn.log"
        self.args = [
            str(REPO_ROOT / ".venv/bin/gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--no-control-socket",
        ]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        import httpx

        from tests.processes import start_group, wait_until

        self.process = start_group(self.args, _subprocess_env(), self.log)
        wait_until(
            lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code < 500,
            timeout=60,
            what="gunicorn answering",
            interval=0.2,
            alive=self.process,
        )
        return self

    def stop(self) -> None:
        from tests.processes import stop_group

        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=20)


class Worker:
    def __init__(self, concurrency: int, queue: str, log_dir: Path) -> None:
        self.concurrency = concurrency
        self.log = log_dir / "celery.log"
        self.args = [
            str(REPO_ROOT / ".venv/bin/celery"),
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        from tests.processes import start_group, wait_until

        self.process = start_group([*self.args[:-1], "INFO"], _subprocess_env(), self.log)
        wait_until(
            lambda: "ready." in self.log.read_text(errors="replace"),
            timeout=60,
            what="celery worker ready",
            interval=0.2,
            alive=self.process,
        )
        return self

    def stop(self) -> None:
        from tests.processes import stop_group

        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=20, leader_only=True)


def loadgen(
    url: str,
    platform_name: str,
    bot,
    log_dir: Path,
    *,
    duration: float,
    concurrency: int = 16,
    rate: float = 0.0,
    records: bool = False,
) -> dict:
    """One run of bench.loadgen in its own process; its JSON result."""
    out = log_dir / f"loadgen-{secrets.token_hex(3)}.json"
    args = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--platform",
        platform_name,
        "--duration",
        str(duration),
        "--concurrency",
        str(concurrency),
        "--json",
        str(out),
    ]
    if bot is not None:
        # name=value: a generated token may begin with "-", which argparse would take for an option
        args += [f"--app-id={bot.app_id}", f"--token={bot.token}", f"--aes-key={bot.encoding_aes_key}"]
    if rate:
        args += ["--rate", str(rate)]
    if records:
        args.append("--records")
    load_before = os.getloadavg()[0]
    subprocess.run(args, cwd=REPO_ROOT, env=_subprocess_env(), check=True, timeout=duration + 120)
    # The 1-minute load average around the phase: other processes on the machine show here.
    return {**json.loads(out.read_text()), "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


# -- the parts --------------------------------------------------------------------------


def _make_bots(run: str, wecom_url: str = "", model_url: str = "") -> dict:
    import base64

    from bots.models import Bot
    from routing.models import ModelBackend
    from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET

    backend = ModelBackend.objects.create(
        name=f"{run}-model", kind="openai", base_url=f"{model_url or 'http://127.0.0.1:9'}/v1", model="bench"
    )
    common = {"default_backend": backend, "rate_limit_qps": 1000.0}
    return {
        "backend": backend,
        "wecom": Bot.objects.create(
            name=f"{run}-wecom",
            platform="wecom",
            app_id=DEFAULT_CORP_ID,
            app_secret=DEFAULT_CORP_SECRET,
            token=secrets.token_urlsafe(12),
            encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
            api_base_url=wecom_url or "http://127.0.0.1:9",
            extra={"agent_id": 1000002},
            **common,
        ),
        "feishu": Bot.objects.create(
            name=f"{run}-feishu",
            platform="feishu",
            app_id="cli_fake_app",
            app_secret="fake-app-secret",  # noqa: S106 (the fake's app)
            token=secrets.token_urlsafe(12),
            encoding_aes_key=secrets.token_urlsafe(16),
            api_base_url="http://127.0.0.1:9",
            **common,
        ),
    }


def _drop_queue(queue: str) -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)


def _queue_length(queue: str) -> int:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(queue)


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _settle(queue: str, bots: list, what: str) -> dict:
    """Leave nothing of a phase behind for the next one: drop the queued tasks nobody will
    consume, delete the phase's outbox rows, and let PostgreSQL vacuum and checkpoint now
    rather than during the next measurement. Returns what was removed and how long it took."""
    from django.db import connection

    from channels_app.models import InboundMessage

    started = time.monotonic()
    queued = _queue_length(queue)
    _drop_queue(queue)
    deleted, _ = InboundMessage.objects.filter(bot__in=bots).delete()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {InboundMessage._meta.db_table}")
            try:
                cursor.execute("CHECKPOINT")  # needs superuser (or pg_checkpoint); best effort
            except Exception as exc:
                _say(f"no CHECKPOINT ({exc}); continuing")
    result = {"queued_dropped": queued, "rows_deleted": deleted, "seconds": round(time.monotonic() - started, 2)}
    _say(f"after {what}: dropped {queued} queued tasks, deleted {deleted} rows, vacuumed ({result['seconds']} s)")
    return result


def _wait_for_drain(bots: list, timeout: float, what: str) -> dict:
    """Wait (bounded) until no outbox row of `bots` is still received or processing, with
    progress output; the next phase then starts on an idle worker pool."""
    from channels_app.models import InboundMessage, MessageStatus

    started = time.monotonic()
    deadline, last_report, pending = started + timeout, 0.0, 0
    while True:
        pending = InboundMessage.objects.filter(
            bot__in=bots, status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]
        ).count()
        now = time.monotonic()
        if pending == 0 or now >= deadline:
            break
        if now - last_report >= 5:
            _say(f"waiting for the backlog of {what} to drain: {pending} messages left")
            last_report = now
        time.sleep(0.5)
    result = {"pending_left": pending, "waited_s": round(time.monotonic() - started, 2)}
    if pending:
        _say(f"gave up waiting after {timeout:g} s: {pending} messages of {what} still pending")
    return result


def ingestion(args: argparse.Namespace, run: str, bots: dict, log_dir: Path, gunicorn: Gunicorn) -> dict:
    """Closed-loop requests/s of the bare DRF POST and of each platform's callback, then
    the ack latency of WeCom callbacks at a fixed rate.

    No worker consumes the run's queue during this part (the bots' model backend is a
    closed port anyway), so nothing drains on the same cores while it is measured; after
    the closed-loop phases and after the fixed-rate phase the queued tasks are dropped and
    the rows deleted (`_settle`), so neither the next phase nor the end-to-end part
    inherits a backlog."""
    bare_url = f"{gunicorn.url}/bench/bare"
    callback_bots = [bots["wecom"], bots["feishu"]]
    loadgen(bare_url, "bare", None, log_dir, duration=1.0, concurrency=args.concurrency)  # warm-up
    _say("ingestion: bare DRF POST")
    results = {
        "bare_before": loadgen(bare_url, "bare", None, log_dir, duration=args.duration, concurrency=args.concurrency)
    }
    for name in ("wecom", "feishu"):
        bot = bots[name]
        _say(f"ingestion: {name} callbacks")
        results[name] = loadgen(
            gunicorn.url + bot.callback_path, name, bot, log_dir, duration=args.duration, concurrency=args.concurrency
        )
    _say("ingestion: bare DRF POST again")
    results["bare_after"] = loadgen(
        bare_url, "bare", None, log_dir, duration=args.duration, concurrency=args.concurrency
    )
    results["settled_after_closed_loop"] = _settle(run, callback_bots, "the closed-loop phases")
    _say(f"ingestion: WeCom callbacks at {args.ack_rate:g}/s")
    results["wecom_fixed_rate"] = loadgen(
        gunicorn.url + bots["wecom"].callback_path,
        "wecom",
        bots["wecom"],
        log_dir,
        duration=args.duration,
        rate=args.ack_rate,
    )
    results["settled_after_fixed_rate"] = _settle(run, callback_bots, "the fixed-rate phase")
    bare = (results["bare_before"]["requests_per_second"] + results["bare_after"]["requests_per_second"]) / 2
    results["bare_mean_rps"] = round(bare, 1)
    results["ratios"] = {
        name: round(results[name]["requests_per_second"] / bare, 3) if bare else None for name in ("wecom", "feishu")
    }
    return results


def end_to_end(
    args: argparse.Namespace, run: str, log_dir: Path, gunicorn: Gunicorn, rates: list[float], model_delay: float = 0.0
) -> dict:
    """Callbacks at fixed rates through a real worker pool; the reply observed at the fake
    WeCom; the fake model answers after model_delay seconds (at once by default)."""
    from tests.fakes.model import FakeModel
    from tests.fakes.wecom import FakeWeCom

    results = {"model_delay_s": model_delay}
    label = f"end to end, model answering after {model_delay:g} s" if model_delay else "end to end"
    echo = FakeModel(answer=lambda request: request["messages"][-1]["content"], delay=model_delay)
    with FakeWeCom() as wecom, echo as model:
        bots = _make_bots(f"{run}-{'slow' if model_delay else 'e2e'}", wecom.url, model.url)
        _drop_queue(run)  # nothing of an earlier part may reach this worker
        worker = Worker(args.celery_concurrency, run, log_dir).start()
        try:
            # The first messages open every connection on the way (each pool process's
            # PostgreSQL and Redis connections, the fake APIs', the access token): not
            # what a running installation pays, so not measured.
            warm_up, warm_up_rate = min(2.0, args.e2e_duration), min(20.0, *rates)
            _say(f"{label}: warm-up, {warm_up:g} s at {warm_up_rate:g} msg/s, not measured")
            loadgen(
                gunicorn.url + bots["wecom"].callback_path,
                "wecom",
                bots["wecom"],
                log_dir,
                duration=warm_up,
                rate=warm_up_rate,
            )
            results["warm_up"] = _wait_for_drain([bots["wecom"]], timeout=60, what="the warm-up")
            for rate in rates:
                # The previous rate's messages are all answered (or given up on) before the
                # next rate starts, so each rate measures only itself.
                drained = _wait_for_drain([bots["wecom"]], timeout=120, what="the previous rate")
                wecom.reset()
                model.reset()
                _say(f"{label}: {rate:g} msg/s")
                sent = loadgen(
                    gunicorn.url + bots["wecom"].callback_path,
                    "wecom",
                    bots["wecom"],
                    log_dir,
                    duration=args.e2e_duration,
                    rate=rate,
                    records=True,
                )
                accepted = {r["message_id"]: r["sent_at"] for r in sent.pop("records") if r["status"] == 200}
                results[f"rate_{rate:g}"] = {
                    **_collect_replies(wecom, accepted, sent, rate, wait=30.0 + model_delay),
                    "backlog_before": drained,
                    "most_model_calls_at_once": model.most_in_flight,
                }
        finally:
            worker.stop()
    return results


def _collect_replies(wecom, accepted: dict[str, float], sent: dict, rate: float, wait: float = 30.0) -> dict:
    from bench.loadgen import summarize

    deadline = time.monotonic() + wait
    replies: dict[str, float] = {}
    while time.monotonic() < deadline:
        for record in wecom.received(r"/message/send"):
            match = re.search(r"bench (\d+)", record.body.decode(errors="replace"))
            if match and match.group(1) in accepted:
                replies.setdefault(match.group(1), record.at)
        if len(replies) >= len(accepted):
            break
        time.sleep(0.2)
    sends = [r for r in wecom.received(r"/message/send")]
    latencies = sorted((replies[m] - accepted[m]) * 1000 for m in replies)
    cpu_ms = sent.get("machine_cpu_ms_per_request")
    return {
        "rate": rate,
        "sent": sent["requests"],
        "accepted": len(accepted),
        "delivered": len(replies),
        "reply_requests": len(sends),
        "ack_ms": sent["ack_ms"],
        "end_to_end_ms": summarize(latencies),
        # How busy the whole machine was while the callbacks went out: near 100 %, the
        # latencies measure a queue for the cores, not Switchboard's path.
        "machine_busy_percent": round(cpu_ms * sent["ok"] / (sent["seconds"] * (os.cpu_count() or 1) * 10), 1)
        if cpu_ms and sent["seconds"]
        else None,
    }


class _CountingRedis:
    """Counts round trips: one per command call, one per pipeline execute."""

    def __init__(self, client) -> None:
        self.client = client
        self.round_trips = 0

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if name == "pipeline":

            def pipeline(*a, **kw):
                pipe = attribute(*a, **kw)
                execute = pipe.execute

                def counted_execute(*ea, **ekw):
                    self.round_trips += 1
                    return execute(*ea, **ekw)

                pipe.execute = counted_execute
                return pipe

            return pipeline
        if callable(attribute):

            def command(*a, **kw):
                self.round_trips += 1
                return attribute(*a, **kw)

            return command
        return attribute


def context(args: argparse.Namespace, run: str) -> dict:
    """Redis round trips and time per turn (load + save) with 1, 10 and 50 turns of history."""
    import uuid
    from types import SimpleNamespace

    from django_redis import get_redis_connection

    from bench.loadgen import summarize
    from routing.context import ContextStore

    iterations = 30 if args.quick else 500
    results = {}
    for turns in (1, 10, 50):
        bot = SimpleNamespace(uuid=uuid.uuid4(), name=f"{run}-ctx", max_context_turns=turns, context_ttl=60)
        client = _CountingRedis(get_redis_connection("default"))
        store = ContextStore(redis=client)
        for n in range(turns):
            store.append(bot, "chat", "user", f"question {n} " + "x" * 80, f"answer {n} " + "y" * 200)
        client.round_trips = 0
        times = []
        for n in range(iterations):
            started = time.perf_counter()
            history = store.load(bot, "chat", "user")
            store.append(bot, "chat", "user", f"question {n} " + "x" * 80, f"answer {n} " + "y" * 200)
            times.append((time.perf_counter() - started) * 1000)
        assert len(history) == 2 * turns
        results[f"turns_{turns}"] = {
            "turns": turns,
            "round_trips_per_turn": client.round_trips / iterations,
            "ms_per_turn": summarize(sorted(times)),
        }
        store.clear(bot, "chat", "user")
    return results


# -- output -----------------------------------------------------------------------------


def _fmt(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(report: dict) -> str:
    lines = [
        f"Switchboard bench — {report['machine']['cores']} cores, load {report['machine']['loadavg']}"
        f" (at the end: {report['machine'].get('loadavg_end', '-')}), "
        f"gunicorn {report['settings']['gunicorn']}, celery {report['settings']['celery']}"
    ]
    ing = report.get("ingestion")
    if ing:
        lines += [
            "",
            f"Ingestion (closed loop, {ing['wecom']['mode']})",
            f"{'endpoint':<22}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'CPU ms':>8}  statuses",
        ]
        for key, label in (
            ("bare_before", "bare DRF POST (1st)"),
            ("wecom", "WeCom callback"),
            ("feishu", "Feishu callback"),
            ("bare_after", "bare DRF POST (2nd)"),
            ("wecom_fixed_rate", f"WeCom @ {ing['wecom_fixed_rate']['mode']}"),
        ):
            r = ing[key]
            ratio = ing["ratios"].get(key) if key in ing["ratios"] else None
            lines.append(
                f"{label:<22}{_fmt(r['requests_per_second']):>9}{_fmt(ratio):>8}"
                f"{_fmt(r['ack_ms']['p50']):>9}{_fmt(r['ack_ms']['p95']):>9}{_fmt(r['ack_ms']['p99']):>9}"
                f"{_fmt(r.get('machine_cpu_ms_per_request')):>8}  {r['statuses']}"
            )
        lines.append(
            "CPU ms: busy CPU time of the whole machine (server, PostgreSQL, Redis, load generator) "
            "per answered request"
        )
    for part, model in (("end_to_end", "instant model"), ("end_to_end_slow_model", "model answering after {} s")):
        e2e = report.get(part)
        if not e2e:
            continue
        lines += [
            "",
            f"End to end (callback sent -> reply received at the fake WeCom; "
            f"{model.format(_fmt(e2e.get('model_delay_s')))})",
            f"{'rate/s':<8}{'accepted':>9}{'delivered':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
            f"{'ack p99':>9}{'busy %':>8}{'model calls at once':>21}",
        ]
        for key, r in e2e.items():
            if key.startswith("rate_"):
                lines.append(
                    f"{_fmt(r['rate']):<8}{r['accepted']:>9}{r['delivered']:>10}"
                    f"{_fmt(r['end_to_end_ms']['p50']):>9}{_fmt(r['end_to_end_ms']['p95']):>9}"
                    f"{_fmt(r['end_to_end_ms']['p99']):>9}{_fmt(r['ack_ms']['p99']):>9}"
                    f"{_fmt(r.get('machine_busy_percent')):>8}{_fmt(r.get('most_model_calls_at_once')):>21}"
                )
        lines.append("busy %: the whole machine's CPU, busy while the callbacks were sent")
    ctx = report.get("context")
    if ctx:
        lines += ["", "Context (load + save of one turn)", f"{'turns':<8}{'round trips':>12}{'p50 ms':>9}{'p99 ms':>9}"]
        for r in ctx.values():
            lines.append(
                f"{r['turns']:<8}{_fmt(r['round_trips_per_turn']):>12}{_fmt(r['ms_per_turn']['p50']):>9}"
                f"{_fmt(r['ms_per_turn']['p99']):>9}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    run = _setup_django()
    import celery
    import gunicorn
    from django.conf import settings
    from django.core.management import call_command

    from bots.models import Bot
    from routing.models import ModelBackend

    args.celery_concurrency = args.celery_concurrency or settings.CELERY_WORKER_CONCURRENCY
    if not args.no_migrate:
        call_command("migrate", verbosity=0)
    phases = {p.strip() for p in args.phases.split(",")}
    log_dir = Path(tempfile.mkdtemp(prefix=f"{run}-logs-"))
    report: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cores": os.cpu_count(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "settings": {
            "gunicorn": f"{gunicorn.__version__}, {args.workers} sync workers, no threads",
            "celery": f"{celery.__version__}, prefork -c {args.celery_concurrency}, prefetch "
            f"{settings.CELERY_WORKER_PREFETCH_MULTIPLIER}",
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "load_generator": f"bench.loadgen (asyncio, own process), {args.concurrency} connections, "
            "one connection per request",
        },
    }
    gunicorn_server = Gunicorn(args.workers, log_dir)
    try:
        if phases & {"ingestion", "e2e", "slow-model"}:
            gunicorn_server.start()
        if "ingestion" in phases:
            report["ingestion"] = ingestion(args, run, _make_bots(run), log_dir, gunicorn_server)
        if "e2e" in phases:
            report["end_to_end"] = end_to_end(
                args, run, log_dir, gunicorn_server, [float(r) for r in args.e2e_rates.split(",") if r.strip()]
            )
        if "slow-model" in phases:
            report["end_to_end_slow_model"] = end_to_end(
                args, run, log_dir, gunicorn_server, [args.slow_rate], model_delay=args.slow_model
            )
        if "context" in phases:
            report["context"] = context(args, run)
    finally:
        gunicorn_server.stop()
        Bot.objects.filter(name__startswith=f"{run}-").delete()
        ModelBackend.objects.filter(name__startswith=f"{run}-").delete()
        _drop_queue(run)
    report["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["logs"] = str(log_dir)
    print(table(report))
    out = Path(args.out) if args.out else REPO_ROOT / "var" / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
