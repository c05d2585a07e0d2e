"""One benchmark case per fresh child process: its own peak RSS, no caches warmed by an earlier case.

The child prints its result as one line `RESULT {json}` on stdout; `run_child` runs it and returns that dict, or
stops the benchmark with the child's output tail when it failed. Standard library only: bench/peer_llamaindex.py
runs in its own virtualenv and loads this file by path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PREFIX = "RESULT "


def emit(row: dict) -> None:
    """Child side: hand the result to the parent."""
    print(PREFIX + json.dumps(row), flush=True)


def run_child(cmd: list[str], label: str) -> dict:
    """Parent side: run `cmd`, return the dict it emitted."""
    print(f"== {label} (load average {os.getloadavg()[0]:.1f})", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith(PREFIX)), None)
    if p.returncode != 0 or line is None:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{label} failed (exit {p.returncode})")
    return json.loads(line[len(PREFIX):])
