"""CLIP: the plain contrastive baseline (symmetric InfoNCE) on BLEEP's architecture."""
from stbench import hookimpl

from .model import CLIP


@hookimpl
def register_models(register):
    register(CLIP)
