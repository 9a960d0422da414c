"""``stbench leaderboard``, ``export`` and ``plot``: reports from results files."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import StbenchError
from .app import DEFAULT_RESULTS, _app, cli


@cli.command()
@click.option("--results", "results_dir", default=DEFAULT_RESULTS, show_default=True, type=click.Path(file_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Markdown file [default: RESULTS/LEADERBOARD.md].")
@click.option("--figures", "figures_dir", default=None, type=click.Path(file_okay=False),
              help="PNG folder to link [default: figures/ beside the markdown, if present].")
@click.option("--check", is_flag=True, help="Exit 1 if the markdown differs from what the results give.")
@click.pass_context
def leaderboard(ctx: click.Context, results_dir: str, out: str | None, figures_dir: str | None, check: bool) -> None:
    """Render the markdown leaderboard from results files."""
    from ..atomic import write_text

    if not Path(results_dir).is_dir():
        raise StbenchError(f"results folder {results_dir} does not exist; run `stbench run` or pass --results")
    target = Path(out) if out else Path(results_dir) / "LEADERBOARD.md"
    text = render_board(ctx, results_dir, target, figures_dir)
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            click.echo(f"stbench: {target} is stale: run `stbench leaderboard --results {results_dir} --out {target}`", err=True)
            sys.exit(1)
        click.echo(f"{target} is up to date")
        return
    write_text(target, text)
    click.echo(f"wrote {target}")


def render_board(ctx: click.Context, results_dir: str | Path, target: Path, figures_dir: str | None) -> str:
    from ..report.leaderboard import BoardContext, render_dir

    context = BoardContext.from_plugins(_app(ctx).plugins)
    return render_dir(results_dir, figures_dir or target.parent / "figures", relative_to=target.parent, context=context)


def _results_files(paths: tuple[str, ...]) -> list[Path]:
    from ..report.results import find_results

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += find_results(p)
        elif p.is_file():
            files.append(p)
        else:
            raise StbenchError(f"{p} is neither a results file nor a folder; pass files written by `stbench run`")
    if not files:
        raise StbenchError(f"no results files in {', '.join(paths)}; run `stbench run` first")
    return files


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the exported files.")
@click.option("--format", "formats", default="csv,h5ad", show_default=True, help="Comma list of csv, csv.gz, parquet, h5ad.")
def export(results: tuple[str, ...], out: str, formats: str) -> None:
    """Export runs for other tools: the HEtoSGEBench long table, per-gene metrics and AnnData (.h5ad)."""
    from ..report.export import export_run

    chosen = [f.strip() for f in formats.split(",") if f.strip()]
    for path in _results_files(results):
        for written in export_run(path, out, chosen):
            click.echo(f"wrote {written}")


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNG files.")
@click.option("--kind", "kinds", default="box,loss,umap,spatial", show_default=True,
              help="Comma list: box (per-gene RMSE/SSIM), loss (training curves), umap (embeddings), spatial (maps).")
@click.option("--dataset", default=None, help="Only this dataset (results folders).")
@click.option("--protocol", default=None, type=click.Choice(["strict", "paper"]), help="Only this protocol (results folders).")
@click.option("--seed", default=None, type=int, help="Only the runs of this seed (results folders).")
def plot(results: tuple[str, ...], out: str, kinds: str, dataset: str | None, protocol: str | None,
         seed: int | None) -> None:
    """Figures for results files or folders: box plots, loss curves, UMAPs and spatial maps (PNG)."""
    from ..report.figures import plot_dir, plot_run

    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    written = []
    for item in map(Path, results):
        if item.is_dir():
            written += plot_dir(item, out, dataset=dataset, protocol=protocol, kinds=chosen, seed=seed)
        elif item.is_file():
            written += plot_run(item, out, kinds=chosen)
        else:
            raise StbenchError(f"{item} is neither a results file nor a folder; pass files written by `stbench run`")
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo("no figures: the results hold no per-gene values, histories or predictions files for these kinds", err=True)
