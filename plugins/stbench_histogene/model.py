"""HisToGene (maxpmx/HisToGene), as specified in specs/model_specs.md section 5.

One token per spot: the centred 112 px window of the cached 256 px patch (HisToGene's r=56 crop
around the spot centre), raw 0..255 RGB, flattened and embedded by Linear(112*112*3 -> 1024), plus
learned x and y position embeddings looked up at the spot's array position. A whole slide is one
sequence through 8 pre-norm transformer layers (16 heads x 64, MLP 2048, dropout 0.1), then
LayerNorm + Linear(1024 -> G). MSE, Adam lr 1e-5, one slide per step, 100 epochs, last epoch.

Attention uses ``scaled_dot_product_attention``: on CPU and CUDA that runs a fused (flash or
memory-efficient) kernel, so no N x N x heads attention matrix is materialised and slides of
thousands of spots fit in a few GB.

The limit: memory still grows linearly and time quadratically with the spots of a sequence. Training at
the paper's size keeps about 0.6 MB of activations per spot (8 layers x ~57 KB: 4 x dim + 5 x heads x
dim_head + 2 x mlp_dim floats, plus the 150 KB float patch kept for the embedding's gradient; measured:
0.60 MB in float32, 0.36 MB with CUDA's bf16 autocast, benchmarks/bench_histogene_memory.py), so a slide
above ``max_spots`` (20,000: ~12 GB of activations) is a one-line error unless ``-o window=N`` splits it
into spatially contiguous windows of at most N spots, each one sequence, in training and prediction
(:func:`spatial_windows`); slides of at most N spots stay one sequence, as without the option.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from stbench import Model, ModelCard, SlidePatches
from stbench.errors import DataError
from stbench.options import option
from stbench.slide import ImagesView

#: CPU preset: the same 112 px field of view downsampled to 32 px, a 4-layer 256-wide transformer
#: (4 heads x 64, MLP 512), raw pixels as upstream, Adam 1e-3 for 150 epochs (a fold of 4 reference
#: slides gives only 4 steps per epoch: at 1e-5 or 1e-4 the model still predicts a near-constant
#: profile after 600 steps). lr chosen on reference slides only (fit C2, C3, C5; score C6).
QUICK = {"input_px": 32, "dim": 256, "depth": 4, "heads": 4, "dim_head": 64, "mlp_dim": 512,
         "lr": 1e-3, "epochs": 150}
#: The most spots taken as one sequence without ``-o window`` (see the module doc and the README).
MAX_SPOTS = 20_000


@dataclass(frozen=True)
class HisToGeneOptions:
    patch_crop: int = option(112, ge=1)
    input_px: Optional[int] = option(None, ge=1)
    input_norm: Literal["raw", "unit", "dataset"] = "raw"
    dim: int = option(1024, ge=1)
    depth: int = option(8, ge=1)
    heads: int = option(16, ge=1)
    dim_head: int = option(64, ge=1)
    mlp_dim: int = option(2048, ge=1)
    dropout: float = option(0.1, ge=0, lt=1)
    n_pos: int = option(64, ge=1)
    positions: Literal["raw", "shift"] = "raw"
    lr: float = option(1e-5, ge=0)
    weight_decay: float = option(0.0, ge=0)
    epochs: int = option(100, ge=1)
    embed_chunk: int = option(256, ge=1)
    window: Optional[int] = option(None, ge=1)
    max_spots: int = option(MAX_SPOTS, ge=1)
    precision: Literal["auto", "bf16-mixed", "32"] = "auto"
    accumulate: int = option(1, ge=1)
    lr_schedule: Literal["none", "cosine"] = "none"
    warmup_steps: int = option(0, ge=0)


def build_network(opts: HisToGeneOptions, in_features: int, n_genes: int) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """Pre-norm transformer layer: x += Attn(LN(x)); x += FF(LN(x))."""

        def __init__(self) -> None:
            super().__init__()
            inner = opts.heads * opts.dim_head
            self.attn_norm = nn.LayerNorm(opts.dim)
            self.qkv = nn.Linear(opts.dim, 3 * inner, bias=False)
            self.attn_out = nn.Sequential(nn.Linear(inner, opts.dim), nn.Dropout(opts.dropout))
            self.ff_norm = nn.LayerNorm(opts.dim)
            self.ff = nn.Sequential(nn.Linear(opts.dim, opts.mlp_dim), nn.GELU(), nn.Dropout(opts.dropout),
                                    nn.Linear(opts.mlp_dim, opts.dim), nn.Dropout(opts.dropout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, opts.heads, opts.dim_head).permute(2, 0, 3, 1, 4)
            # fused kernel, scale 1/sqrt(dim_head) (1/8 for 64); memory linear in n
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self.attn_out(a.transpose(1, 2).reshape(b, n, opts.heads * opts.dim_head))
            return x + self.ff(self.ff_norm(x))

    class HisToGeneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Linear(in_features, opts.dim)
            self.x_embed = nn.Embedding(opts.n_pos, opts.dim)
            self.y_embed = nn.Embedding(opts.n_pos, opts.dim)
            self.dropout = nn.Dropout(opts.dropout)
            self.blocks = nn.ModuleList([Block() for _ in range(opts.depth)])
            self.head = nn.Sequential(nn.LayerNorm(opts.dim), nn.Linear(opts.dim, n_genes))
            self.register_buffer("pixel_mean", torch.zeros(3))
            self.register_buffer("pixel_std", torch.full((3,), 255.0 if opts.input_norm == "unit" else 1.0))

        def embed(self, tokens: torch.Tensor) -> torch.Tensor:
            """(N, P) uint8 flattened patches -> (N, dim), converted to float in blocks. Pixels are
            (value - pixel_mean[c]) / pixel_std[c]: 0 and 1 for ``raw``, 0 and 255 for ``unit``."""
            reps = tokens.shape[1] // 3
            mean, std = self.pixel_mean.repeat(reps), self.pixel_std.repeat(reps)  # (y, x, c) order
            plain = opts.input_norm == "raw"
            return torch.cat([self.patch_embed(chunk.float() if plain else (chunk.float() - mean) / std)
                              for chunk in tokens.split(opts.embed_chunk)])

        def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            """One slide: (N, P) uint8 tokens and (N, 2) long (x, y) positions -> (N, G)."""
            x = self.embed(tokens) + self.x_embed(pos[:, 0]) + self.y_embed(pos[:, 1])
            x = self.dropout(x).unsqueeze(0)
            for block in self.blocks:
                x = block(x)
            return self.head(x)[0]

    return HisToGeneNet()


def slide_tokens(slide: SlidePatches, crop: int, size: int | None, block: int = 256) -> Any:
    """(N, S*S*3) uint8: each spot's centred ``crop`` window (the whole patch if smaller), resized to
    ``size`` if given (bilinear, antialiased, rounded back to uint8), flattened row-major (y, x, c)."""
    import torch

    from stbench.nn.inputs import centre_crop, resize

    n = len(slide)
    parts = []
    for start in range(0, n, block):
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(slide.images[start:start + block], dtype=np.uint8)))
        t = centre_crop(t.permute(0, 3, 1, 2), crop)
        if size is not None and tuple(t.shape[-2:]) != (size, size):
            t = resize(t.float(), size).round().clamp(0, 255).to(torch.uint8)
        parts.append(t.permute(0, 2, 3, 1).reshape(t.shape[0], -1))
    if not parts:
        side = size or crop
        return torch.zeros((0, side * side * 3), dtype=torch.uint8)
    return torch.cat(parts)


def spatial_windows(coords: np.ndarray, size: int) -> list[np.ndarray]:
    """Spot indices (each sorted) of spatially contiguous windows of at most ``size`` spots that together
    hold every spot once: the cells of a k-d tree. A part of more than ``size`` spots is cut across its longer
    side (x or y extent) between the two distinct coordinate values nearest its median spot, recursively, so
    every window is the set of spots inside an axis-aligned rectangle, and no window's rectangle overlaps
    another's; on a regular grid the parts of a cut differ by at most one row or column of spots."""
    xy = np.asarray(coords, dtype=np.float64)
    parts, todo = [], [np.arange(len(xy))]
    while todo:
        idx = todo.pop()
        if len(idx) <= size:
            parts.append(np.sort(idx))
            continue
        pts = xy[idx]
        axis = int(np.ptp(pts[:, 1]) > np.ptp(pts[:, 0]))
        order = np.lexsort((pts[:, 1 - axis], pts[:, axis]))
        cut = _cut_near_median(pts[order, axis], pts[order, 1 - axis])
        todo += [idx[order[cut:]], idx[order[:cut]]]
    return parts


def _cut_near_median(values: np.ndarray, other: np.ndarray) -> int:
    """Where to cut sorted ``values``: the change of value nearest the middle; without one (all spots on one
    line across the axis), the change of ``other`` nearest the middle; without that (one point), the middle."""
    half = len(values) // 2
    for v in (values, other):
        changes = np.flatnonzero(np.diff(v) != 0) + 1
        if len(changes):
            return int(changes[np.argmin(np.abs(changes - half))])
    return half


class HisToGene(Model):
    """HisToGene: a transformer over the spots of a whole slide."""

    name = "histogene"
    card = ModelCard(
        summary="HisToGene: each spot's 112 px patch is a token (linear patch embedding + learned x/y "
                "array-position embeddings); a whole slide is one sequence through an 8-layer transformer "
                "that regresses every spot's expression.",
        paper="Pang, Su and Li, Leveraging information in spatial transcriptomics to predict super-resolution "
              "gene expression from histology images in tumors, bioRxiv 2021.11.28.470212",
        code="https://github.com/maxpmx/HisToGene (commit 44ff75b)",
        license="MIT upstream; reimplemented from the description, no code copied",
        deviations=(
            "targets: the run's shared expression space and gene set, not the fixed 785-gene list with "
            "per-section log10(1 + 1e4 * c / library) normalisation",
            "patches are the centred 112 px window of the cached 256 px patch, flattened row-major (y, x, c); "
            "upstream flattened the transposed window (x, y, c), which only matters for loading its checkpoints",
            "attention runs through scaled_dot_product_attention (same maths, fused kernel, no dropout on the "
            "attention weights); the patch embedding is computed in blocks",
            "spot grid positions outside 0..n_pos-1 are an error (upstream would index out of range); "
            "-o positions=shift subtracts each slide's minimum",
            "super-resolution inference is not implemented",
            "a slide of more than max_spots=20000 spots is an error (training at the paper's size keeps ~0.6 MB "
            "of activations per spot); -o window=N splits larger slides into spatially contiguous windows of at "
            "most N spots, each one sequence (an addition: upstream always takes the whole slide)",
            "precision: on CUDA, training and inference run under bf16 autocast by default (-o precision=auto; "
            "upstream's PyTorch Lightning trainer ran float32); -o precision=32 runs float32 as upstream; CPU runs "
            "are always float32; results files record it (environment.precision)",
        ),
    )
    profiles = {"quick": QUICK}
    Options = HisToGeneOptions

    # -- inputs ---------------------------------------------------------------------------------
    def tokens(self, slide: SlidePatches) -> Any:
        t = slide_tokens(slide, self.opts.patch_crop, self.opts.input_px)
        if len(slide) and getattr(self, "in_features", None) is not None and t.shape[1] != self.in_features:
            raise DataError(f"slide '{slide.slide_id}': {slide.patch_shape[0]} px patches give {t.shape[1]} "
                            f"input features, but the model was trained with {self.in_features}; "
                            f"set -o input_px to fix the token size")
        return t

    def positions(self, slide: SlidePatches) -> Any:
        """(N, 2) long tensor of (x, y) array positions, checked against the n_pos tables."""
        import torch

        grid = np.asarray(slide.grid, dtype=np.int64)
        if self.opts.positions == "shift" and len(grid):
            grid = grid - grid.min(0)
        if len(grid) and (grid.min() < 0 or grid.max() >= self.opts.n_pos):
            lo, hi = grid.min(0), grid.max(0)
            raise DataError(
                f"slide '{slide.slide_id}': spot grid positions span x {lo[0]}..{hi[0]}, y {lo[1]}..{hi[1]}, "
                f"outside HisToGene's position tables 0..{self.opts.n_pos - 1}; pass -o n_pos={int(hi.max()) + 1}"
                + ("" if self.opts.positions == "shift" else " or -o positions=shift")
            )
        return torch.from_numpy(np.array(grid, dtype=np.int64))

    def sequences(self, slide: SlidePatches) -> list[tuple[np.ndarray | None, SlidePatches]]:
        """The sequences a slide is given as: ``[(None, slide)]``, or with ``-o window=N`` for a slide of more
        than N spots, ``(spot indices, the window as a slide)`` per window (images read lazily)."""
        n, window = len(slide), self.opts.window
        if window is None:
            if n > self.opts.max_spots:
                limit = self.opts.max_spots
                raise DataError(
                    f"slide '{slide.slide_id}' has {n} spots, more than histogene takes as one sequence "
                    f"(max_spots={limit}: attention over all spots, ~0.6 MB of activations per spot to train at the "
                    f"paper's size); pass -o window={limit} to split it into spatially contiguous windows of at most "
                    f"{limit} spots, or raise -o max_spots on a device with the memory")
            return [(None, slide)]
        if n <= window:
            return [(None, slide)]
        return [(idx, dataclasses.replace(
            slide, barcodes=slide.barcodes[idx], coords=slide.coords[idx], grid=slide.grid[idx],
            images=ImagesView(slide.images, idx),
            expression=None if slide.expression is None else slide.expression[idx]))
            for idx in spatial_windows(slide.coords, window)]

    # -- training -------------------------------------------------------------------------------
    def fit(self, train: Sequence[SlidePatches], genes: Sequence[str]) -> None:
        """One whole slide per step (tokens, positions -> every spot's expression), slides in a seeded
        order each epoch, MSE, Adam, no validation, the last epoch kept: the shared trainer's loop."""
        import torch
        import torch.nn.functional as F

        from stbench.nn.trainer import SeededOrder, fit, fit_options, seed_everything

        self.genes, self.opts = list(genes), self.options
        steps = self._slide_steps(train)
        seed_everything(self.seed)
        net = build_network(self.opts, self.in_features, len(genes))
        if self.opts.input_norm == "dataset":
            self._set_pixel_stats(net, [tokens for (tokens, _), _ in steps])
        net = net.to(self.device)

        def loss_of(inputs: Any, target: Any) -> Any:
            return F.mse_loss(net(*inputs).float(), target)

        optimizer = torch.optim.Adam(net.parameters(), lr=self.opts.lr, weight_decay=self.opts.weight_decay)
        self.history = fit(net, loss_of, optimizer, SeededOrder(steps, self.seed), None, epochs=self.opts.epochs,
                           device=self.device, seed=self.seed, workdir=self.workdir, progress=self._progress,
                           select_best=False, min_batch=1, **fit_options(self.opts))
        self.net = net

    def _slide_steps(self, train: Sequence[SlidePatches]) -> list[tuple[tuple[Any, Any], Any]]:
        """One training step per reference slide with spots (per window of it, see :meth:`sequences`):
        ((tokens, positions), expression). Sets ``in_features``; every slide must give tokens of that size."""
        import torch

        self.in_features = None
        steps = []
        for s in (part for slide in train if len(slide) for _, part in self.sequences(slide)):
            tokens = self.tokens(s)
            if self.in_features is None:
                self.in_features = int(tokens.shape[1])
            elif tokens.shape[1] != self.in_features:
                raise DataError(f"slide '{s.slide_id}': its patches differ in size from the other reference "
                                f"slides'; set -o input_px to give every slide the same token size")
            steps.append(((tokens, self.positions(s)), torch.tensor(np.asarray(s.expression, dtype=np.float32))))
        if not steps:
            raise DataError("histogene: no reference spots to train on")
        return steps

    def _set_pixel_stats(self, net: Any, tokens: Sequence[Any]) -> None:
        """``input_norm=dataset``: per-channel mean and (sample) std of the training tokens, 0..255 units."""
        from stbench.nn.inputs import channel_stats

        chunks = (chunk.reshape(-1, 3) for t in tokens for chunk in t.split(self.opts.embed_chunk))
        mean, var = channel_stats(chunks, dim=1, ddof=1)
        net.pixel_mean.copy_(mean)
        net.pixel_std.copy_(var.clamp_min(1.0).sqrt())

    # -- inference ------------------------------------------------------------------------------
    def predict(self, slide: SlidePatches) -> np.ndarray:
        """The whole slide in one forward pass (one sequence; one per window with ``-o window``); rows follow
        the slide's spot order."""
        import torch

        from stbench.nn.trainer import autocast

        if not len(slide):
            return np.zeros((0, len(self.genes)), np.float32)
        self.net.eval()
        out = np.zeros((len(slide), len(self.genes)), np.float32)
        for idx, part in self.sequences(slide):
            tokens, pos = self.tokens(part).to(self.device), self.positions(part).to(self.device)
            with torch.no_grad(), autocast(self.device, self.opts.precision):
                pred = self.net(tokens, pos).float().cpu().numpy()
            if idx is None:
                return pred
            out[idx] = pred
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from stbench.nn.trainer import save_checkpoint
        from stbench.options import options_dict

        config = {"model": self.name, "options": options_dict(self.opts), "genes": self.genes,
                  "in_features": self.in_features, "protocol": self.protocol, "seed": self.seed}
        save_checkpoint(self.net, Path(path), config)

    def load(self, path: str | Path) -> None:
        from stbench.nn.trainer import load_checkpoint

        state, _, config = load_checkpoint(Path(path))
        self.genes, self.in_features = list(config["genes"]), int(config["in_features"])
        self.opts = type(self).Options(**config["options"])
        self.net = build_network(self.opts, self.in_features, len(self.genes))
        self.net.load_state_dict(state)
        self.net = self.net.to(self.device)

