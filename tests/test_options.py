from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from stbench import Model, ModelCard
from stbench.errors import OptionError
from stbench.options import build_options, changed_options, parse_pairs


class Toy(Model):
    name = "toy"
    card = ModelCard(summary="toy")
    profiles = {"quick": {"epochs": 2, "backbone": "small"}}

    @dataclass(frozen=True)
    class Options:
        epochs: int = 15
        lr: float = 1e-3
        augment: bool = True
        backbone: str = "resnet50"
        loss: Literal["heclip", "clip"] = "heclip"
        weights: Optional[str] = None

    def fit(self, train, genes):
        pass

    def predict(self, slide):
        pass


def test_defaults_are_the_paper_profile():
    opts, profile = build_options(Toy, [])
    assert profile == "paper" and opts == Toy.Options()


def test_coercion_of_every_type():
    opts, _ = build_options(Toy, ["epochs=3", "lr=0.5", "augment=false", "loss=clip", "weights=/w.pt"])
    assert (opts.epochs, opts.lr, opts.augment, opts.loss, opts.weights) == (3, 0.5, False, "clip", "/w.pt")
    assert build_options(Toy, ["weights=none"])[0].weights is None
    assert changed_options(opts) == {"epochs": 3, "lr": 0.5, "augment": False, "loss": "clip", "weights": "/w.pt"}


def test_profile_then_overrides():
    opts, profile = build_options(Toy, ["profile=quick", "epochs=5"])
    assert profile == "quick" and opts.epochs == 5 and opts.backbone == "small"


@pytest.mark.parametrize("pairs, message", [
    (["epochs=three"], "option 'epochs' of model 'toy' expects an integer, got 'three'"),
    (["lr=fast"], "option 'lr' of model 'toy' expects a number, got 'fast'"),
    (["augment=maybe"], "option 'augment' of model 'toy' expects true or false, got 'maybe'"),
    (["loss=clp"], "option 'loss' of model 'toy' must be one of heclip, clip, got 'clp'; did you mean 'clip'?"),
    (["epoch=3"], "model 'toy' has no option 'epoch'; did you mean 'epochs'?"),
    (["profile=quik"], "model 'toy' has no profile 'quik'; did you mean 'quick'?"),
    (["epochs"], "malformed option 'epochs': expected key=value"),
])
def test_typed_errors(pairs, message):
    with pytest.raises(OptionError) as e:
        build_options(Toy, pairs)
    assert str(e.value).startswith(message)


def test_parse_pairs_keeps_equals_in_value():
    assert parse_pairs(["path=a=b"]) == {"path": "a=b"}
