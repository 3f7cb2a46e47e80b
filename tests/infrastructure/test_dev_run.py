"""`make run` (scripts/dev.py): the web server and a `gateway worker` beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.settings import PROJECT_ROOT
from tests.support.config import free_port


def _children(pid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(cmdline)
    return found


def test_make_run_starts_a_worker_beside_the_web_server(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}",
        "GATEWAY_PORT": str(port),
        "STRIPE_SECRET_KEY": "sk_test_dev_run",  # no sandbox on its fixed port
    }
    log = tmp_path / "make-run.log"
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(PROJECT_ROOT / "scripts" / "dev.py")],
        cwd=PROJECT_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "worker started" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not start"
                assert process.poll() is None, log.read_text()
                time.sleep(0.2)
        children = _children(process.pid)
        assert any(" worker" in child for child in children), children
        assert any(" run " in child for child in children), children
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        process.wait(timeout=40)
        output = log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output
    assert "Worker:" in output
    assert "worker stopped" in output
