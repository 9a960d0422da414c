"""Calibration baselines: what the metrics give without looking at the image."""
from stbench import hookimpl

from .models import MeanModel, RandomKModel


@hookimpl
def register_models(register):
    register(MeanModel)
    register(RandomKModel)
