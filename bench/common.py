"""Shared pieces of the benchmarks: a fresh PostgreSQL database, gunicorn in its own
process group, the load generator in another process, and result tables."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_BENCH_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/gateway_bench"


def bench_database_url() -> str:
    return os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_BENCH_URL)


def fresh_database(url: str) -> None:
    """Drop and recreate the benchmark database, then migrate it to head."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": target.database},
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    admin.dispose()
    subprocess.run(
        [str(BIN / "gateway"), "db", "upgrade"],
        check=True,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


@contextlib.contextmanager
def gunicorn(
    app: str,
    env: dict[str, str],
    *,
    workers: int = 2,
    threads: int = 1,
    health_path: str = "/healthz",
) -> Iterator[str]:
    """Run `app` (module:attr) under gunicorn with the project's config; yields its URL."""
    port = free_port()
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", str(ROOT / "config" / "gunicorn.conf.py"), app],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "GATEWAY_BIND": f"127.0.0.1:{port}",
            "GATEWAY_WORKERS": str(workers),
            "GATEWAY_THREADS": str(threads),
            "GATEWAY_ACCESS_LOG": "",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    _SERVER_GROUPS[url] = process.pid  # its own session: the pid is the process group
    try:
        wait_until_up(url + health_path)
        yield url
    finally:
        _SERVER_GROUPS.pop(url, None)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


_SERVER_GROUPS: dict[str, int] = {}
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_by_pid(keep: Any) -> dict[int, float]:
    """CPU seconds (user + system) so far of every process `keep(pid, pgrp)` selects."""
    found: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if keep(int(entry), int(fields[2])):
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


@dataclass(frozen=True)
class CpuSnapshot:
    server: dict[int, float]
    database: dict[int, float]
    load: float


def cpu_snapshot(url: str, backend_pids: set[int]) -> CpuSnapshot:
    """CPU used so far by the gunicorn serving `url`, by the PostgreSQL processes in
    `backend_pids`, and by the load generators this process has waited for."""
    group = _SERVER_GROUPS[url]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(
        server=_cpu_by_pid(lambda _pid, pgrp: pgrp == group),
        database=_cpu_by_pid(lambda pid, _pgrp: pid in backend_pids),
        load=usage.ru_utime + usage.ru_stime,
    )


def cpu_per_request_ms(before: CpuSnapshot, after: CpuSnapshot, requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request between two snapshots, by party."""

    def spent(first: dict[int, float], last: dict[int, float]) -> float:
        return sum(cpu - first.get(pid, 0.0) for pid, cpu in last.items())

    parts = {
        "server": spent(before.server, after.server),
        "database": spent(before.database, after.database),
        "load generator": after.load - before.load,
    }
    return {name: round(1000 * seconds / requests, 2) for name, seconds in parts.items()}


def run_load(
    requests: list[dict[str, Any]],
    url: str,
    *,
    mode: str,
    concurrency: int = 16,
    rate: float = 200.0,
) -> dict[str, Any]:
    """Send `requests` from a separate process (bench.loadgen); returns its summary."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for request in requests:
            handle.write(json.dumps(request) + "\n")
        path = handle.name
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                path,
                "--url",
                url,
                "--mode",
                mode,
                "--concurrency",
                str(concurrency),
                "--rate",
                str(rate),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(path)
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
