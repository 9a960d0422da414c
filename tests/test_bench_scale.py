"""The scale benchmark runs end to end at a tiny size: real-format slides written, stages and commands in
child processes, peak RSS measured, exponents fitted. (Its figures at 10k-100k spots are in
benchmarks/RESULTS.md; no timing is asserted here.)"""
from __future__ import annotations

import json
import sys

from conftest import REPO


def test_bench_scale_at_a_tiny_size(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    rows = bench_scale.main(["--spots", "300,600", "--genes", "400", "--image-px", "1200", "--hvg", "50",
                             "--stages", "read,metrics", "--commands", "run random-k",
                             "--threads", "1", "--json", str(tmp_path / "scale.json")])
    stages = [(r["spots"], r["stage"]) for r in rows]
    assert stages == [(n, s) for n in (300, 600) for s in ("read", "metrics", "stbench run random-k")]
    assert all(r["wall_s"] > 0 and 100 < r["peak_mb"] < 4000 for r in rows)
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert set(saved["exponents"]) == {"read", "metrics", "stbench run random-k"}
    out = capsys.readouterr().out
    assert "fitted exponent b (wall ~ spots^b): read" in out and "   600 metrics" in out
