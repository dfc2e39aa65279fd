"""Probabilistic CLIP models: configs, registry, towers, the ``ProbCLIP`` module, loading and conversion."""

from .config import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ProbCLIPConfig,
    TextConfig,
    VisionConfig,
)
from .context import extend_context_length, resize_text_positional_embedding
from .factory import (
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    load_pretrained_model,
)
from .heads import GaussianHead
from .hub import (
    HF_HUB_PREFIX,
    is_checkpoint_id,
    resolve_checkpoint_dir,
    resolve_model_config,
)
from .loading import (
    CheckpointMismatchError,
    load_state_dict_strict,
    read_checkpoint_dir,
    read_config_file,
)
from .model import ProbCLIP
from .openclip_init import init_from_open_clip
from .registry import (
    UnknownModelError,
    get_model_config,
    list_models,
    register_model_config,
)
from .released import (
    config_from_released,
    config_to_released,
    probclip_to_released_state_dict,
    released_to_probclip_state_dict,
    save_released,
)
from .text import TextTower
from .vision import VisionTower

__all__ = [
    "HF_HUB_PREFIX",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CheckpointMismatchError",
    "GaussianHead",
    "ProbCLIP",
    "ProbCLIPConfig",
    "TextConfig",
    "TextTower",
    "UnknownModelError",
    "VisionConfig",
    "VisionTower",
    "config_from_released",
    "config_to_released",
    "create_model",
    "extend_context_length",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "get_model_config",
    "init_from_open_clip",
    "is_checkpoint_id",
    "list_models",
    "load_pretrained_model",
    "load_state_dict_strict",
    "probclip_to_released_state_dict",
    "read_checkpoint_dir",
    "read_config_file",
    "register_model_config",
    "released_to_probclip_state_dict",
    "resize_text_positional_embedding",
    "resolve_checkpoint_dir",
    "resolve_model_config",
    "save_released",
]
