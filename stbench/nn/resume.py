"""The last-epoch training state, for ``stbench run --resume``: one safetensors file, never a pickle.

``<folder>/last.safetensors`` holds the tensors (the module's state, the best epoch's weights, the optimiser's
state tensors, the random generators' states) and, in its header's metadata, a JSON document with everything
else (epoch, history, best loss, the optimiser's non-tensor state and parameter groups, the learning-rate
schedule, Python's and numpy's generator positions). It is written atomically after every epoch, so the file
on disk is always a complete epoch.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_path

FORMAT = "stbench.train-state/1"
STATE_FILE = "last.safetensors"
log = logging.getLogger("stbench")


def _generators(batches: Any, extra: Sequence[torch.Generator]) -> dict[str, torch.Generator]:
    """The torch generators whose position a resumed run needs: the training steps' own (any attribute that
    is a generator, one level down too: a loader's) and ``extra`` (a model's augmentation, say)."""
    found: dict[str, torch.Generator] = {f"extra.{i}": g for i, g in enumerate(extra)}
    for name, value in sorted(vars(batches).items()):
        if isinstance(value, torch.Generator):
            found[f"batches.{name}"] = value
        elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, torch.Tensor)):
            for sub, inner in sorted(vars(value).items()):
                if isinstance(inner, torch.Generator):
                    found[f"batches.{name}.{sub}"] = inner
    return found


def _optimizer_parts(optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"state": plain, "param_groups": sd["param_groups"]}


def _optimizer_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(folder: Path, *, module: torch.nn.Module, optimizer: Any, scheduler: Any, batches: Any,
               generators: Sequence[torch.Generator], epoch: int, epochs: int, history: dict[str, Any],
               best_loss: float, best_state: dict[str, torch.Tensor] | None) -> Path:
    """Write the state after ``epoch`` completed epochs of ``epochs``."""
    from safetensors.torch import save_file

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True).contiguous()

    tensors = {f"module.{k}": cpu(v) for k, v in module.state_dict().items()}
    tensors.update({f"best.{k}": cpu(v) for k, v in (best_state or {}).items()})
    optim_tensors, optim_meta = _optimizer_parts(optimizer)
    tensors.update({k: cpu(v) for k, v in optim_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    for name, g in _generators(batches, generators).items():
        tensors[f"gen.{name}"] = g.get_state()
    meta = {"format": FORMAT, "epoch": epoch, "epochs": epochs, "history": history, "best_loss": best_loss,
            "optimizer": optim_meta, "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _plain(random.getstate())}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"stbench": json.dumps(meta)})
    return path


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def load_state(folder: Path, *, module: torch.nn.Module, optimizer: Any, scheduler: Any, batches: Any,
               generators: Sequence[torch.Generator], epochs: int) -> dict[str, Any] | None:
    """Restore the state written by :func:`save_state` into the given objects; returns ``epoch``, ``history``,
    ``best_loss`` and ``best_state``, or None when there is no usable state (a warning says why)."""
    from safetensors import safe_open

    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("stbench", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors and json raise their own errors for a damaged file
        log.warning("checkpoint %s is unreadable (%s); training from the start", path,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    if meta.get("format") != FORMAT or meta.get("epochs") != epochs:
        log.warning("checkpoint %s was written for another training (%s epochs, now %s); training from the start",
                    path, meta.get("epochs"), epochs)
        return None
    part = {p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")}
            for p in ("module", "best", "gen")}
    module.load_state_dict(part["module"])
    optimizer.load_state_dict(_optimizer_state(meta["optimizer"], {k: v for k, v in tensors.items()
                                                                   if k.startswith("optim.")}))
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuple(meta["python"]))
    for name, g in _generators(batches, generators).items():
        if name in part["gen"]:
            g.set_state(part["gen"][name])
    return {"epoch": int(meta["epoch"]), "history": meta["history"], "best_loss": float(meta["best_loss"]),
            "best_state": part["best"] or None}
