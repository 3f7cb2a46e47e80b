"""Results of `python -m bench`: bench/results.json (figures) rendered as bench/RESULTS.md.

Each scenario stores its latest run under its own name, so running one scenario
updates its part of RESULTS.md and leaves the others as they were measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.common import ROOT

RESULTS_JSON = ROOT / "bench" / "results.json"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
# Written by hand: what profiling found where a target was missed, what was changed.
PROFILES_MD = ROOT / "bench" / "PROFILES.md"

# The order scenarios appear in RESULTS.md.
ORDER = (
    "webhooks",
    "purchases",
    "credit-applications",
    "expire",
    "reconcile",
    "topups",
    "outgoing",
)

INTRO = """\
# Benchmark results

Written by `python -m bench` (see the README, "Development", "Benchmarks"); each
scenario's section is replaced when that scenario runs again. Every figure is taken on
PostgreSQL with the service under gunicorn (`config/gunicorn.conf.py`, `wsgi:app`) or
its `gateway` command, load sent from a separate process over loopback, and is set
against a baseline measured in the same run: absolute times depend on the machine and
on what else runs on it (the load average at the start of each run is shown), the
ratios much less so.
"""


@dataclass
class Target:
    what: str
    target: str
    measured: str
    met: bool | None  # None: a figure to report, no target


@dataclass
class ScenarioResult:
    name: str
    title: str
    markdown: str
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def environment(**extra: Any) -> dict[str, Any]:
    """Where and when a run happened."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "gateway"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (+ uncommitted changes in gateway/)" if dirty else ""),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **extra,
    }


def load() -> dict[str, Any]:
    if RESULTS_JSON.exists():
        data: dict[str, Any] = json.loads(RESULTS_JSON.read_text())
        return data
    return {}


def save(result: ScenarioResult) -> None:
    """Store `result` as its scenario's latest run and rewrite RESULTS.md."""
    data = load()
    data[result.name] = asdict(result)
    RESULTS_JSON.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    RESULTS_MD.write_text(render(data))


def _met(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def render(data: dict[str, Any]) -> str:
    parts = [INTRO]
    rows = []
    for name in ORDER:
        if name not in data:
            continue
        for target in data[name]["targets"]:
            rows.append(
                f"| {data[name]['title']} | {target['what']} | {target['target']} | "
                f"{target['measured']} | {_met(target['met'])} |"
            )
    if rows:
        parts.append("## Targets\n")
        parts.append("| scenario | figure | target | measured | met |\n|---|---|---|---|---|")
        parts.append("\n".join(rows) + "\n")
    for name in ORDER:
        if name not in data:
            continue
        scenario = data[name]
        env = scenario["environment"]
        where = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in env.items())
        parts.append(f"## {scenario['title']}\n")
        parts.append(f"_{where}._\n")
        parts.append(scenario["markdown"].rstrip() + "\n")
    if PROFILES_MD.exists():
        parts.append(PROFILES_MD.read_text().rstrip() + "\n")
    return "\n".join(parts)


def ms(value: float) -> str:
    return f"{value:.1f} ms"
