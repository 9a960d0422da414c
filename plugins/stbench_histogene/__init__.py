"""HisToGene: a vision transformer over all spots of a slide (one token per spot)."""
from stbench import hookimpl

from .model import HisToGene


@hookimpl
def register_models(register):
    register(HisToGene)
