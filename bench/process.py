"""Running a command as a child process and measuring it: wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT


@dataclass(frozen=True)
class CommandRun:
    returncode: int
    elapsed_s: float
    peak_rss_mib: float  # the child's own maximum resident set (getrusage via wait4)
    output: str  # stdout
    errors: str  # stderr


def run_measured(argv: list[str], env: dict[str, str], *, cwd: Path = ROOT) -> CommandRun:
    """Run `argv` to its end; its stdout and stderr are kept in files (no pipe to fill)."""
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=output, stderr=errors
        )
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would mix in every child
        # this process ever waited for (gunicorn, the load generator, ...).
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        errors.seek(0)
        text, error_text = output.read(), errors.read()
    return CommandRun(
        returncode=process.returncode,
        elapsed_s=elapsed,
        peak_rss_mib=usage.ru_maxrss / 1024,  # Linux reports KiB
        output=text,
        errors=error_text,
    )
