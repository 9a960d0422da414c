"""The board's plain sentences, "what these results show (and do not)": one function per finding, each
computed from the rows and returning its sentences (none when the rows cannot support it). Which rows
are calibration rows and which claims a paper makes come from the model cards."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .rows import BoardContext, Row, finite, fmt, p_is, p_text, paired, reference_row

ALPHA = 0.05


@dataclass(frozen=True)
class Board:
    """What every finding reads: the rows (board order), the ranking metric and its declaration."""

    rows: Sequence[Row]
    context: BoardContext
    rank: str
    rank_label: str

    @property
    def models(self) -> list[Row]:
        return [r for r in self.rows if not r.baseline]

    def calibration(self, role: str) -> Row | None:
        """The default-configuration baseline row whose card calibrates ``role``."""
        return next((r for r in self.rows if r.baseline and r.card(self.context).get("calibration") == role
                     and not r.changes), None)

    def test(self, a: Row, b: Row) -> Any:
        from ...eval.stats import paired_wilcoxon

        pair = paired(a, b, self.rank)
        return paired_wilcoxon(*pair) if pair is not None else None


def best_model(board: Board) -> list[str]:
    top = board.models[0]
    return [f"Highest mean per-gene {board.rank_label}: **{top.label}** ({top.shown(board.rank)})."]


def _above(board: Board, role: str, what: str) -> list[str]:
    """Which trained models beat the calibration row of ``role`` (paired Wilcoxon, positive median)."""
    reference = board.calibration(role)
    if reference is None:
        return []
    above, not_above = [], []
    for row in board.models:
        test = board.test(row, reference)
        ok = test is not None and test.p_value < ALPHA and test.median_difference > 0
        (above if ok else not_above).append(f"`{row.label}`")
    return [f"Above {what.format(model=reference.model)} (paired Wilcoxon on per-gene {board.rank_label}, p < {ALPHA}, "
            f"positive median difference): {', '.join(above) or 'none'}"
            + (f"; not above: {', '.join(not_above)}." if not_above else ".")]


def above_chance(board: Board) -> list[str]:
    return _above(board, "chance", "the {model} baseline")


def above_frozen_encoder(board: Board) -> list[str]:
    """What training adds over a pretrained encoder read out linearly (the field's first question)."""
    return _above(board, "frozen", "the frozen-encoder `{model}` row, i.e. what training adds over a pretrained encoder")


def per_slide_metrics_against_constant(board: Board) -> list[str]:
    """A family of per-slide metrics (Hit@1/2/3) of the constant baseline beside the best model's."""
    constant = board.calibration("constant")
    meta = board.context.metrics
    per_slide = [n for n, m in meta.items() if not m.get("per_gene")]
    if constant is None or not per_slide:
        return []
    stem = str(meta[per_slide[0]]["label"]).rstrip("0123456789")
    names = [n for n in per_slide if str(meta[n]["label"]).startswith(stem)
             and str(meta[n]["label"])[len(stem):].isdigit()] or per_slide[:1]
    if not all(finite(constant.value(n)[0]) for n in names):
        return []
    best = [max((v for r in board.models for v in [r.value(n)[0]] if finite(v)), default=math.nan) for n in names]
    family = stem + "/".join(str(meta[n]["label"])[len(stem):] for n in names) if stem else str(meta[names[0]]["label"])
    return [f"{family} of the `{constant.model}` baseline, which ignores the image: "
            f"{'/'.join(f'{constant.value(n)[0]:.3f}' for n in names)}; best model: "
            f"{'/'.join(fmt(b, None) for b in best)}. {stem}T credits the genes every spot expresses, so read it "
            f"against this row."]


def paper_claims(board: Board) -> list[str]:
    """Every claim a model card makes ("beats X") that this board can test."""
    by_model: dict[str, list[Row]] = {}
    for row in board.models:
        by_model.setdefault(row.model, []).append(row)
    out = []
    for model, rows in by_model.items():
        for other in rows[0].card(board.context).get("claims", ()):
            if other not in by_model:
                continue
            ra, rb = reference_row(rows), reference_row(by_model[other])
            test = board.test(ra, rb)
            if test is None:
                continue
            if test.p_value < ALPHA and test.median_difference > 0:
                verdict = "holds here"
            elif test.p_value < ALPHA and test.median_difference < 0:
                verdict = "does not hold here: the difference goes the other way"
            else:
                verdict = "is not supported here: no significant difference"
            out.append(f"The paper's claim that {model} beats {other} {verdict} (mean per-gene {board.rank_label} "
                       f"{fmt(ra.value(board.rank)[0], None)} vs {fmt(rb.value(board.rank)[0], None)}, median per-gene "
                       f"difference {test.median_difference:+.3f}, paired Wilcoxon {p_is(test.p_value)}, "
                       f"{test.n} (gene, fold, seed) pairs).")
    return out


def seed_spread(board: Board) -> list[str]:
    several = [row for row in board.models if len({r.seed for r in row.runs}) > 1]
    if not several:
        return ["Not shown: variation between training runs (one seed per configuration; `--seeds N` "
                "pools seeds into each row)."]
    per_seed = "; ".join(f"{row.label}: " + " / ".join(fmt(r.summary.get(board.rank, {}).get("mean"), None)
                                                       for r in row.runs) for row in several)
    single = [f"`{row.label}`" for row in board.models if row not in several]
    return [f"Variation between training runs, mean per-gene {board.rank_label} per seed: {per_seed}."
            + (f" One seed only: {', '.join(single)}; read their gaps against this spread." if single else "")]


def reduced_settings(board: Board) -> list[str]:
    reduced = sorted({r.profile for row in board.models for r in row.runs} - {"paper"})
    if not reduced:
        return []
    return [f"Not shown: how the models rank at their published settings (these rows use the "
            f"{', '.join(f'`{p}`' for p in reduced)} profile)."]


FINDINGS: tuple[Callable[[Board], list[str]], ...] = (
    best_model, above_chance, above_frozen_encoder, per_slide_metrics_against_constant, paper_claims, seed_spread,
    reduced_settings,
)


def findings(rows: Sequence[Row], context: BoardContext, rank: str | None,
             meta: Mapping[str, Mapping[str, Any]]) -> str:
    """The findings as markdown bullets ("" when no model row or no ranking metric)."""
    if rank is None or not any(not r.baseline for r in rows):
        return ""
    board = Board(rows, BoardContext(metrics=meta, cards=context.cards), rank, str(meta[rank]["label"]))
    lines = [line for finding in FINDINGS for line in finding(board)]
    return "".join(f"- {line}\n" for line in lines)


__all__ = ["ALPHA", "FINDINGS", "Board", "findings", "p_text"]
