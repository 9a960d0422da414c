from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from stbench import ModelCard
from stbench_contrastive.model import PRECISION_NOTE, QUICK_PROFILE, ContrastiveModel, ContrastiveOptions


class HECLIP(ContrastiveModel):
    """HECLIP (QSong-github/HECLIP), as specified in specs/model_specs.md section 1."""

    name = "heclip"
    card = ModelCard(
        summary="Image-centric contrastive learning (HECLIP); query images retrieve the top-50 reference "
                "images and average their expression.",
        paper="HECLIP: histology-enhanced contrastive learning for imputation of transcriptomics profiles",
        code="https://github.com/QSong-github/HECLIP (commit 9be1333)",
        license="upstream has no licence file: reimplemented from the description, no code copied",
        claims=("bleep", "clip"),
        deviations=(
            "validation is a seeded 80/20 split of the reference spots made before augmentation "
            "(upstream split the x2-duplicated set, so validation contained training spots)",
            "the unused SpotEncoder(G, G) of the upstream code is not built",
            "strict protocol: RGB input with ImageNet normalisation and no test-time augmentation; "
            "paper protocol reproduces BGR, raw 0..255 input and random flips/rotations at inference",
            "gene sets, Harmony and spot counts come from the data (no hard-coded sizes); zero-count "
            "spots are dropped from barcodes and matrix together",
            PRECISION_NOTE,
        ),
    )
    profiles = {"quick": QUICK_PROFILE}

    @dataclass(frozen=True)
    class Options(ContrastiveOptions):
        variant: Literal["auto", "hvg", "heg"] = "auto"
        loss: Literal["heclip", "bleep", "clip"] = "heclip"
        retrieval_key: Literal["image", "spot"] = "image"
        views: int = 2

    def resolved_options(self, n_genes: int) -> ContrastiveOptions:
        o = self.options
        variant = o.variant
        if variant == "auto":
            variant = "heg" if self.dataset_info.get("gene_set") == "heg" else "hvg"
        changes = {"spot_projection": variant == "heg", "variant": variant}
        if not o.augment:
            changes["views"] = 1
        return dataclasses.replace(o, **changes)
