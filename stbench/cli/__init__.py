"""The ``stbench`` command line. Only this module prints; the library reports through callbacks."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import StbenchError

DEFAULT_RESULTS = "results"


class App:
    """Lazily loaded plugins for one command invocation. Every command that loads plugins says, one line
    each on stderr, which plugins failed to load and why (``stbench plugins`` lists them itself)."""

    def __init__(self, plugins_dirs: tuple[str, ...], catalogs: tuple[str, ...]) -> None:
        self.plugins_dirs, self.catalogs = plugins_dirs, catalogs
        self._plugins = None
        self.report_failures = True

    @property
    def plugins(self):
        if self._plugins is None:
            from ..plugins import get_plugin_manager

            self._plugins = get_plugin_manager(self.plugins_dirs, self.catalogs)
            if self.report_failures:
                for f in self._plugins.failures:
                    click.echo(f"stbench: warning: plugin '{f.name}' failed to load: {f.error} [{f.source}]", err=True)
        return self._plugins


class _StderrHandler(logging.Handler):
    """The library's warnings as ``stbench: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"stbench: {record.levelname.lower()}: {record.getMessage()}", err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("stbench")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.WARNING)
        logger.addHandler(handler)


def _app(ctx: click.Context) -> App:
    root = ctx.find_root()
    if "stbench.app" not in root.meta:
        dirs = tuple(root.params.get("plugins_dir") or ()) + tuple(p for p in os.environ.get("STBENCH_PLUGINS_DIR", "").split(os.pathsep) if p)
        root.meta["stbench.app"] = App(dirs, tuple(root.params.get("catalog") or ()))
    return root.meta["stbench.app"]


class StbenchGroup(click.Group):
    """Adds the commands that plugins register (``register_commands``) on first use."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        root = ctx.find_root()
        if "stbench.commands" not in root.meta:
            extra = click.Group("plugins")
            try:
                _app(ctx).plugins.pm.hook.register_commands(cli=extra)
            except StbenchError as e:
                click.echo(f"stbench: warning: plugin commands unavailable: {e}", err=True)
            root.meta["stbench.commands"] = {n: c for n, c in extra.commands.items() if n not in self.commands}
        return root.meta["stbench.commands"]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands(ctx)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._plugin_commands(ctx).get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StbenchError as e:
            click.echo(f"stbench: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=StbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins-dir", multiple=True, type=click.Path(file_okay=False), help="Load every *.py in DIR as a plugin.")
@click.option("--catalog", multiple=True, type=click.Path(dir_okay=False), help="Extra datasets.toml-style catalogue.")
@click.version_option(package_name="stbench")
def cli(plugins_dir: tuple[str, ...], catalog: tuple[str, ...]) -> None:
    """Benchmark models that predict spatial gene expression from H&E histology."""
    _log_to_stderr()


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@cli.command()
@click.option("--model", "-m", required=True, help="Model name (stbench list models).")
@click.option("--dataset", "-d", required=True, help="Dataset name (stbench list datasets).")
@click.option("--folds", default="default", show_default=True, help="default | single | all | patients | slide ids, comma-separated.")
@click.option("--protocol", default="strict", show_default=True, type=click.Choice(["strict", "paper"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Model option; profile=NAME picks a preset.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--out", default=DEFAULT_RESULTS, show_default=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--no-predictions", is_flag=True, help="Do not write the predictions file (figures and exports need it).")
@click.pass_context
def run(ctx: click.Context, model: str, dataset: str, folds: str, protocol: str, seed: int,
        options: tuple[str, ...], device: str, out: str, no_predictions: bool) -> None:
    """Fit and score MODEL on every fold of DATASET; write one results file."""
    from ..runner import RunRequest, run as run_one
    from .progress import RichProgress

    plugins = _app(ctx).plugins
    req = RunRequest(model=model, dataset=dataset, folds=folds, protocol=protocol, seed=seed, options=options,
                     device=device, save_predictions=not no_predictions)
    console = _console()
    with RichProgress(console) as progress:
        result, path = run_one(plugins, req, out, progress=progress)
    _print_summary(console, result)
    console.print(f"results: {path}")


@cli.command()
@click.option("--models", required=True, help="Comma-separated model names.")
@click.option("--datasets", required=True, help="Comma-separated dataset names.")
@click.option("--protocol", "protocols", default="strict", show_default=True, help="strict, paper, or both: strict,paper")
@click.option("--profile", default=None, help="Preset for every model that defines it (e.g. quick); others run their defaults.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Option for every model that has it.")
@click.option("--seeds", default=1, show_default=True, type=int, help="Run seeds 0..N-1.")
@click.option("--folds", default="default", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default=DEFAULT_RESULTS, show_default=True, type=click.Path(file_okay=False), help="Results folder.")
@click.option("--leaderboard", "board", default=None, type=click.Path(dir_okay=False), help="Markdown to render at the end [default: OUT/LEADERBOARD.md].")
@click.option("--no-predictions", is_flag=True, help="Do not write predictions files.")
@click.option("--keep-going", is_flag=True, help="Record a failed run and go on with the rest.")
@click.pass_context
def bench(ctx: click.Context, models: str, datasets: str, protocols: str, profile: str | None, options: tuple[str, ...],
          seeds: int, folds: str, device: str, out: str, board: str | None, no_predictions: bool, keep_going: bool) -> None:
    """Run every model x dataset x protocol x seed (skipping runs already in OUT), then render the leaderboard."""
    from ..atomic import write_text
    from ..bench import grid_requests, run_grid
    from .progress import RichProgress

    plugins = _app(ctx).plugins
    protocol_list = [p.strip() for p in protocols.split(",") if p.strip()]
    for p in protocol_list:
        if p not in ("strict", "paper"):
            raise StbenchError(f"unknown protocol '{p}' in --protocol; use strict, paper or strict,paper")
    requests = grid_requests(plugins, models, datasets, protocol_list, seeds, options, profile, folds, device,
                             save_predictions=not no_predictions)
    console = _console()
    console.print(f"grid: {len(requests)} run(s) into {out}")
    with RichProgress(console) as progress:
        report = run_grid(plugins, requests, out, progress=progress, keep_going=keep_going)
    for o in report.outcomes:
        r = o.request
        console.print(f"{o.status:<8} {r.model} on {r.dataset} ({r.protocol}, seed {r.seed})"
                      + (f": {o.reason}" if o.status == "failed" else f"  {o.path}"))
    target = Path(board) if board else Path(out) / "LEADERBOARD.md"
    write_text(target, _render_board(ctx, out, target, None))
    console.print(f"{report.count('ran')} ran, {report.count('skipped')} skipped, {report.count('failed')} failed; leaderboard: {target}")
    if report.count("failed"):
        sys.exit(1)


def _print_summary(console: Any, result: Any) -> None:
    from rich.table import Table

    from ..report.leaderboard import fmt as _fmt

    table = Table(title=f"{result.label} on {result.dataset} ({result.protocol}, {len(result.folds)} fold(s))")
    for col in ("metric", "median", "mean", "excluded genes per fold"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, s in result.summary.items():
        if name.startswith("pearson_") and not name.endswith("@50"):
            continue
        arrow = {True: " ↑", False: " ↓"}.get(result.metrics.get(name, {}).get("higher_is_better"), "")
        n = s.get("n_folds")
        median = _fmt(s.get("median"), s.get("median_sd"), n) if s.get("median") is not None or "n_nan" in s else ""
        excluded = ", ".join(str(f["scores"].get(name, {}).get("n_nan", "?")) for f in result.folds) if "n_nan" in s else ""
        table.add_row(name + arrow, median, _fmt(s.get("mean"), s.get("sd"), n), excluded)
    console.print(table)


@cli.command("list")
@click.argument("kind", type=click.Choice(["models", "datasets", "metrics", "readers"]))
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, kind: str, pattern: str, as_json: bool) -> None:
    """List registered models, datasets, metrics or readers (glob PATTERN)."""
    plugins = _app(ctx).plugins
    registry = getattr(plugins, kind)
    rows = []
    for name in registry.names(pattern):
        item = registry.get(name)
        if kind == "models":
            desc = item.card.summary + (" [baseline]" if item.card.baseline else "")
        elif kind == "metrics":
            desc = ("higher" if item.higher_is_better else "lower") + " is better; " + ("per gene" if item.per_gene else "per slide")
        else:
            desc = getattr(item, "description", "")
        rows.append({"name": name, "plugin": registry.origin(name), "description": desc})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:<22} {r['plugin']:<24} {r['description']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """Show loaded plugins with their version and hooks, and plugins that failed to load."""
    app = _app(ctx)
    app.report_failures = False
    p = app.plugins
    rows = [{"name": i.name, "version": i.version, "source": i.source, "hooks": p.hooks_of(i.name)} for i in p.loaded]
    failed = [{"name": i.name, "version": i.version, "source": i.source, "error": i.error} for i in p.failures]
    if as_json:
        click.echo(json.dumps({"loaded": rows, "failed": failed}, indent=1))
        return
    for r in rows:
        click.echo(f"{r['name']:<24} {r['version'] or '-':<10} {', '.join(r['hooks']) or '-':<40} {r['source']}")
    for r in failed:
        click.echo(f"{r['name']:<24} FAILED     {r['error']}  [{r['source']}]")


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
    text = _render_board(ctx, results_dir, target, figures_dir)
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            click.echo(f"stbench: {target} is stale: run `stbench leaderboard --results {results_dir} --out {target}`", err=True)
            sys.exit(1)
        click.echo(f"{target} is up to date")
        return
    write_text(target, text)
    click.echo(f"wrote {target}")


def _render_board(ctx: click.Context, results_dir: str | Path, target: Path, figures_dir: str | None) -> str:
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


def _catalog_dataset(ctx: click.Context, name: str) -> Any:
    from ..data.catalog_dataset import CatalogDataset

    dataset = _app(ctx).plugins.datasets.get(name)
    if not isinstance(dataset, CatalogDataset):
        raise StbenchError(f"dataset '{name}' is not read from files (it comes from plugin "
                           f"'{_app(ctx).plugins.datasets.origin(name)}'); nothing to fetch or prepare")
    return dataset


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--mirror", default=None, help="Folder or URL laid out like the dataset folder, replacing upstream [env: STBENCH_MIRROR].")
@click.pass_context
def fetch(ctx: click.Context, names: tuple[str, ...], mirror: str | None) -> None:
    """Download the source files of datasets into the data root (STBENCH_DATA), verified."""
    from ..data.fetch import dataset_folder, fetch_dataset
    from .progress import RichProgress

    console = _console()
    for name in names:
        dataset = _catalog_dataset(ctx, name)
        notes: list[str] = []
        with RichProgress(console) as progress:
            paths = fetch_dataset(dataset.entry, mirror=mirror, progress=progress, notify=notes.append)
        for note in notes:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{name}: {len(paths)} file(s) in {dataset_folder(dataset.entry)}")


@cli.command()
@click.argument("name")
@click.option("--folds", default="default", show_default=True)
@click.option("--protocol", default="strict", show_default=True, type=click.Choice(["strict", "paper"]))
@click.pass_context
def prepare(ctx: click.Context, name: str, folds: str, protocol: str) -> None:
    """Cut every slide's patches into the shared HDF5 cache and prepare each fold's expression."""
    from rich.table import Table

    from ..data.patches import open_patches
    from .progress import RichProgress

    dataset = _catalog_dataset(ctx, name)
    dataset.check_present()
    console = _console()
    table = Table(title=f"{name}: patch cache")
    for col in ("slide", "spots", "kept", "padded", "dropped", "blank", "file"):
        table.add_column(col, justify="left" if col in ("slide", "file") else "right")
    blank = {}
    with RichProgress(console) as progress:
        for slide in dataset.slides:
            path = dataset.patches(slide, progress)
            a = open_patches(path)["attrs"]
            blank[slide] = (int(a.get("n_blank") or 0), int(a["n_kept"]))
            table.add_row(slide, str(a["n_spots_in"]), str(a["n_kept"]), str(a["n_padded"]), str(a["n_dropped"]),
                          str(blank[slide][0]), str(path))
        fold_list = dataset.folds(folds)
        for i, fold in enumerate(fold_list):
            progress("prepare folds", i, len(fold_list), fold=fold.name)
            prepared = dataset.prepare(fold, protocol)
        progress("prepare folds", len(fold_list), len(fold_list))
    console.print(table)
    for slide, (n_blank, n) in blank.items():
        if n_blank:
            click.echo(f"stbench: warning: slide '{slide}': {n_blank} of {n} patches are blank (one colour, no "
                       f"tissue); check its image file before training on it", err=True)
    console.print(f"{len(fold_list)} fold(s) prepared ({protocol}); last: {len(prepared.genes)} genes")


@cli.group()
def cache() -> None:
    """Inspect, verify or clear the cache (STBENCH_CACHE): patches, prepared matrices, features, weights."""


_KIND_HELP = "Comma list of patches, prepared, features, weights [default: all]."


def _kind_list(kind: str | None) -> list[str] | None:
    return [k.strip() for k in kind.split(",") if k.strip()] if kind else None


@cache.command("ls")
@click.option("--kind", default=None, help=_KIND_HELP)
@click.option("--json", "as_json", is_flag=True)
def cache_ls(kind: str | None, as_json: bool) -> None:
    """List cached files (structure checked; `verify` reads every chunk)."""
    from ..data.cache import entries
    from ..data.locations import cache_root

    rows = entries(cache_root(), _kind_list(kind))
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for r in rows:
        state = "valid" if r["valid"] else f"INVALID ({r['reason']})"
        if r["kind"].endswith("-temp"):
            state = "temporary, " + r["reason"]
        click.echo(f"{r['kind']:<14} {r['key']:<44} {r['size_bytes'] / 1e6:9.1f} MB  {state}")
    click.echo(f"{len(rows)} file(s) in {cache_root()}")


@cache.command("verify")
@click.option("--kind", default=None, help=_KIND_HELP)
def cache_verify(kind: str | None) -> None:
    """Read every cached file in full (every chunk's checksum); exit 1 if any is damaged or stale."""
    from ..data.cache import verify
    from ..data.locations import cache_root

    bad = 0
    for kind_name, path, reason in verify(cache_root(), _kind_list(kind)):
        click.echo(f"{'ok' if reason is None else 'INVALID'}  {kind_name:<9} {path}" + (f"  ({reason})" if reason else ""))
        bad += reason is not None
    if bad:
        click.echo(f"{bad} damaged or stale file(s): `stbench cache clear --pattern KEY` removes one; the next "
                   f"prepare or run rebuilds it", err=True)
    sys.exit(1 if bad else 0)


@cache.command("clear")
@click.option("--pattern", default="*", show_default=True, help="Glob over keys, e.g. 'her2st/*' or 'patches/her2st/C3'.")
@click.option("--kind", default=None, help=_KIND_HELP)
def cache_clear(pattern: str, kind: str | None) -> None:
    """Delete cached files (with their locks, stamps and the temporaries of dead writers)."""
    from ..data.cache import clear
    from ..data.locations import cache_root

    click.echo(f"removed {clear(cache_root(), pattern, _kind_list(kind))} file(s) from {cache_root()}")


def main() -> None:
    cli(prog_name="stbench")
