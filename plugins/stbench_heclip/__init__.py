"""HECLIP: image-centric contrastive learning; top-K image retrieval averages reference expression."""
from stbench import hookimpl

from .model import HECLIP


@hookimpl
def register_models(register):
    register(HECLIP)
