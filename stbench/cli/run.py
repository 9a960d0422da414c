"""``stbench run`` and ``stbench bench``: one run, and grids of runs."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

import click

from ..errors import StbenchError
from .app import DEFAULT_RESULTS, _app, _console, cli
from .report import render_board


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
@click.option("--save-models", default=None, type=click.Path(file_okay=False),
              help="Keep each fold's trained model as a bundle in DIR/<fold> (stbench predict applies it).")
@click.option("--devices", default=1, show_default=True, type=int,
              help="Data-parallel training processes per machine: one per GPU, or CPU processes with --device cpu.")
@click.option("--num-nodes", default=1, show_default=True, type=int,
              help="Machines taking part; needs torchrun or srun on every node (docs/cluster.md).")
@click.option("--resume", is_flag=True, help="Continue each fold from its last complete epoch (OUT/checkpoints/...).")
@click.pass_context
def run(ctx: click.Context, model: str, dataset: str, folds: str, protocol: str, seed: int,
        options: tuple[str, ...], device: str, out: str, no_predictions: bool, save_models: str | None,
        devices: int, num_nodes: int, resume: bool) -> None:
    """Fit and score MODEL on every fold of DATASET; write one results file."""
    from ..nn.distributed import check_world
    from ..runner import RunRequest, run as run_one
    from .progress import RichProgress

    if num_nodes < 1:
        raise StbenchError(f"--num-nodes must be 1 or more, not {num_nodes}")
    plugins = _app(ctx).plugins
    req = RunRequest(model=model, dataset=dataset, folds=folds, protocol=protocol, seed=seed, options=options,
                     device=device, save_predictions=not no_predictions, save_models=save_models,
                     checkpoints=True, resume=resume)
    launched = check_world(devices, num_nodes)
    if launched is None and devices > 1:
        sys.exit(_launch(ctx, plugins, req, devices))
    with _process_group(req, launched) as main:
        console = _console()
        with RichProgress(console) if main else contextlib.nullcontext(None) as progress:
            result, path = run_one(plugins, req, out, progress=progress)
        if main:
            _print_summary(console, result)
            console.print(f"results: {path}")


@contextlib.contextmanager
def _process_group(req: Any, launched: Any) -> Iterator[bool]:
    """Join the data-parallel processes (when a launcher started several); yields whether this is rank 0."""
    if launched is None:
        yield True
        return
    from ..nn.distributed import check_devices, init, shutdown
    from ..runner import resolve_device

    device = resolve_device(req.device)
    check_devices(launched.local_size, device)
    init(device, launched)
    try:
        yield launched.main
    finally:
        shutdown()


def _launch(ctx: click.Context, plugins: Any, req: Any, devices: int) -> int:
    """``--devices N`` on one machine: check what a user can get wrong here, then run this command as N
    processes (torchrun's environment) and return their exit status."""
    from ..nn.distributed import check_devices, check_precision, local_launch
    from ..runner import plan, resolve_device

    device = resolve_device(req.device)
    check_devices(devices, device)
    check_precision(plan(plugins, req)["options"], device)
    root = ctx.find_root().params
    args = [a for d in root.get("plugins_dir") or () for a in ("--plugins-dir", d)]
    args += [a for c in root.get("catalog") or () for a in ("--catalog", c)]
    params = ctx.params
    args += ["run", "--model", req.model, "--dataset", req.dataset, "--folds", req.folds, "--protocol", req.protocol,
             "--seed", str(req.seed), "--device", req.device, "--out", params["out"], "--devices", str(devices)]
    args += [a for o in req.options for a in ("-o", o)]
    args += ["--no-predictions"] * (not req.save_predictions) + ["--resume"] * req.resume
    args += ["--save-models", req.save_models] if req.save_models else []
    return local_launch(args, devices, cpu=device == "cpu")


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
@click.option("--executor", default="local", show_default=True, type=click.Choice(["local", "ray", "slurm"]),
              help="Where runs execute: here one after another, as Ray tasks, or as SLURM jobs (docs/cluster.md).")
@click.option("--ray-address", default=None,
              help="Ray cluster: host:port, auto or ray://host:10001 [default: RAY_ADDRESS, else start a local one].")
@click.option("--slurm-profile", default=None, type=click.Path(dir_okay=False),
              help="TOML file of SLURM settings (partition, time, gpus_per_run, setup, ...).")
@click.option("--slurm-partition", default=None, help="SLURM partition (over the profile's).")
@click.option("--slurm-time", default=None, help="SLURM time limit per run: minutes, H:MM:SS or D-H:MM:SS.")
@click.option("--cpus-per-run", type=int, default=None,
              help="CPUs per run (ray, slurm) [default: 1]; torch uses as many threads.")
@click.option("--gpus-per-run", type=int, default=None, help="GPUs per run (ray, slurm) [default: 0].")
@click.option("--mem-gb", type=float, default=None, help="Memory per run in GB (ray, slurm).")
@click.pass_context
def bench(ctx: click.Context, models: str, datasets: str, protocols: str, profile: str | None, options: tuple[str, ...],
          seeds: int, folds: str, device: str, out: str, board: str | None, no_predictions: bool, keep_going: bool,
          executor: str, ray_address: str | None, slurm_profile: str | None, slurm_partition: str | None,
          slurm_time: str | None, cpus_per_run: int | None, gpus_per_run: int | None, mem_gb: float | None) -> None:
    """Run every model x dataset x protocol x seed (skipping runs already in OUT), then render the leaderboard."""
    from ..atomic import write_text
    from ..bench import grid_requests, run_grid
    from ..exec import get_executor
    from .progress import RichProgress

    runner = get_executor(executor, cpus=cpus_per_run, gpus=gpus_per_run, mem_gb=mem_gb, ray_address=ray_address,
                          slurm_profile=slurm_profile, slurm_partition=slurm_partition, slurm_time=slurm_time,
                          device=device)
    plugins = _app(ctx).plugins
    protocol_list = [p.strip() for p in protocols.split(",") if p.strip()]
    for p in protocol_list:
        if p not in ("strict", "paper"):
            raise StbenchError(f"unknown protocol '{p}' in --protocol; use strict, paper or strict,paper")
    requests = grid_requests(plugins, models, datasets, protocol_list, seeds, options, profile, folds, device,
                             save_predictions=not no_predictions)
    console = _console()
    where = f" ({runner.describe()})" if executor != "local" else ""
    console.print(f"grid: {len(requests)} run(s) into {out}{where}")
    with RichProgress(console) as progress:
        report = run_grid(plugins, requests, out, progress=progress, keep_going=keep_going, executor=runner)
    for o in report.outcomes:
        r = o.request
        log_note = f" (log: {o.log})" if o.log else ""
        console.print(f"{o.status:<8} {r.model} on {r.dataset} ({r.protocol}, seed {r.seed})"
                      + (f": {o.reason}{log_note}" if o.status == "failed" else f"  {o.path}"))
    target = Path(board) if board else Path(out) / "LEADERBOARD.md"
    write_text(target, render_board(ctx, out, target, None))
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
