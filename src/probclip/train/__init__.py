"""Training and fine-tuning: typed config, the loop (one CPU process to many GPUs with torchrun), optimizer and
schedule, atomic checkpoints with exact resume.

- ``load_config(path, overrides) -> TrainConfig``; ``TrainConfig`` sections ``model``, ``data``, ``loss``,
  ``masking``, ``optim``, ``run``.
- ``train(config, callbacks=(), eval_fn=None) -> TrainResult`` (model, steps, seconds, samples, log path, ...).
- Command line: ``probclip train --config FILE.yaml [--section.key value ...]``.
"""

from .config import (
    DataSection,
    LossSection,
    MaskingSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override_args,
)
from .loop import StepInfo, TrainingStopped, TrainResult, train

__all__ = [
    "DataSection",
    "LossSection",
    "MaskingSection",
    "ModelSection",
    "OptimSection",
    "RunSection",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingStopped",
    "apply_overrides",
    "load_config",
    "parse_override_args",
    "train",
]
