"""Wait for an idle machine before a timed run: on a shared 2-core machine another process's
load moves timings by 2-4x (measured while writing ``collect_speed.py``)."""
from __future__ import annotations

import time


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(v) for v in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)       # idle + iowait
    return sum(parts), idle


def busy_fraction(interval: float = 0.5) -> float:
    """Fraction of all CPUs' time spent busy over *interval* seconds (0.0 where unknown)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float = 120.0, busy: float = 0.15) -> float:
    """Block until the CPUs are at most *busy* busy (or *max_wait* s passed); returns the last
    busy fraction seen, for the caller to report runs that could not wait for quiet."""
    deadline = time.monotonic() + max_wait
    while True:
        b = busy_fraction()
        if b <= busy or time.monotonic() >= deadline:
            return b
        time.sleep(1.0)
