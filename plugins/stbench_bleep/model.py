from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stbench import ModelCard
from stbench_contrastive.model import PRECISION_NOTE, QUICK_PROFILE, BiModalOptions, ContrastiveModel


class BLEEP(ContrastiveModel):
    """BLEEP (bowang-lab/BLEEP), as specified in specs/model_specs.md section 2."""

    name = "bleep"
    card = ModelCard(
        summary="Bi-modal contrastive learning (BLEEP); query images retrieve the top-50 reference spot "
                "embeddings and average their expression.",
        paper="Xie et al., Spatially Resolved Gene Expression Prediction from H&E Histology Images via "
              "Bi-modal Contrastive Learning, NeurIPS 2023",
        code="https://github.com/bowang-lab/BLEEP (commit 2395967)",
        license="Apache-2.0 (upstream); reimplemented, no code copied",
        deviations=(
            "validation is a seeded 80/20 split of the reference spots (upstream: random_split of the slices)",
            "strict protocol: RGB + ImageNet normalisation, no test-time augmentation",
            "one process by default; with --devices N the embeddings are gathered so the loss sees the global "
            "batch, as upstream's DDP training did, but its second, redundant gradient all-reduce is not reproduced",
            PRECISION_NOTE,
        ),
    )
    profiles = {"quick": QUICK_PROFILE}

    @dataclass(frozen=True)
    class Options(BiModalOptions):  # BiModalOptions are BLEEP's published settings; the loss is its own
        loss: Literal["heclip", "bleep", "clip"] = "bleep"
