"""HTTP load generator, run as its own process so it never shares the server's GIL.

    python -m bench.loadgen REQUESTS.jsonl --url http://127.0.0.1:8000 \
        --mode closed --concurrency 16            # full load
    python -m bench.loadgen REQUESTS.jsonl --url ... --mode open --rate 200   # fixed rate

REQUESTS.jsonl holds one request per line: {"method", "path", "headers", "body"}
(body a string, sent as is). Each request is sent once. Prints one JSON object:
count, errors, status counts, elapsed seconds, throughput and latency percentiles.

In open mode request i is due at start + i/rate, and its latency is measured from
that due time, not from when a worker got to it: a stalled server shows up in the
percentiles instead of silently slowing the load (no coordinated omission).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def load_requests(path: Path) -> list[Request]:
    requests = []
    for line in path.read_text().splitlines():
        if line.strip():
            raw = json.loads(line)
            body = raw.get("body")
            requests.append(
                Request(
                    method=raw.get("method", "POST"),
                    path=raw["path"],
                    headers=raw.get("headers", {}),
                    body=body.encode() if isinstance(body, str) else None,
                )
            )
    return requests


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(
    latencies: list[float], statuses: Counter[int], errors: int, elapsed: float
) -> dict[str, Any]:
    ordered = sorted(latencies)
    count = len(latencies)
    return {
        "count": count,
        "errors": errors,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else float("nan"),
    }


def run(
    requests: list[Request], url: str, *, mode: str, concurrency: int, rate: float, timeout: float
) -> dict[str, Any]:
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    start = time.perf_counter() + 0.2  # every worker thread is started by then

    def worker() -> None:
        nonlocal next_index, errors
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        # Every worker starts at `start`: in either mode nothing is sent earlier, so the
        # elapsed time (and the throughput) covers every request. (No connection is
        # opened ahead: a sync gunicorn worker would sit on it until its first request.)
        delay = start - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        while True:
            with lock:
                index = next_index
                next_index += 1
            if index >= len(requests):
                break
            request = requests[index]
            due = start + index / rate if mode == "open" else time.perf_counter()
            if mode == "open":
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            try:
                connection.request(
                    request.method, request.path, body=request.body, headers=request.headers
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
                with lock:
                    errors += 1
                continue
            finished = time.perf_counter()
            with lock:
                latencies.append(finished - due)
                statuses[status] += 1
        connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return summarise(latencies, statuses, errors, elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s in open mode")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = run(
        load_requests(args.requests),
        args.url,
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        timeout=args.timeout,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
