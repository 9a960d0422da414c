import numpy as np
import pytest

from stbench.testing import check_model, tiny_fold
from stbench_baselines.models import MeanModel, RandomKModel


@pytest.mark.parametrize("cls, options", [(MeanModel, []), (RandomKModel, ["k=5"])])
def test_check_model(cls, options):
    check_model(cls, options)


def test_mean_predicts_the_reference_mean():
    fold = tiny_fold()
    model = MeanModel()
    model.fit(fold.train, fold.genes)
    pred = model.predict(fold.queries[0])
    expected = np.concatenate([s.expression for s in fold.train]).mean(0)
    assert np.allclose(pred, expected[None, :])


def test_random_k_averages_k_reference_spots():
    fold = tiny_fold()
    ref = np.concatenate([s.expression for s in fold.train])
    model = RandomKModel(RandomKModel.Options(k=1), seed=7)
    model.fit(fold.train, fold.genes)
    pred = model.predict(fold.queries[0])
    # with k=1 each prediction is exactly one reference row
    assert all(np.any(np.all(np.isclose(ref, row), axis=1)) for row in pred)
    other = RandomKModel(RandomKModel.Options(k=1), seed=8)
    other.fit(fold.train, fold.genes)
    assert not np.allclose(other.predict(fold.queries[0]), pred)


def test_check_model_catches_a_broken_model():
    class Shuffled(RandomKModel):
        name = "shuffled"

        def predict(self, slide):
            return super().predict(slide)[::-1]

    with pytest.raises(AssertionError, match="row order"):
        check_model(Shuffled, ["k=3"])
