"""Shared benchmark machinery: machine info, alternated timing, medians, ratios, JSON.

Every figure a benchmark reports is a ratio against a baseline timed in the same
process and run. Cases are timed in alternation (``A B A B ...``, or ``A B C A B C``)
after warm-up calls, with the garbage collector off, and summarised by medians; a
ratio is the median of the per-round ratios (each round's case time over the same
round's baseline), which cancels slow drifts of a shared, noisy machine.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: CPUs, platform, versions, threads, load, date."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem_total = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "memory_bytes": mem_total,
        "load_average_1_5_15": load,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and the raw samples (seconds)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"n": len(xs), "median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "max": xs[-1],
            "samples": [float(x) for x in samples]}


def alternate(cases: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
              between: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Time every case once per round, in a fixed alternating order (A B C A B C ...).

    Args:
        cases: ``{name: zero-argument callable}``; the first is usually the baseline.
        rounds: Timed calls per case.
        warmup: Untimed calls per case first (also alternated).
        between: Called (untimed) before every timed call, e.g. to reset state.

    Returns:
        ``{name: [seconds per round]}``.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            if between is not None:
                between()
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name in names:
                if between is not None:
                    between()
                tic = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - tic)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def paired_ratio(case: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
    """Median over rounds of ``case[i] / base[i]`` (with quartiles), and the ratio of medians."""
    ratios = [c / b for c, b in zip(case, base) if b > 0]
    s = summary(ratios)
    return {"median": s.get("median"), "q1": s.get("q1"), "q3": s.get("q3"),
            "ratio_of_medians": statistics.median(case) / statistics.median(base) if base and case else None}


def target(value: float, measured: float | None, kind: str = "<=", unit: str = "") -> dict[str, Any]:
    """``{target, measured, met}`` for a ``measured <= value`` (or ``<``, ``>=``) target."""
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        met = False
    elif kind == "<=":
        met = measured <= value
    elif kind == "<":
        met = measured < value
    elif kind == ">=":
        met = measured >= value
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    return {"target": f"{kind} {value:g}{unit}", "measured": measured, "met": bool(met)}


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}%"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table (for the summary printed after a run)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
