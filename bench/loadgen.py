"""A load generator for platform callbacks: signed, encrypted WeCom or Feishu messages
(each with its own message id and nonce), or a bare JSON POST, sent over plain asyncio
sockets from their own process.

Closed loop (`--concurrency`, as fast as the server answers) or open loop (`--rate`,
fixed sends per second whatever the server does). It builds every request before the
clock starts, so signing and encryption do not count against the server. Point it at
any gateway configured with the same credentials:

    python -m bench.loadgen --url http://127.0.0.1:18789/callback/wecom/<uuid>/ \\
        --platform wecom --token=TOKEN --aes-key=AESKEY --app-id CORPID --duration 10

It prints (or writes with --json) the requests/s, the status counts, the ack latency
percentiles and, with --records, every request's message id, send time and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import urlsplit

PLATFORMS = ("wecom", "feishu", "bare")


@dataclass
class Prepared:
    message_id: str
    data: bytes


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU time all cores have spent busy since boot (Linux /proc/stat), None elsewhere.
    Its growth over a run, per request, is what a request costs the whole machine: the
    server, its database and Redis, and this load generator alike."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / _CLOCK_TICKS


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, round(fraction * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(sorted_values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (rounded) of an already sorted list of milliseconds."""
    figures = {
        "p50": percentile(sorted_values, 0.50),
        "p95": percentile(sorted_values, 0.95),
        "p99": percentile(sorted_values, 0.99),
        "max": sorted_values[-1] if sorted_values else None,
    }
    return {name: (round(value, 2) if value is not None else None) for name, value in figures.items()}


def _http_request(url: str, method: str, target_suffix: str, headers: dict[str, str], body: bytes) -> bytes:
    parts = urlsplit(url)
    target = (parts.path or "/") + target_suffix
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def prepare(args: argparse.Namespace, count: int) -> list[Prepared]:
    """count requests, each a distinct message, signed now (well inside the timestamp window)."""
    run = secrets.token_hex(4)
    base = int(time.time() * 1000) * 10_000
    prepared = []
    if args.platform == "wecom":
        from tests.fakes.wecom import wecom_callback, wecom_text_xml

        credentials = SimpleNamespace(app_id=args.app_id, token=args.token, encoding_aes_key=args.aes_key)
        for index in range(count):
            msg_id = str(base + index)
            xml = wecom_text_xml(args.app_id, f"user{index % args.senders}", f"bench {msg_id}", msg_id, args.agent_id)
            query, body = wecom_callback(credentials, xml)
            prepared.append(
                Prepared(msg_id, _http_request(args.url, "POST", "?" + query, {"Content-Type": "text/xml"}, body))
            )
    elif args.platform == "feishu":
        from tests.fakes.feishu import feishu_callback, feishu_event

        for index in range(count):
            msg_id = f"om_{run}_{index}"
            event = feishu_event(
                args.app_id,
                args.token,
                msg_id,
                f"oc_{run}",
                "p2p",
                f"ou_{run}{index % args.senders}",
                f"bench {msg_id}",
            )
            headers, body = feishu_callback(event, args.aes_key or None)
            prepared.append(Prepared(msg_id, _http_request(args.url, "POST", "", headers, body)))
    else:
        data = _http_request(args.url, "POST", "", {"Content-Type": "application/json"}, b"{}")
        prepared = [Prepared(str(index), data) for index in range(count)]
    return prepared


async def _send(host: str, port: int, request: Prepared, timeout: float) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(request.data)
            response = await asyncio.wait_for(reader.read(-1), timeout)
        finally:
            writer.close()
    except (OSError, TimeoutError):
        return 0, time.perf_counter() - started
    status_line = response.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    return status, time.perf_counter() - started


async def run(args: argparse.Namespace, prepared: list[Prepared]) -> dict:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    records: list[tuple[str, float, int, float]] = []  # message id, wall send time, status, seconds
    queue = iter(prepared)
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    deadline = started + args.duration

    async def one(request: Prepared) -> None:
        sent_at = time.time()
        status, seconds = await _send(host, port, request, args.timeout)
        records.append((request.message_id, sent_at, status, seconds))

    if args.rate:
        tasks = []
        for index, request in enumerate(queue):
            due = started + index / args.rate
            if due >= deadline:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request)))
        await asyncio.gather(*tasks)
    else:

        async def loop() -> None:
            for request in queue:
                if time.perf_counter() >= deadline:
                    return
                await one(request)

        await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    busy_after = machine_busy_seconds()
    busy = busy_after - busy_before if busy_before is not None and busy_after is not None else None
    latencies = sorted(seconds * 1000 for _, _, status, seconds in records if 200 <= status < 300)
    cpu_per_request = round(busy * 1000 / len(latencies), 3) if busy is not None and latencies else None
    statuses: dict[str, int] = {}
    for _, _, status, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    result = {
        "platform": args.platform,
        "url": args.url,
        "mode": f"rate {args.rate}/s" if args.rate else f"concurrency {args.concurrency}",
        "requests": len(records),
        "ok": len(latencies),
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "ack_ms": summarize(latencies),
        # Busy CPU time of the whole machine per answered request during the run, in ms.
        "machine_cpu_ms_per_request": cpu_per_request,
        "exhausted": len(records) >= len(prepared),
    }
    if args.records:
        result["records"] = [
            {"message_id": m, "sent_at": s, "status": st, "ms": round(sec * 1000, 3)} for m, s, st, sec in records
        ]
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the callback URL (http only)")
    p.add_argument("--platform", choices=PLATFORMS, required=True)
    p.add_argument("--app-id", default="", help="WeCom CorpID / Feishu App ID")
    p.add_argument("--token", default="", help="WeCom callback Token / Feishu Verification Token")
    p.add_argument("--aes-key", default="", help="WeCom EncodingAESKey / Feishu Encrypt Key")
    p.add_argument("--agent-id", default="1000002", help="WeCom AgentId")
    p.add_argument("--senders", type=int, default=50, help="distinct senders the messages come from")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--concurrency", type=int, default=16, help="connections in flight (closed loop)")
    p.add_argument("--rate", type=float, default=0.0, help="fixed requests per second (open loop)")
    p.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="requests to build beforehand (default: enough for 4,000/s, or the rate)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    p.add_argument("--records", action="store_true", help="include every request in the output")
    p.add_argument("--json", help="write the result here instead of standard output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.platform != "bare" and not (args.token and args.aes_key and args.app_id):
        print("--app-id, --token and --aes-key are needed to sign and encrypt callbacks", file=sys.stderr)
        return 2
    count = args.max_requests or int(args.duration * (args.rate * 1.05 + 1 if args.rate else 4000)) + 10
    result = run_sync(args, prepare(args, count))
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text)
    else:
        print(text)
    return 0


def run_sync(args: argparse.Namespace, prepared: list[Prepared]) -> dict:
    return asyncio.run(run(args, prepared))


if __name__ == "__main__":
    sys.exit(main())
