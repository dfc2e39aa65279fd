"""Typed training configuration: one dataclass per YAML section, loading, overrides and validation.

A YAML file has the sections ``model``, ``data``, ``loss``, ``masking``, ``optim``, ``run`` and ``eval`` (every
key is optional; defaults below). Command-line overrides use ``--section.key value`` (values parsed as YAML, so
``--optim.lr 1e-4``, ``--data.paths '[a.tar, b.tar]'`` and ``--loss.kwargs '{vib_beta: 0}'`` all work).
``TrainConfig.to_dict()`` is what is written as ``train_config.yaml`` beside the checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import synthetic  # noqa: F401  (importing it registers the built-in data.source "synthetic")
from ..config_fields import check_known_keys
from ..data.masking import IMAGE_MASK_MODES, TEXT_MASK_MODES
from ..data.sources import list_sources
from ..errors import UsageError
from ..limits import DEFAULT_LIMITS
from ..losses import list_losses
from ..models.registry import list_models

__all__ = [
    "ModelSection",
    "DataSection",
    "LossSection",
    "MaskingSection",
    "OptimSection",
    "RunSection",
    "EvalSection",
    "TrainConfig",
    "ConfigFileNotFoundError",
    "check_field_types",
    "read_yaml_file",
    "load_config",
    "apply_overrides",
    "parse_override_args",
]

INIT_KINDS = ("scratch", "pretrained", "open_clip")
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigFileNotFoundError(UsageError, FileNotFoundError):
    """The training config file does not exist (a usage error: exit status 2)."""


def _fail(section: str, key: str, value: Any, accepted: str) -> None:
    raise UsageError(f"{section}.{key} = {value!r} is not valid; expected {accepted}")


def _check_choice(section: str, key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        _fail(section, key, value, f"one of {list(choices)}")


def _check_positive(section: str, key: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok or not math.isfinite(value):
        _fail(section, key, value, "a finite number >= 0" if allow_zero else "a finite number > 0")


#: What a field's annotation accepts (a value of the wrong type is refused, never coerced).
_TYPE_CHECKS = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, (list, tuple, str)), "a list"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
}


def check_field_types(section: str, obj: Any) -> None:
    """Raise ``UsageError`` for a field of the dataclass ``obj`` whose value does not have the annotated type
    (``bool`` fields take only true/false, ``float`` fields only finite numbers, ``X | None`` also null)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kinds = [part.strip() for part in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        checks = [_TYPE_CHECKS[k] for k in kinds if k in _TYPE_CHECKS]
        if checks and not any(check(value) for check, _ in checks):
            accepted = " or ".join([what for _, what in checks] + (["null"] if "None" in kinds else []))
            _fail(section, f.name, value, accepted)


def _check_int(section: str, key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(section, key, value, f"an integer >= {minimum}")


def _check_fraction(section: str, key: str, value: Any, low_open: bool, high_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(section, key, value, "a number in [0, 1]")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        _fail(section, key, value, f"a number in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


@dataclass
class ModelSection:
    """What to train and where its weights start.

    Attributes:
        name: registered model name (``probclip.list_models()``) used when ``init`` is ``scratch`` or ``open_clip``.
        init: ``scratch`` (random weights), ``pretrained`` (a released ProLIP or probclip checkpoint directory or
            ``hf-hub:owner/repo`` in ``pretrained``), or ``open_clip`` (towers of a pretrained open_clip model
            ``open_clip_model`` / ``open_clip_pretrained``, with fresh uncertainty heads).
        pretrained: checkpoint for ``init: pretrained``.
        open_clip_model, open_clip_pretrained: open_clip architecture name and pretrained tag (or file).
        overrides: fields of the model config to replace before building (e.g. ``{embed_dim: 32}``).
        reinit_unc: re-initialise the uncertainty (log-variance) heads and UNC tokens after loading.
        context_length: extend the text context to this many tokens after loading (LongProLIP), or null.
        context_keep_first: positional rows kept as they are when extending the context.
        grad_checkpointing: recompute transformer blocks in the backward pass.
        freeze_vision, freeze_text: keep a tower's weights fixed (LiT-style); its uncertainty head still
            trains unless ``freeze_heads`` is also true.
        freeze_heads: also freeze the Gaussian heads of frozen towers.
    """

    name: str = "ProLIP-Tiny"
    init: str = "scratch"
    pretrained: str | None = None
    open_clip_model: str | None = None
    open_clip_pretrained: str | None = None
    overrides: dict = field(default_factory=dict)
    reinit_unc: bool = False
    context_length: int | None = None
    context_keep_first: int = 20
    grad_checkpointing: bool = False
    freeze_vision: bool = False
    freeze_text: bool = False
    freeze_heads: bool = False

    def validate(self) -> None:
        _check_choice("model", "init", self.init, INIT_KINDS)
        if self.init in ("scratch", "open_clip") and self.name not in list_models():
            _fail("model", "name", self.name, f"a registered model name, one of {list_models()}")
        if self.init == "pretrained" and not self.pretrained:
            _fail(
                "model",
                "pretrained",
                self.pretrained,
                "a checkpoint directory or 'hf-hub:owner/repo' with init: pretrained",
            )
        if self.init == "open_clip" and not self.open_clip_model:
            _fail("model", "open_clip_model", self.open_clip_model, "an open_clip model name with init: open_clip")
        if self.context_length is not None:
            _check_int("model", "context_length", self.context_length, 1)
        if not isinstance(self.overrides, dict):
            _fail("model", "overrides", self.overrides, "a mapping of model config fields")


@dataclass
class DataSection:
    """Where image-text pairs come from and how they are batched.

    Attributes:
        source: ``webdataset`` (tar shards as img2dataset writes them), ``csv`` (CSV/TSV table of image paths and
            captions) or ``synthetic`` (the built-in synthetic world).
        paths: shard URLs/paths (brace patterns like ``data/{00000..00099}.tar`` are expanded) or the CSV file(s).
        batch_size: global batch size (all ranks and accumulation steps together).
        num_workers: DataLoader worker processes per rank.
        shuffle_buffer: samples held in the shuffle buffer of streaming (webdataset) sources; 0 disables it.
        resample: webdataset only: draw shards with replacement forever (each rank and worker independently)
            instead of passing over the shard list epoch by epoch.
        image_keys, caption_keys: webdataset only: extensions tried in order for the image and the caption(s).
            A ``json`` caption entry may be a string or a list of strings (or an object with a ``caption`` /
            ``captions`` field).
        csv_image_column, csv_caption_column: CSV/TSV column names; ``csv_image_root`` prefixes relative paths.
        csv_separator: column separator (null: ``\\t`` for ``.tsv`` files, ``,`` otherwise).
        caption_separator: if set, a caption cell is split on this string into several captions.
        synthetic: keyword arguments passed through to the synthetic world's dataset.
        train_augment: random resized crop instead of a centre crop.
        max_bad_fraction: stop the run when more than this fraction of samples read so far were unreadable
            (after the first 1000 samples); 1 never stops.
        max_image_pixels, max_image_aspect_ratio, max_member_bytes, max_caption_chars: resource limits
            (``probclip.limits``): an image with more pixels or a longer shape (checked before decoding), a file or
            tar member with more bytes, or a caption with more characters is skipped, counted and named like any
            unreadable sample.
    """

    source: str = "synthetic"
    paths: list = field(default_factory=list)
    batch_size: int = 64
    num_workers: int = 0
    shuffle_buffer: int = 1000
    resample: bool = True
    image_keys: list = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    caption_keys: list = field(default_factory=lambda: ["txt", "json"])
    csv_image_column: str = "filepath"
    csv_caption_column: str = "caption"
    csv_image_root: str | None = None
    csv_separator: str | None = None
    caption_separator: str | None = None
    synthetic: dict = field(default_factory=dict)
    train_augment: bool = False
    max_bad_fraction: float = 1.0
    max_image_pixels: int = DEFAULT_LIMITS.max_image_pixels
    max_image_aspect_ratio: float = DEFAULT_LIMITS.max_image_aspect_ratio
    max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes
    max_caption_chars: int = DEFAULT_LIMITS.max_caption_chars

    def validate(self) -> None:
        _check_choice("data", "source", self.source, list_sources())  # built-in and registered sources
        for key in ("max_image_pixels", "max_member_bytes", "max_caption_chars"):
            _check_int("data", key, getattr(self, key), 1)
        ratio = self.max_image_aspect_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
            _fail("data", "max_image_aspect_ratio", ratio, "a finite number >= 1")
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if self.source in ("webdataset", "csv") and not self.paths:
            _fail("data", "paths", self.paths, f"at least one path for source {self.source!r}")
        _check_int("data", "batch_size", self.batch_size, 1)
        _check_int("data", "num_workers", self.num_workers, 0)
        _check_int("data", "shuffle_buffer", self.shuffle_buffer, 0)
        _check_fraction("data", "max_bad_fraction", self.max_bad_fraction, low_open=False, high_open=False)
        if not isinstance(self.synthetic, dict):
            _fail("data", "synthetic", self.synthetic, "a mapping of keyword arguments")


@dataclass
class LossSection:
    """The objective: ``name`` in ``prolip``, ``pcmepp``, ``siglip``, ``clip``; ``kwargs`` go to
    ``probclip.losses.build_loss(name, **kwargs)`` (e.g. ``inclusion_alpha``, ``vib_beta`` for ProLIP).

    ``mix_fraction`` (PCME++ only): fraction of each batch whose images are mixed (mixup or cutmix, chosen with
    probability ``cutmix_prob``) with the image at the mirrored batch index; ``mix_beta``: Beta(a, a) parameter
    of the mixing weight. The match labels of mixed rows become soft.
    """

    name: str = "prolip"
    kwargs: dict = field(default_factory=dict)
    mix_fraction: float = 0.25
    mix_beta: float = 2.0
    cutmix_prob: float = 0.5

    def validate(self) -> None:
        _check_choice("loss", "name", self.name, list_losses())  # built-in and registered losses
        if not isinstance(self.kwargs, dict):
            _fail("loss", "kwargs", self.kwargs, "a mapping of loss keyword arguments")
        _check_fraction("loss", "mix_fraction", self.mix_fraction, low_open=False, high_open=False)
        _check_positive("loss", "mix_beta", self.mix_beta)
        _check_fraction("loss", "cutmix_prob", self.cutmix_prob, low_open=False, high_open=False)


@dataclass
class MaskingSection:
    """Masked views for ProLIP's original-in-masked inclusion loss, built on the fly for each batch.

    Attributes:
        fraction: share of the samples that get a masked image view and a masked text view: the sample at
            global-batch index ``g`` does when ``ceil((g + 1) * fraction) > ceil(g * fraction)``, i.e. the first of
            every ``1 / fraction`` samples (1 in 8 at 0.125), whatever the number of processes; 0 turns masked
            views off.
        image_keep_ratio: fraction of image patches KEPT in a masked image view, ``round(ratio * patches)`` of
            them (CLS and UNC are always kept; at least one patch is kept). The reference training keeps 0.75.
        text_mask_prob: probability that each non-padding text token is masked (reference: 0.75); 0 builds no
            masked text views (image views only).
        image_mask_mode: ``drop`` (reference): the patches not kept are removed from the token sequence;
            ``grey``: they are painted mid-grey and every token is kept (an occluded image).
        text_mask_mode: ``replace`` (reference): a masked token is REPLACED by the tokenizer's mask token (needs
            one); ``drop``: masked tokens are REMOVED, so the view is a shorter, more general text; ``phrase``: the
            view is a strictly more general caption that the data source makes by dropping whole phrases
            (``probclip.data.text_views``: ``data.source: synthetic``), words dropped as ``drop`` (with
            ``text_mask_prob``) for a caption without one.
        phrase_views: whose phrase views (``text_mask_mode: phrase``): the name of a registered maker
            (``probclip.data.text_views``), for captions of that kind read from another source, such as
            ``synthetic`` for the world's captions written to webdataset shards by ``probclip synth``; None: the
            maker of ``data.source``.
    """

    fraction: float = 0.125
    image_keep_ratio: float = 0.75
    text_mask_prob: float = 0.75
    text_mask_mode: str = "replace"
    image_mask_mode: str = "drop"
    phrase_views: str | None = None

    def validate(self) -> None:
        _check_fraction("masking", "fraction", self.fraction, low_open=False, high_open=False)
        _check_fraction("masking", "image_keep_ratio", self.image_keep_ratio, low_open=True, high_open=False)
        _check_fraction("masking", "text_mask_prob", self.text_mask_prob, low_open=False, high_open=False)
        _check_choice("masking", "text_mask_mode", self.text_mask_mode, TEXT_MASK_MODES)
        _check_choice("masking", "image_mask_mode", self.image_mask_mode, IMAGE_MASK_MODES)
        if self.phrase_views is not None and (not isinstance(self.phrase_views, str) or not self.phrase_views):
            _fail("masking", "phrase_views", self.phrase_views, "the name of a phrase view maker or null")


@dataclass
class OptimSection:
    """AdamW with linear warmup and cosine decay to ``min_lr``.

    Weight decay applies only to weight matrices: never to norms, biases, embeddings (token, positional, CLS,
    UNC) or the logit parameters. ``grad_clip``: max global gradient norm (0 disables). ``accum_freq``: split
    each rank's batch into this many micro-batches with exact contrastive accumulation.
    """

    lr: float = 5e-4
    min_lr: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup_steps: int = 100
    schedule: str = "cosine"
    grad_clip: float = 1.0
    accum_freq: int = 1

    def validate(self) -> None:
        _check_positive("optim", "lr", self.lr)
        _check_positive("optim", "min_lr", self.min_lr, allow_zero=True)
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas)):
            _fail("optim", "betas", self.betas, "two numbers in [0, 1)")
        _check_positive("optim", "eps", self.eps)
        _check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _check_int("optim", "warmup_steps", self.warmup_steps, 0)
        _check_choice("optim", "schedule", self.schedule, ("cosine", "constant"))
        _check_positive("optim", "grad_clip", self.grad_clip, allow_zero=True)
        _check_int("optim", "accum_freq", self.accum_freq, 1)


@dataclass
class RunSection:
    """Length, precision, output, logging, checkpoints and evaluation of a run.

    Attributes:
        steps: optimizer steps to run (the schedule spans them). ``max_seconds``: also stop (with a checkpoint)
            after this much wall-clock training time, if set.
        output_dir: where checkpoints, ``train_config.yaml``, ``log.jsonl`` and TensorBoard files go.
        seed: seeds model init, data order, augmentation and masking.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; CUDA only, CPU always runs fp32).
        log_every: steps between logged lines (JSONL, TensorBoard, progress); ``progress``: ``auto`` (a bar on a
            terminal, plain lines otherwise), ``bar``, ``plain`` or ``none``.
        save_every: steps between checkpoints (0: only the final one); ``keep_last``: checkpoints kept.
        resume: ``null``, ``latest`` (newest checkpoint in ``output_dir``) or a checkpoint directory.
        overwrite: start over in an ``output_dir`` that holds an earlier run (its checkpoints, log and config are
            removed); without it such a start is refused.
        allow_config_change: resume even when the model, batch size, data source, shard list or worker count
            differ from the checkpoint's (the differences are logged); without it such a resume is refused.
        max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss (each is skipped).
        eval_every: steps between evaluation-hook calls (0: never).
        tensorboard: write TensorBoard scalars.
        dist_backend: ``auto`` (nccl on CUDA, gloo on CPU), ``gloo`` or ``nccl``.
        cpu_threads: torch intra-op threads per process (null: torch's default). On a small shared CPU, 1 thread
            per process is often much faster than oversubscribed cores.
        compile: ``true`` compiles both towers with ``torch.compile`` (its default backend, inductor: the first
            steps are slower while it compiles, and the CPU needs a C++ compiler); a string names another
            ``torch.compile`` backend (e.g. ``aot_eager``). Weights and checkpoints are those of the plain model.
    """

    steps: int = 1000
    max_seconds: float | None = None
    output_dir: str = "runs/probclip"
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"
    log_every: int = 10
    progress: str = "auto"
    save_every: int = 500
    keep_last: int = 2
    resume: str | None = None
    overwrite: bool = False
    allow_config_change: bool = False
    max_nonfinite_steps: int = 10
    eval_every: int = 0
    tensorboard: bool = True
    dist_backend: str = "auto"
    cpu_threads: int | None = None
    compile: bool | str = False

    def validate(self) -> None:
        _check_int("run", "steps", self.steps, 1)
        if self.cpu_threads is not None:
            _check_int("run", "cpu_threads", self.cpu_threads, 1)
        if self.max_seconds is not None:
            _check_positive("run", "max_seconds", self.max_seconds)
        _check_int("run", "seed", self.seed, 0)
        _check_choice("run", "device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("run", "precision", self.precision, PRECISIONS)
        _check_int("run", "log_every", self.log_every, 1)
        _check_choice("run", "progress", self.progress, ("auto", "bar", "plain", "none"))
        _check_int("run", "save_every", self.save_every, 0)
        _check_int("run", "keep_last", self.keep_last, 1)
        _check_int("run", "max_nonfinite_steps", self.max_nonfinite_steps, 1)
        _check_int("run", "eval_every", self.eval_every, 0)
        _check_choice("run", "dist_backend", self.dist_backend, ("auto", "gloo", "nccl"))
        if not isinstance(self.compile, bool) and not (isinstance(self.compile, str) and self.compile):
            _fail("run", "compile", self.compile, "true, false or the name of a torch.compile backend")


@dataclass
class EvalSection:
    """Evaluation every ``run.eval_every`` steps (and at the end) through ``probclip.eval``.

    ``zeroshot``: classification data sets (directories readable by ``probclip.eval.readers.read_classification``);
    ``retrieval``: retrieval data sets (``read_retrieval``: CSV, Karpathy JSON or webdataset); ``split`` to read;
    ``batch_size`` for encoding. Empty lists: no evaluation.
    """

    zeroshot: list = field(default_factory=list)
    retrieval: list = field(default_factory=list)
    split: str = "test"
    batch_size: int = 64

    def validate(self) -> None:
        for key in ("zeroshot", "retrieval"):
            if isinstance(getattr(self, key), str):
                setattr(self, key, [getattr(self, key)])
        _check_int("eval", "batch_size", self.batch_size, 1)


_SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "loss": LossSection,
    "masking": MaskingSection,
    "optim": OptimSection,
    "run": RunSection,
    "eval": EvalSection,
}


@dataclass
class TrainConfig:
    """The whole training configuration (see each section's docstring for its keys)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    masking: MaskingSection = field(default_factory=MaskingSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> TrainConfig:
        """Check every section; raises ``UsageError`` (a ``ValueError``) naming the bad key, its value and what is
        accepted."""
        for name in _SECTIONS:
            check_field_types(name, getattr(self, name))
            getattr(self, name).validate()
        return self

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> TrainConfig:
        """Build and validate from a nested dict; unknown sections or keys raise ``ValueError`` naming them."""
        data = copy.deepcopy(data or {})
        if not isinstance(data, dict):
            raise UsageError(f"a training config must be a mapping of sections; got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise UsageError(f"unknown config sections {unknown}; known sections are {list(_SECTIONS)}")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise UsageError(f"config section {name!r} must be a mapping; got {values!r}")
            check_known_keys(section_cls, values, f"section {name!r}")
            sections[name] = section_cls(**_coerce_floats(section_cls, values))
        return cls(**sections).validate()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce_floats(section_cls, values: dict) -> dict:
    """YAML 1.1 reads ``5e-4`` (no dot) as a string; turn such strings into floats for float-typed keys."""
    float_keys = {f.name for f in dataclasses.fields(section_cls) if str(f.type).split(" ")[0] == "float"}
    out = dict(values)
    for key in float_keys & set(out):
        if isinstance(out[key], str):
            try:
                out[key] = float(out[key])
            except ValueError:
                pass  # validate() reports the bad value with what is accepted
    return out


def parse_override_args(args: Sequence[str]) -> dict:
    """``["--optim.lr", "1e-4", "--run.steps=20"]`` -> ``{"optim": {"lr": 1e-4}, "run": {"steps": 20}}``.

    Values are parsed as YAML scalars/lists/mappings. Raises ``ValueError`` for an argument that is not of the
    form ``--section.key value`` or ``--section.key=value``.
    """
    overrides: dict = {}
    items = list(args)
    index = 0
    while index < len(items):
        arg = items[index]
        if not arg.startswith("--") or "." not in arg:
            raise UsageError(f"unexpected argument {arg!r}; overrides look like --section.key value "
                             "(e.g. --optim.lr 1e-4)")
        if "=" in arg:
            dotted, raw = arg[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(items):
                raise UsageError(f"override {arg!r} has no value; write {arg} VALUE")
            dotted, raw = arg[2:], items[index + 1]
            index += 2
        parts = dotted.split(".")
        if len(parts) != 2 or not all(parts):
            raise UsageError(f"override {arg!r} must name exactly one section and one key: --section.key")
        section, key = parts
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UsageError(f"--{dotted} {raw!r} is not a YAML value ({_yaml_problem(err)}); quote strings, "
                             "write lists as '[a, b]' and mappings as '{key: value}'") from err
        overrides.setdefault(section, {})[key] = value
    return overrides


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{getattr(err, 'problem', None) or err}"


def read_yaml_file(path: Path) -> Any:
    """Parse a YAML file; raises ``UsageError`` naming the file (and line) when it is not UTF-8 or not YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start}); save the config as UTF-8 YAML") from err
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {_yaml_problem(err)}") from err


def _merge(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for section, values in changes.items():
        if not isinstance(values, dict):
            raise UsageError(f"override for section {section!r} must be a mapping; got {values!r}")
        merged.setdefault(section, {})
        if merged[section] is None:
            merged[section] = {}
        merged[section].update(copy.deepcopy(values))
    return merged


def apply_overrides(config: TrainConfig | dict, overrides: dict) -> TrainConfig:
    """A new validated ``TrainConfig`` with ``overrides`` (``{section: {key: value}}``) applied."""
    base = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    return TrainConfig.from_dict(_merge(base, overrides))


def load_config(path: str | Path | None = None, overrides: Sequence[str] | dict | None = None) -> TrainConfig:
    """Read a YAML training config (or start from defaults when ``path`` is None) and apply overrides.

    ``overrides`` is a list of ``--section.key value`` arguments or a ``{section: {key: value}}`` dict.
    Raises ``UsageError`` (a ``ValueError``) for a missing or unparsable file and for unknown or invalid keys.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigFileNotFoundError(f"training config {path} not found (--config takes a YAML file)")
        loaded = read_yaml_file(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"{path} must hold a mapping of sections (model, data, ...); got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        if not isinstance(overrides, dict):
            overrides = parse_override_args(overrides)
        data = _merge(data, overrides)
    return TrainConfig.from_dict(data)
