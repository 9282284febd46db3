"""A bounded load test of a running service: N concurrent clients for a fixed time.

Each client loops over the given files (good and bad, mixed) posting them to
/predict; the run stops by itself after --duration seconds. Reports requests by
status, 5xx and dropped requests (connection errors or timeouts), latency percentiles
and, with --pid, the server's memory (RSS of the process and its children) at the
start and the end. Only for servers you run: loopback addresses by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HELP = "bounded load test of a running service (concurrent clients, fixed duration)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="service base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("files", nargs="+", type=Path, help="files to post, used in turn (good and bad)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--pid", type=int, default=None, help="server process id, to report its memory")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    host = urlparse(args.url).hostname or ""
    if not args.allow_remote and host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {host}: pass --allow-remote for a server you run")
    if args.clients < 1 or args.duration <= 0:
        raise SystemExit("--clients must be >= 1 and --duration > 0")
    payloads = [(path.name, path.read_bytes()) for path in args.files]
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    report = asyncio.run(load_test(args.url, payloads, args.clients, args.duration, args.timeout, args.pid))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["server_errors"] == 0 and report["dropped"] == 0 else 1


async def load_test(
    url: str,
    payloads: list[tuple[str, bytes]],
    clients: int,
    duration: float,
    timeout: float,
    pid: int | None,
) -> dict[str, Any]:
    import httpx

    rss_start = server_rss(pid)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    dropped = 0
    deadline = time.monotonic() + duration

    async def client(offset: int) -> None:
        nonlocal dropped
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
            index = offset
            while time.monotonic() < deadline:
                name, data = payloads[index % len(payloads)]
                index += 1
                started = time.perf_counter()
                try:
                    response = await http.post("/predict", files={"file": (name, data)})
                except httpx.HTTPError:
                    dropped += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(offset) for offset in range(clients)))
    elapsed = time.monotonic() - started
    rss_end = server_rss(pid)
    return summarise(statuses, latencies, dropped, elapsed, clients, rss_start, rss_end)


def summarise(
    statuses: Counter[int],
    latencies: list[float],
    dropped: int,
    elapsed: float,
    clients: int,
    rss_start: int | None,
    rss_end: int | None,
) -> dict[str, Any]:
    ordered = sorted(latencies)

    def percentile(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

    growth = (rss_end - rss_start) / rss_start if rss_start and rss_end else None
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies) + dropped,
        "by_status": {str(code): count for code, count in sorted(statuses.items())},
        "server_errors": sum(count for code, count in statuses.items() if code >= 500),
        "dropped": dropped,
        "requests_per_second": round(len(latencies) / elapsed, 2) if elapsed else None,
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99)},
        "rss_mb": {
            "start": round(rss_start / 2**20, 1) if rss_start else None,
            "end": round(rss_end / 2**20, 1) if rss_end else None,
            "growth": round(growth, 4) if growth is not None else None,
        },
    }


def server_rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    import psutil

    process = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))


def format_report(report: dict[str, Any]) -> str:
    latency, rss = report["latency_ms"], report["rss_mb"]
    return "\n".join(
        [
            f"clients {report['clients']}, {report['seconds']} s, {report['requests']} requests "
            f"({report['requests_per_second']}/s)",
            f"by status: {report['by_status']}; 5xx: {report['server_errors']}; dropped: {report['dropped']}",
            f"latency ms: p50 {latency['p50']}, p90 {latency['p90']}, p99 {latency['p99']}",
            f"server RSS MB: start {rss['start']}, end {rss['end']}, growth {rss['growth']}",
        ]
    )
