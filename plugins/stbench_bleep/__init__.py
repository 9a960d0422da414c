"""BLEEP: bi-modal contrastive learning; query images retrieve reference spot embeddings."""
from stbench import hookimpl

from .model import BLEEP


@hookimpl
def register_models(register):
    register(BLEEP)
