"""Grid runs: every model x dataset x protocol x seed, resumable.

A run whose results file already exists for the same configuration hash is skipped, so an
interrupted grid picks up where it stopped; a results file that does not load (truncated, edited,
old schema) is run again and replaced. Options apply to every model that has them. The runs not yet
complete go to an executor (:mod:`stbench.exec`): one after another in this process by default, or Ray
tasks, or SLURM jobs, all writing into the same results folder.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import OptionError, ResultsError, StbenchError
from .exec import Executor, GridContext, LocalExecutor, Task
from .options import parse_pairs
from .plugins import Plugins
from .report.results import load_result, result_path
from .runner import RunRequest, plan, run, stale_reason

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    request: RunRequest
    status: str
    path: Path | None = None
    reason: str = ""
    log: Path | None = None


@dataclass
class GridReport:
    outcomes: list[GridOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def _split(names: str | Sequence[str]) -> list[str]:
    items = names.split(",") if isinstance(names, str) else list(names)
    return [n.strip() for n in items if n.strip()]


def grid_requests(plugins: Plugins, models: str | Sequence[str], datasets: str | Sequence[str],
                  protocols: Sequence[str] = ("strict",), seeds: int = 1, options: Sequence[str] = (),
                  profile: str | None = None, folds: str = "default", device: str = "auto",
                  save_predictions: bool = True) -> list[RunRequest]:
    """One request per combination. ``profile`` is applied to the models that define it (the
    others run their defaults); each ``-o key=value`` goes to the models that have that option, and
    an option no model in the grid has is an error (a typo would otherwise be silently ignored)."""
    model_names, dataset_names = _split(models), _split(datasets)
    if not model_names or not dataset_names:
        raise StbenchError("a grid needs at least one model and one dataset, e.g. --models MODEL1,MODEL2 --datasets synthetic")
    if seeds < 1:
        raise StbenchError(f"--seeds must be at least 1, got {seeds}")
    pairs = parse_pairs(options)
    classes = {m: plugins.models.get(m) for m in model_names}
    for d in dataset_names:
        plugins.datasets.get(d)
    fields = {m: {f.name for f in dataclasses.fields(c.Options)} for m, c in classes.items()}
    for key in pairs:
        if not any(key in f for f in fields.values()):
            raise OptionError(f"no model in the grid has option '{key}' ({', '.join(model_names)})")
    requests = []
    for d in dataset_names:
        for protocol in protocols:
            for m, cls in classes.items():
                opts = [f"profile={profile}"] if profile and profile in (getattr(cls, "profiles", {}) or {}) else []
                opts += [f"{k}={v}" for k, v in pairs.items() if k in fields[m]]
                for seed in range(seeds):
                    requests.append(RunRequest(model=m, dataset=d, folds=folds, protocol=protocol, seed=seed,
                                               options=tuple(opts), device=device, save_predictions=save_predictions))
    return requests


def completed(plugins: Plugins, req: RunRequest, out_dir: str | Path) -> tuple[Path | None, str]:
    """(results file, "") if this configuration already ran, else (None, why it must run)."""
    path, why, _ = _status(plugins, req, out_dir)
    return path, why


def _status(plugins: Plugins, req: RunRequest, out_dir: str | Path) -> tuple[Path | None, str, str]:
    """``completed()`` and the configuration hash."""
    p = plan(plugins, req)
    path = result_path(out_dir, req.model, req.dataset, req.protocol, p["hash"])
    if not path.exists():
        path = equivalent_result(p, out_dir, req)
        if path is None:
            return None, "not run yet", p["hash"]
    try:
        result = load_result(path)
    except ResultsError as e:
        return None, f"rerun: {e}", p["hash"]
    if result.config_hash != p["hash"] and not same_configuration(result.config, p):
        return None, f"rerun: {path} records configuration {result.config_hash}, expected {p['hash']}", p["hash"]
    stale = stale_reason(result, p["versions"])
    if stale:
        return None, f"rerun: {path} was {stale}", p["hash"]
    return path, "", p["hash"]


def same_configuration(recorded: dict, p: dict) -> bool:
    """Whether a recorded configuration is the planned one, allowing for options the model gained since
    the file was written: an option the record lacks counts as set to its default (a new option keeps
    what the model did before; a change of behaviour bumps ``Model.version`` instead)."""
    import dataclasses

    from .options import options_dict

    config = p["config"]
    if {k: v for k, v in recorded.items() if k != "options"} != {k: v for k, v in config.items() if k != "options"}:
        return False
    defaults = options_dict(type(p["options"])())
    old = recorded.get("options", {})
    names = {f.name for f in dataclasses.fields(p["options"])}
    if set(old) - names:
        return False
    return all(old[k] == v if k in old else v == defaults.get(k) for k, v in config["options"].items())


def equivalent_result(p: dict, out_dir: str | Path, req: RunRequest) -> Path | None:
    """A results file of this model, dataset and protocol whose configuration is the planned one by
    :func:`same_configuration` (written before the model gained options), or None."""
    import json

    folder = Path(out_dir) / req.model
    for path in sorted(folder.glob(f"{req.dataset}.{req.protocol}.*.json")):
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict) and same_configuration(recorded, p):
            return path
    return None


def log_path(out_dir: str | Path, req: RunRequest, chash: str) -> Path:
    """Where a remote run's log goes: ``<out>/logs/<model>/<dataset>.<protocol>.<hash>.log``, beside
    the results file's name."""
    return Path(out_dir).resolve() / "logs" / req.model / f"{req.dataset}.{req.protocol}.{chash}.log"


def run_grid(plugins: Plugins, requests: Sequence[RunRequest], out_dir: str | Path,
             progress: Callable[..., None] | None = None, keep_going: bool = False,
             executor: Executor | None = None) -> GridReport:
    """Skip the completed requests, hand the others to ``executor`` (default: one after another in this
    process) and report every request in order. ``progress("grid", i, n, ...)`` reports the whole grid;
    with the local executor each run's own progress goes through the same callback. A failed run stops
    the grid with a StbenchError unless ``keep_going`` (then it is reported as ``failed``)."""
    outcomes: dict[int, GridOutcome] = {}
    tasks = []
    for i, req in enumerate(requests):
        what = f"{req.model} on {req.dataset} ({req.protocol}, seed {req.seed})"
        path, why, chash = _status(plugins, req, out_dir)
        if path is not None:
            outcomes[i] = GridOutcome(req, "skipped", path, "already done")
            continue
        if why.startswith("rerun"):
            log.warning("%s: %s", what, why)
        tasks.append(Task(i, req, what, why, log_path(out_dir, req, chash)))
    ctx = GridContext(plugins, Path(out_dir), len(requests), keep_going, progress,
                      run=lambda *a, **k: run(*a, **k), done=len(outcomes))
    stopped = (executor or LocalExecutor()).execute(tasks, ctx) if tasks else ""
    for task, o in ctx.results:
        outcomes[task.index] = GridOutcome(task.request, o.status, Path(o.path) if o.path else None,
                                           o.error if o.status != "ran" else task.why, Path(o.log) if o.log else None)
    failed = next((t for t, o in ctx.results if o.status == "failed"), None)
    if failed is not None and not keep_going:
        o = outcomes[failed.index]
        where = f"log: {o.log}; " if o.log else ""
        raise StbenchError(f"{failed.label} failed: {o.reason} ({where}{stopped + '; ' if stopped else ''}"
                           "completed runs are kept; rerun the same command to resume)")
    ctx.report("grid", len(requests), len(requests))
    return GridReport([outcomes[i] for i in sorted(outcomes)])
