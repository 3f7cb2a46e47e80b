"""Running a command as a child process and measuring it: wall time and peak RSS.

The peak RSS is the child's own: getrusage's ru_maxrss of a child counts, at its exec,
the high-water mark of the address space it replaced, which for a child forked (or
vforked) by the benchmark is the benchmark's own (the stub's invoices, the seeded ids:
hundreds of MiB). So the command is started by a small intermediary,

    python -m bench.process RESULT.json -- COMMAND...

which forks it from its own ~10 MiB, waits for it with wait4 and writes its exit
status, wall time and ru_maxrss to RESULT.json. Output goes straight through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CommandRun:
    returncode: int
    elapsed_s: float
    peak_rss_mib: float  # the command's own maximum resident set
    output: str  # stdout
    errors: str  # stderr


def run_measured(argv: list[str], env: dict[str, str], *, cwd: Path = ROOT) -> CommandRun:
    """Run `argv` to its end; its stdout and stderr are kept in files (no pipe to fill)."""
    with (
        tempfile.TemporaryFile("w+") as output,
        tempfile.TemporaryFile("w+") as errors,
        tempfile.TemporaryDirectory() as scratch,
    ):
        result_path = Path(scratch) / "result.json"
        subprocess.run(
            [sys.executable, "-m", "bench.process", str(result_path), "--", *argv],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=output,
            stderr=errors,
            check=True,
        )
        result = json.loads(result_path.read_text())
        output.seek(0)
        errors.seek(0)
        text, error_text = output.read(), errors.read()
    return CommandRun(
        returncode=result["returncode"],
        elapsed_s=result["elapsed_s"],
        peak_rss_mib=result["maxrss_kib"] / 1024,  # Linux reports KiB
        output=text,
        errors=error_text,
    )


def main(argv: list[str]) -> int:
    result_path, separator, *command = argv
    if separator != "--" or not command:
        print("usage: python -m bench.process RESULT.json -- COMMAND...", file=sys.stderr)
        return 2
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    Path(result_path).write_text(
        json.dumps(
            {
                "returncode": process.returncode,
                "elapsed_s": elapsed,
                "maxrss_kib": usage.ru_maxrss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
