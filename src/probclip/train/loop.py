"""The training loop: ``train(config) -> TrainResult``, the same for one CPU process and ``torchrun`` on many GPUs.

``build_run`` builds everything a run needs (model, data, loss, optimiser, logger, checkpoint state) into a
``Run``; ``run_loop`` is the loop itself: read a batch, step, log, evaluate, save.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.samples import PairCollator
from ..data.sources import TrainBatches, build_train_batches
from ..data.text_views import phrase_view_maker, phrase_view_sources
from ..errors import InputError, UsageError
from ..losses import NonFiniteLossError, PairLoss, build_loss
from ..models import load_pretrained_model
from ..tokenizers import Tokenizer, get_tokenizer
from ..transforms import image_transform
from .checkpoint import (
    NonFiniteWeightsError,
    atomic_write_text,
    capture_rng_state,
    load_resume_state,
    prune_checkpoints,
    restore_rng_state,
    samples_before,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from .evaluation import build_eval_fn
from .model_init import build_model, freeze_towers
from .optim import build_optimizer, clamp_logit_scale, learning_rate, set_learning_rate
from .precision import autocast_factory, uses_grad_scaler
from .run_dir import RunLock, guard_run_directory
from .run_log import RunLogger
from .step import TrainingForward, ViewGeometry, build_step_inputs, forward_backward

__all__ = ["Run", "StepInfo", "TrainResult", "TrainingStopped", "build_run", "run_loop", "train"]

#: Batches with unreadable samples that a non-main process reports per logging window (the count is always exact).
_MAX_RANK_ERRORS = 8


class TrainingStopped(InputError, RuntimeError):
    """The run stopped on an error condition (too many consecutive non-finite losses, too many bad samples)."""


@dataclass
class StepInfo:
    """What a callback sees after every optimizer step (on every rank).

    ``loss`` and ``terms`` are this rank's values; ``skipped`` says the step was skipped (non-finite loss).
    """

    step: int
    total_steps: int
    samples: int
    seconds: float
    lr: float
    loss: float
    terms: dict
    skipped: bool
    model: Any


@dataclass
class TrainResult:
    """Outcome of ``train``.

    Attributes:
        model: the trained ``ProbCLIP`` (training mode, on the training device).
        steps: optimizer steps done in total (including before a resume).
        seconds: wall-clock seconds of this call's training loop.
        samples: image-text pairs seen in total (``steps x global batch``).
        log_path: the run's ``log.jsonl``.
        output_dir: the run directory.
        checkpoint: the last checkpoint written (None if none).
        stop_reason: ``completed``, ``max_seconds`` or ``callback``.
        skipped_samples: unreadable samples skipped during this call (all ranks).
        nonfinite_steps: steps skipped because of a non-finite loss during this call.
        final_loss: loss of the last logged step (mean over ranks).
    """

    model: Any
    steps: int
    seconds: float
    samples: int
    log_path: Path
    output_dir: Path
    checkpoint: Path | None = None
    stop_reason: str = "completed"
    skipped_samples: int = 0
    nonfinite_steps: int = 0
    final_loss: float = float("nan")
    history: list = field(default_factory=list)


@dataclass
class Run:
    """Everything a training run needs, built once on every process by ``build_run``.

    ``model`` is the ``ProbCLIP`` (saved, evaluated, clamped); ``forward`` is what a step calls: the model's
    ``TrainingForward``, wrapped in ``DistributedDataParallel`` when there are several processes.
    """

    config: TrainConfig
    dist: DistInfo
    model: Any
    forward: nn.Module
    loss_fn: PairLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable
    batches: TrainBatches
    tokenizer: Tokenizer
    uses_masks: bool
    logger: RunLogger
    output_dir: Path
    config_yaml: str
    geometry: ViewGeometry
    start_step: int = 0
    eval_fn: Callable[[Any, int], dict] | None = None
    lock: RunLock | None = None  # held by the main process until the run ends
    samples_offset: int = 0  # samples seen = samples_offset + step * global batch (a resumed batch-size change)


@dataclass
class LogWindow:
    """The loop's counters: totals of the run and the window since the last logged step."""

    started: float
    window_start: float
    window_samples: int = 0
    skipped_window: int = 0  # unreadable samples of this rank in the window
    skipped_total: int = 0  # unreadable samples of all ranks, logged windows only
    consecutive_nonfinite: int = 0
    nonfinite_steps: int = 0
    rank_errors: list = field(default_factory=list)  # a non-main rank's bad-sample reports for the next log
    grad_norm: float = float("nan")
    final_loss: float = float("nan")
    history: list = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_or_resume_model(cfg: TrainConfig, resume_dir: Path | None, log: Callable):
    if resume_dir is None:
        return build_model(cfg.model, log)
    model = load_pretrained_model(resume_dir).train()
    if cfg.model.freeze_vision or cfg.model.freeze_text:
        freeze_towers(model, cfg.model.freeze_vision, cfg.model.freeze_text, cfg.model.freeze_heads)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    log(f"model: resumed weights from {resume_dir}")
    return model


def _freeze_what_the_loss_does_not_train(model, loss_fn: PairLoss, log: Callable) -> None:
    """A loss on the means gives the log-variance heads no gradient, CLIP's softmax none to ``logit_bias``: freeze
    them, so that every trainable parameter receives a gradient in every step (AdamW skips gradient-less
    parameters anyway, so the weights are the same; DistributedDataParallel relies on it, see ``wrap_model``)."""
    if not loss_fn.uses_logit_bias:
        model.logit_bias.requires_grad_(False)
    if not loss_fn.uses_uncertainty:
        frozen = model.lock_logvar_heads()
        log(f"model: the loss reads no variance; {len(frozen)} log-variance head tensors frozen")


def wrap_model(model, dist_info: DistInfo, compile_towers: bool | str = False) -> nn.Module:
    """The module a training step calls: ``TrainingForward(model)``, in ``DistributedDataParallel`` when the run has
    several processes. ``compile_towers``: True compiles both towers in place with ``torch.compile``'s default
    backend, a string with that backend (state-dict names do not change).

    DistributedDataParallel averages the gradients bucket by bucket while the backward pass runs (the all-reduce
    overlaps the backward computation). ``find_unused_parameters=False``: every trainable parameter receives a
    gradient in every step (frozen towers and heads have ``requires_grad=False`` and are not registered; see
    ``_freeze_what_the_loss_does_not_train``), so no per-step search of the autograd graph is needed.
    ``static_graph=False``: masked views run the towers twice per step, but inside one ``TrainingForward`` call,
    so each parameter's gradient is ready exactly once per backward pass (and gradient checkpointing is
    non-reentrant); a step skipped for a non-finite loss runs no backward pass, which a static graph would not
    expect.
    """
    if compile_towers:
        backend = compile_towers if isinstance(compile_towers, str) else "inductor"
        model.visual.compile(backend=backend)
        model.text.compile(backend=backend)
    forward = TrainingForward(model)
    if not dist_info.distributed:
        return forward
    # The model has no buffers, so there is nothing to broadcast in the forward pass.
    return DistributedDataParallel(forward, device_ids=None, find_unused_parameters=False, static_graph=False)


def _restore_training_state(state: dict | None, optimizer, scaler, dist_info: DistInfo, resume_dir) -> dict | None:
    """Load the optimizer, scaler and this rank's RNG state from a checkpoint; returns this rank's data position."""
    if state is None:
        return None
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    ranks_data = state.get("data") or []
    if len(ranks_data) != dist_info.world_size:
        raise UsageError(
            f"checkpoint {resume_dir} was written by {len(ranks_data)} process(es); resume it with the same "
            f"number (now {dist_info.world_size})"
        )
    restore_rng_state(state["rng"][dist_info.rank])
    return ranks_data[dist_info.rank]


def _phrase_views(config: TrainConfig, uses_masks: bool):
    """The phrase view maker of the run (``masking.phrase_views``, else the data source's) when its masked text
    views are phrase views (``masking.text_mask_mode: phrase`` and the loss uses masked text views), else None."""
    masking = config.masking
    if not (uses_masks and masking.text_mask_prob > 0 and masking.text_mask_mode == "phrase"):
        return None
    make = phrase_view_maker(masking.phrase_views or config.data.source)
    if make is None and masking.phrase_views is not None:
        raise UsageError(
            f"masking.phrase_views {masking.phrase_views!r} is not a phrase view maker; registered: "
            f"{phrase_view_sources()}"
        )
    if make is None:
        raise UsageError(
            f"masking.text_mask_mode 'phrase' needs a data source that makes phrase views; data.source "
            f"{config.data.source!r} does not (sources that do: {phrase_view_sources()}); set masking.phrase_views "
            "to one of them when the captions are of that kind (e.g. 'synthetic' for probclip synth shards), or "
            "use text_mask_mode drop or replace"
        )
    return make


def _check_masking(config: TrainConfig, model, tokenizer, uses_masks: bool) -> None:
    masking = config.masking
    if uses_masks and masking.text_mask_prob > 0 and masking.text_mask_mode == "replace" and tokenizer.mask_id is None:
        raise UsageError(
            f"masked text views need a mask token, but the tokenizer of {model.config.name or 'this model'} has "
            "none; set masking.text_mask_prob: 0, masking.text_mask_mode: drop, or give the model a text.mask_id"
        )


def _evaluated_on_main_only(model, step: int) -> dict:
    return {}


def build_run(config: TrainConfig, dist_info: DistInfo, *, eval_fn: Callable | None = None, source=None) -> Run:
    """Build the run described by a validated ``config`` on this process: run directory, logger, model (fresh or
    resumed), tokenizer, data stream, loss, optimiser, precision and checkpoint state. See ``train``."""
    run = config.run
    output_dir = Path(run.output_dir)
    if dist_info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    resume_dir, state = load_resume_state(run.resume, output_dir)
    lock = guard_run_directory(config, output_dir, resume_dir, state, dist_info.world_size, dist_info.is_main)
    start_step = int(state["step"]) if state else 0
    logger = RunLogger(output_dir, run.steps, run.progress, run.tensorboard, enabled=dist_info.is_main,
                       start_step=start_step)
    log = logger.message
    try:
        config_yaml = config.to_yaml()
        if dist_info.is_main:
            atomic_write_text(output_dir / "train_config.yaml", config_yaml)
        if run.resume == "latest" and resume_dir is None:
            log(f"run.resume 'latest': no checkpoint in {output_dir} yet; starting at step 0")
        if dist_info.device.type == "cpu" and run.precision != "fp32":
            log(f"run.precision {run.precision!r} applies to CUDA only; this CPU run computes in fp32")
        _seed_everything(run.seed)
        model = _build_or_resume_model(config, resume_dir, log).to(dist_info.device)
        tokenizer = get_tokenizer(model)
        transform = image_transform(model.config.vision, train=config.data.train_augment)
        loss_fn = build_loss(config.loss.name, **config.loss.kwargs)
        uses_masks = loss_fn.uses_masked_views and config.masking.fraction > 0
        _check_masking(config, model, tokenizer, uses_masks)
        collator = PairCollator(transform, tokenizer, random_transform=config.data.train_augment,
                                phrase_view=_phrase_views(config, uses_masks))
        _freeze_what_the_loss_does_not_train(model, loss_fn, log)
        optimizer = build_optimizer(model, config.optim)
        scaler = torch.amp.GradScaler("cuda", enabled=uses_grad_scaler(dist_info.device, run.precision))
        data_state = _restore_training_state(state, optimizer, scaler, dist_info, resume_dir)
        if state is not None:
            logger.event("resume", checkpoint=str(resume_dir), step=start_step)
        if eval_fn is None and dist_info.is_main:
            eval_fn = build_eval_fn(config.eval, get_tokenizer, lambda m: image_transform(m.config.vision, train=False))
        if broadcast_object(eval_fn is not None) and eval_fn is None:
            eval_fn = _evaluated_on_main_only  # other ranks wait at the barrier that follows each evaluation
        batches = build_train_batches(
            config.data, collator, seed=run.seed, rank=dist_info.rank, world_size=dist_info.world_size,
            start_step=start_step, resume_state=data_state, pin_memory=dist_info.device.type == "cuda", source=source,
        )
        return Run(
            config=config, dist=dist_info, model=model, forward=wrap_model(model, dist_info, run.compile),
            loss_fn=loss_fn, optimizer=optimizer, scaler=scaler,
            autocast=autocast_factory(dist_info.device, run.precision), batches=batches, tokenizer=tokenizer,
            uses_masks=uses_masks, logger=logger, output_dir=output_dir, config_yaml=config_yaml,
            geometry=ViewGeometry.of(model, tokenizer), start_step=start_step, eval_fn=eval_fn, lock=lock,
            samples_offset=samples_before(state, config.data.batch_size),
        )
    except BaseException:
        logger.close()
        if lock is not None:
            lock.release()
        raise


def train(
    config: TrainConfig,
    *,
    callbacks: Sequence[Callable[[StepInfo], bool | None]] = (),
    eval_fn: Callable[[Any, int], dict] | None = None,
    source=None,
) -> TrainResult:
    """Train (or fine-tune, or resume) a model as described by ``config``.

    Args:
        config: a validated ``TrainConfig`` (``probclip.train.load_config``).
        callbacks: called after every step on every rank with a ``StepInfo``; returning True stops the run
            (with a final checkpoint).
        eval_fn: ``eval_fn(model, step) -> dict of numbers``, called on the main process every ``run.eval_every``
            steps and at the end (model in eval mode, no gradient); results are logged (``eval/*``). Default: the
            ``eval`` config section's data sets (none: no evaluation).
        source: an already built data source (default: from ``config.data``), e.g. an in-memory dataset.

    Side effects on the calling process: the Python, NumPy and torch global generators are seeded with ``run.seed``
    (restored from the checkpoint when resuming), and ``torch.set_num_threads(run.cpu_threads)`` when set.

    Returns a ``TrainResult``. Raises ``TrainingStopped`` after ``run.max_nonfinite_steps`` consecutive
    non-finite losses or when more than ``data.max_bad_fraction`` of the samples read were unreadable, and the
    data errors of ``probclip.data`` (missing shard, empty dataset) before training.
    """
    config = config.validate()
    if config.run.cpu_threads is not None:
        torch.set_num_threads(config.run.cpu_threads)
    owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist_info = init_distributed(config.run.device, config.run.dist_backend)
    try:
        run = build_run(config, dist_info, eval_fn=eval_fn, source=source)
        try:
            return run_loop(run, callbacks)
        finally:
            run.logger.close()
            if run.lock is not None:
                run.lock.release()
    finally:
        if owns_process_group:
            cleanup_distributed()


def run_loop(run: Run, callbacks: Sequence[Callable[[StepInfo], bool | None]] = ()) -> TrainResult:
    """Train from ``run.start_step`` to ``run.steps`` (or an earlier stop); the last step is saved and evaluated."""
    steps, global_batch = run.config.run.steps, run.config.data.batch_size
    now = time.perf_counter()
    window = LogWindow(started=now, window_start=now)
    step, stop_reason, last_checkpoint = run.start_step, "completed", None
    while step < steps:
        batch = next(run.batches)
        lr = learning_rate(step, steps, run.config.optim)
        set_learning_rate(run.optimizer, lr)
        _note_bad_samples(run, window, batch, step)
        skipped, bad_component, terms = _optimizer_step(run, window, _step_inputs(run, batch, step))
        step += 1
        window.window_samples += global_batch
        _count_nonfinite(run, window, step, skipped, bad_component, terms)
        if step % run.config.run.log_every == 0 or step == steps:
            _log_step(run, window, step, lr, terms, skipped)
        info = StepInfo(step, steps, run.samples_offset + step * global_batch,
                        time.perf_counter() - window.started, lr,
                        terms.get("loss", float("nan")), terms, skipped, run.model)
        reason = _stop_reason(run, window, info, callbacks)
        if reason != "completed" and step < steps:
            stop_reason = reason
            run.logger.event("stop", step=step, reason=stop_reason)
            break
        if run.config.run.eval_every and step % run.config.run.eval_every == 0 and step < steps:
            _evaluate(run, step)
        if run.config.run.save_every and step % run.config.run.save_every == 0 and step < steps:
            last_checkpoint = _checkpoint(run, step)
    last_checkpoint = _checkpoint(run, step)
    _evaluate(run, step)
    return TrainResult(
        model=run.model, steps=step, seconds=time.perf_counter() - window.started,
        samples=run.samples_offset + step * global_batch,
        log_path=run.logger.path, output_dir=run.output_dir,
        checkpoint=Path(last_checkpoint) if last_checkpoint else None, stop_reason=stop_reason,
        skipped_samples=window.skipped_total, nonfinite_steps=window.nonfinite_steps,
        final_loss=window.final_loss, history=window.history,
    )


def _step_inputs(run: Run, batch, step: int):
    """The step's tensors on the device, with masked views (ProLIP) and mixed samples (PCME++)."""
    config = run.config
    return build_step_inputs(
        batch, step=step, seed=config.run.seed, rank=run.dist.rank, device=run.dist.device,
        masking=config.masking if run.uses_masks else None,
        mixing=config.loss if config.loss.name == "pcmepp" else None, geometry=run.geometry,
    )


def _optimizer_step(run: Run, window: LogWindow, inputs) -> tuple[bool, str | None, dict]:
    """Forward, backward (gradients averaged over processes), clip, step. Returns ``(skipped, bad component,
    loss terms)``; a step is skipped when the loss or the gradient norm is not finite."""
    skipped, bad_component, terms = False, None, {}
    try:
        terms = forward_backward(run.forward, run.loss_fn, inputs, run.config.optim.accum_freq, run.autocast,
                                 run.scaler.scale)
    except NonFiniteLossError as err:
        skipped, bad_component, terms = True, err.component, dict(err.values)
    if not skipped:
        run.scaler.unscale_(run.optimizer)
        trainable = [p for p in run.model.parameters() if p.requires_grad]
        window.grad_norm = _grad_norm(trainable, run.config.optim.grad_clip)
        if not math.isfinite(window.grad_norm) and not run.scaler.is_enabled():
            skipped, bad_component = True, "grad_norm"
        else:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            clamp_logit_scale(run.model)
    run.optimizer.zero_grad(set_to_none=True)
    return skipped, bad_component, terms


def _note_bad_samples(run: Run, window: LogWindow, batch, step: int) -> None:
    window.skipped_window += batch.skipped
    if batch.errors and run.dist.is_main:
        run.logger.event("bad_samples", step=step, rank=0, count=batch.skipped, errors=batch.errors)
    elif batch.errors and len(window.rank_errors) < _MAX_RANK_ERRORS:
        window.rank_errors.append({"step": step, "count": batch.skipped, "errors": batch.errors})


def _count_nonfinite(run: Run, window: LogWindow, step: int, skipped: bool, bad_component, terms: dict) -> None:
    if not skipped:
        window.consecutive_nonfinite = 0
        return
    window.consecutive_nonfinite += 1
    window.nonfinite_steps += 1
    run.logger.event("nonfinite", step=step, component=bad_component, consecutive=window.consecutive_nonfinite,
                     values=terms)
    limit = run.config.run.max_nonfinite_steps
    if window.consecutive_nonfinite >= limit:
        raise TrainingStopped(
            f"{window.consecutive_nonfinite} consecutive steps with a non-finite loss (last component: "
            f"{bad_component!r}) at step {step}; lower optim.lr, check the data, or raise "
            f"run.max_nonfinite_steps (now {limit})"
        )


def _log_step(run: Run, window: LogWindow, step: int, lr: float, terms: dict, skipped: bool) -> None:
    """Reduce the window's values over processes, check the bad-sample budget, write one log record."""
    global_batch, log_every = run.config.data.batch_size, run.config.run.log_every
    means = all_reduce_mean({**terms, "skipped_samples": float(window.skipped_window)}, run.dist.device)
    skipped_now = int(round(means.pop("skipped_samples") * run.dist.world_size))
    window.skipped_total += skipped_now
    if skipped_now and run.dist.distributed:  # the same decision on every rank (a reduced value)
        for rank, reports in enumerate(gather_objects(window.rank_errors)):
            for report in reports if rank > 0 else ():
                run.logger.event("bad_samples", rank=rank, **report)
        window.rank_errors = []
    read = (step - run.start_step) * global_batch + window.skipped_total
    max_bad = run.config.data.max_bad_fraction
    if read >= 1000 and window.skipped_total / read > max_bad:
        raise TrainingStopped(
            f"{window.skipped_total} of the {read} samples read so far were unreadable "
            f"({window.skipped_total / read:.1%} > data.max_bad_fraction={max_bad}); "
            f"see the 'bad_samples' events in {run.logger.path}"
        )
    now = time.perf_counter()
    record = {
        "step": step,
        "samples": run.samples_offset + step * global_batch,
        "lr": lr,
        **means,
        "logit_scale": float(run.model.logit_scale.detach()),
        "logit_bias": float(run.model.logit_bias.detach()),
        "grad_norm": float(window.grad_norm) if not skipped else float("nan"),
        "samples_per_s": window.window_samples / max(now - window.window_start, 1e-9),
        "elapsed_s": now - window.started,
        "skipped_samples": skipped_now,
        "nonfinite_steps": window.nonfinite_steps,
    }
    window.final_loss = record.get("loss", float("nan"))
    window.history.append({k: record[k] for k in ("step", "loss") if k in record})
    run.logger.step(record, advance=log_every if step % log_every == 0 else step % log_every)
    window.window_start, window.window_samples, window.skipped_window, window.rank_errors = now, 0, 0, []


def _stop_reason(run: Run, window: LogWindow, info: StepInfo, callbacks) -> str:
    """``callback`` or ``max_seconds`` when any process wants to stop after this step, else ``completed``."""
    max_seconds = run.config.run.max_seconds
    wants_stop = any(bool(cb(info)) for cb in callbacks)
    over_time = max_seconds is not None and time.perf_counter() - window.started >= max_seconds
    if (callbacks or max_seconds is not None) and _stop_vote(wants_stop or over_time, run.dist):
        return "callback" if wants_stop else "max_seconds"
    return "completed"


def _checkpoint(run: Run, at_step: int) -> str | None:
    """Save a checkpoint of every rank's data position and RNG state (written by the main process); its path."""
    states = gather_objects({"data": run.batches.state(), "rng": capture_rng_state()})
    path = None
    if run.dist.is_main:
        optim, steps = run.config.optim, run.config.run.steps
        training_state = {
            "step": at_step,
            "samples": run.samples_offset + at_step * run.config.data.batch_size,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "schedule": {"kind": optim.schedule, "warmup_steps": optim.warmup_steps, "total_steps": steps},
            "data": [s["data"] for s in states],
            "rng": [s["rng"] for s in states],
            "world_size": run.dist.world_size,
        }
        try:
            path = save_checkpoint(run.output_dir, at_step, run.model, training_state, run.config_yaml)
        except NonFiniteWeightsError as err:  # a diverged model: keep the last good checkpoint
            run.logger.event("checkpoint_refused", step=at_step, reason=str(err))
            run.logger.message(f"warning: {err}")
        else:
            prune_checkpoints(run.output_dir, run.config.run.keep_last)
            run.logger.event("checkpoint", step=at_step, path=str(path))
    barrier()
    return broadcast_object(str(path) if path else None)


def _evaluate(run: Run, at_step: int) -> None:
    """Call the evaluation hook on the main process (model in eval mode, no gradient); the others wait."""
    if run.eval_fn is None:
        return
    if run.dist.is_main:
        run.model.eval()
        with torch.no_grad():
            metrics = run.eval_fn(run.model, at_step)
        run.model.train()
        run.logger.event("eval", step=at_step, metrics=metrics)
        run.logger.scalars("eval", metrics, at_step)
    barrier()


def _stop_vote(local_stop: bool, dist_info: DistInfo) -> bool:
    """True on every rank when any rank wants to stop."""
    if not dist_info.distributed:
        return local_stop
    flag = torch.tensor([1.0 if local_stop else 0.0], device=dist_info.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _grad_norm(parameters, max_norm: float) -> float:
    """Global gradient norm (clipping to ``max_norm`` when > 0)."""
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
