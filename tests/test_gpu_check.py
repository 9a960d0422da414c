"""benchmarks/gpu_check.py waits for a GPU; its --smoke mode runs every check at tiny sizes on the CPU so the
script cannot rot unnoticed (the 2-process step must agree with one process)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_check_at_smoke_sizes():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5
    assert all(float(r.split("|")[2].split()[0]) > 0 for r in rows[:2])  # images/s
    loss, grad = (float(v) for v in re.findall(r"\| ([0-9.e+-]+), ([0-9.e+-]+);", rows[2])[0])
    assert loss < 1e-5 and grad < 1e-4
    assert rows[4].rstrip(" |").endswith("1.000")
