"""What the bench scripts print beside their figures: percentiles and the CPU they were measured on (the machine
changes between sessions, so every figure names its CPU). Standard library only."""

from __future__ import annotations

import subprocess


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`: the sorted value at round(q * (n - 1))."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it ("unknown" where lscpu is missing or says nothing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"
