"""``ensemble``: several registered models trained on the same fold, their predictions combined."""
from stbench import hookimpl

from .model import EnsembleModel


@hookimpl
def register_models(register):
    register(EnsembleModel)
