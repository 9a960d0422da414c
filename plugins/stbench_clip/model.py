from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stbench import ModelCard
from stbench_contrastive.model import PRECISION_NOTE, QUICK_PROFILE, BiModalOptions, ContrastiveModel


class CLIP(ContrastiveModel):
    """Symmetric InfoNCE with one-hot targets and a learnable logit scale, on BLEEP's architecture."""

    name = "clip"
    card = ModelCard(
        summary="Plain CLIP baseline: BLEEP's encoder and heads trained with symmetric InfoNCE (one-hot "
                "targets, learnable logit scale); retrieval as BLEEP.",
        paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021 "
              "(loss); architecture as BLEEP",
        code="none published: neither the BLEEP nor the HECLIP repository contains a one-hot InfoNCE variant",
        license="stbench's own specification",
        deviations=(
            "the papers did not publish their CLIP baseline; this is stbench's specification: BLEEP's "
            "architecture and training, loss = (CE(s Shat Ihat^T, I) + CE(transpose, I)) / 2, s = exp(t), "
            "t initialised to log(1/0.07), s capped at 100",
            PRECISION_NOTE,
        ),
    )
    profiles = {"quick": QUICK_PROFILE}

    @dataclass(frozen=True)
    class Options(BiModalOptions):  # BLEEP's architecture and training; only the loss differs
        loss: Literal["heclip", "bleep", "clip"] = "clip"
