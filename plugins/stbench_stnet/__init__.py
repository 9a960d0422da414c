"""ST-Net: a DenseNet-121 regresses every spot's expression from its 224 px patch."""
from stbench import hookimpl

from .model import STNet


@hookimpl
def register_models(register):
    register(STNet)
