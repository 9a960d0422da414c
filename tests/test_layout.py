"""The package layout: old (0.1) import paths keep working for one release, with a DeprecationWarning;
modules and functions stay small; the core names no model."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old, new, name", [
    ("stbench.patch_cache", "stbench.data.patches", "H5Images"),
    ("stbench.readers.base", "stbench.data.readers.base", "SlideReader"),
    ("stbench.readers.checks", "stbench.data.readers", "check_slide_adata"),
    ("stbench.metrics", "stbench.eval.metrics", "pearson"),
    ("stbench.results", "stbench.report.results", "load_result"),
    ("stbench.leaderboard", "stbench.report.leaderboard", "render_dir"),
    ("stbench.nn.contrastive", "stbench_contrastive.model", "ContrastiveModel"),
    ("stbench.loader", "stbench.data.loader", "PatchDataset"),
])
def test_old_import_paths_warn_and_forward(old, new, name):
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
            f"warnings.simplefilter('ignore')\nimport importlib\n"
            f"old, new = importlib.import_module('{old}'), importlib.import_module('{new}')\n"
            f"assert getattr(old, '{name}') is getattr(new, '{name}')\n"
            f"from {old} import {name}\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    warned = out.stdout.splitlines()[0]  # the old module's warning, or its old parent package's
    assert warned.startswith("warned: stbench.") and f" moved to {new.rsplit('.', 1)[0]}" in warned, warned
    assert old.startswith(warned.split()[1]) and out.stdout.strip().endswith("ok")


def test_the_tree_reads_like_the_pipeline():
    for folder in ("data", "data/readers", "data/fetch", "data/patches", "nn", "eval", "report", "report/leaderboard", "cli"):
        assert (REPO / "stbench" / folder / "__init__.py").is_file(), folder
    flat = sorted(p.stem for p in (REPO / "stbench").glob("*.py"))
    assert flat == ["__init__", "__main__", "_compat", "api", "atomic", "bench", "builtin", "bundle", "dataset",
                    "errors", "extras", "hookspecs", "metric", "model", "options", "plugins", "registry", "runner",
                    "slide", "testing", "training"]


def _sources():
    for root in ("stbench", "plugins"):
        yield from sorted((REPO / root).rglob("*.py"))


def test_no_module_over_400_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for path in _sources():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_modules.append(f"{path.relative_to(REPO)} ({len(text.splitlines())})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert long_modules == [] and long_functions == []


def test_the_core_names_no_model():
    names = re.compile(r"heclip|bleep|\bclip\b|histogene|stnet|st-net|random-k|`mean` baseline", re.IGNORECASE)
    hits = []
    for path in sorted((REPO / "stbench").rglob("*")):
        if path.suffix == ".py" and "__pycache__" not in path.parts and path.name != "_compat.py":
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if names.search(line.replace("np.clip", "").replace(".clip(", "")):
                    hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert hits == []
