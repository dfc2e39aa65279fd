"""Registries are the single list of names: a registered data source or loss is accepted by a training config."""

from __future__ import annotations

import math

import pytest
from PIL import Image

import probclip
from probclip.data import DatasetPairs, list_sources, register_source
from probclip.errors import UsageError
from probclip.losses import SigLIPLoss, list_losses, register_loss
from probclip.train import TrainConfig, train

TINY = {"name": "ProLIP-Tiny-Word", "overrides": {"vision": {"layers": 1}, "text": {"layers": 1}}}


def _squares(data, seed: int) -> DatasetPairs:
    """A registered source: plain coloured squares with their colour as caption."""
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (200, 200, 30)}
    items = [{"image": Image.new("RGB", (32, 32), rgb), "captions": [f"a {name} shape"]}
             for name, rgb in colours.items()] * int(data.synthetic.get("repeat", 2))
    return DatasetPairs(items, "squares")


class _HalfSigLIP(SigLIPLoss):
    """A registered loss: SigLIP at half weight."""

    def compute(self, *args, **kwargs):
        return {k: v / 2 for k, v in super().compute(*args, **kwargs).items()}


def _config(tmp_path, source: str, loss: str = "prolip") -> dict:
    return {
        "model": dict(TINY),
        "data": {"source": source, "batch_size": 4, "synthetic": {"repeat": 3}},
        "loss": {"name": loss},
        "run": {"steps": 2, "output_dir": str(tmp_path / "run"), "save_every": 0, "tensorboard": False,
                "progress": "none", "cpu_threads": 1, "precision": "fp32"},
    }


def test_a_registered_source_trains_from_a_config_that_names_it(tmp_path):
    with pytest.raises(UsageError, match="data.source = 'squares-for-test'"):
        TrainConfig.from_dict(_config(tmp_path, "squares-for-test"))
    register_source("squares-for-test", _squares)
    assert "squares-for-test" in list_sources() and "synthetic" in list_sources()
    result = train(TrainConfig.from_dict(_config(tmp_path, "squares-for-test")))
    assert result.steps == 2 and result.samples == 8 and math.isfinite(result.final_loss)


def test_a_registered_loss_is_accepted_by_name(tmp_path):
    with pytest.raises(UsageError, match="loss.name = 'half-siglip'"):
        TrainConfig.from_dict(_config(tmp_path, "synthetic", "half-siglip"))
    register_loss("half-siglip", _HalfSigLIP)
    assert "half-siglip" in list_losses()
    config = _config(tmp_path, "synthetic", "half-siglip")
    config["data"]["synthetic"] = {"size": 16}
    result = train(TrainConfig.from_dict(config))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    with pytest.raises(UsageError, match="PairLoss subclass"):
        register_loss("not-a-loss", dict)


def test_one_unknown_key_check_for_model_and_training_configs(tmp_path):
    with pytest.raises(UsageError, match=r"unknown keys \['depth'\] in ProbCLIPConfig.vision"):
        probclip.create_model("ProLIP-Tiny-Word", vision={"depth": 2})
    with pytest.raises(UsageError, match=r"unknown keys \['lrr'\] in section 'optim'"):
        TrainConfig.from_dict({**_config(tmp_path, "synthetic"), "optim": {"lrr": 1.0}})
