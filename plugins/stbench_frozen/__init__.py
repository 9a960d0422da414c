"""Frozen-encoder calibration rows: a pretrained image encoder with no training on expression, read out
by ridge regression (HEST-Benchmark's recipe) or by k-nearest-neighbour retrieval."""
from stbench import hookimpl

from .models import KNNModel, RidgeModel


@hookimpl
def register_models(register):
    register(RidgeModel)
    register(KNNModel)
