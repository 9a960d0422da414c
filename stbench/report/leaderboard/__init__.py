"""The markdown leaderboard: rows and comparisons (``rows``), tables (``render``) and the computed
sentences (``findings``)."""
from .findings import ALPHA, findings
from .render import (command_of, figure_files, header, is_stale, load_all, render, render_ablations, render_dir,
                     render_hits, render_paired_tests, render_table)
from .rows import BoardContext, Row, fmt, paired, result_sort_key, rows_of

__all__ = ["ALPHA", "BoardContext", "Row", "command_of", "figure_files", "findings", "fmt", "header", "is_stale",
           "load_all", "paired", "render", "render_ablations", "render_dir", "render_hits", "render_paired_tests",
           "render_table", "result_sort_key", "rows_of"]
