"""The training loop: ``train(config) -> TrainResult``, the same for one CPU process and ``torchrun`` on many GPUs."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.samples import PairCollator
from ..data.sources import build_train_batches
from ..errors import InputError, UsageError
from ..losses import NonFiniteLossError, build_loss
from ..models import load_pretrained_model
from ..tokenizers import get_tokenizer
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
    average_gradients,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from .evaluation import build_eval_fn
from .model_init import build_model, freeze_towers
from .optim import build_optimizer, clamp_logit_scale, learning_rate, set_learning_rate
from .run_dir import guard_run_directory
from .run_log import RunLogger
from .step import build_step_inputs, forward_backward

__all__ = ["TrainResult", "StepInfo", "TrainingStopped", "train"]

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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast_factory(device: torch.device, precision: str) -> Callable:
    """The context of the model's forward passes: bf16/fp16 autocast on CUDA; none (fp32) for fp32 or on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def _uses_grad_scaler(device: torch.device, precision: str) -> bool:
    """fp16 autocast on CUDA needs loss scaling (bf16 has fp32's exponent range and does not)."""
    return device.type == "cuda" and precision == "fp16"


def _build_or_resume_model(cfg: TrainConfig, resume_dir: Path | None, log: Callable):
    if resume_dir is None:
        return build_model(cfg.model, log)
    model = load_pretrained_model(resume_dir).train()
    if cfg.model.freeze_vision or cfg.model.freeze_text:
        freeze_towers(model, cfg.model.freeze_vision, cfg.model.freeze_text, cfg.model.freeze_heads)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    log(f"model: resumed weights from {resume_dir}")
    return model


def _evaluated_on_main_only(model, step: int) -> dict:
    return {}


def _stop_vote(local_stop: bool, dist_info: DistInfo) -> bool:
    """True on every rank when any rank wants to stop."""
    if not dist_info.distributed:
        return local_stop
    flag = torch.tensor([1.0 if local_stop else 0.0], device=dist_info.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


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
    run = config.run
    if run.cpu_threads is not None:
        torch.set_num_threads(run.cpu_threads)
    owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist_info = init_distributed(run.device, run.dist_backend)
    output_dir = Path(run.output_dir)
    if dist_info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    resume_dir, state = load_resume_state(run.resume, output_dir)
    starting_fresh = run.resume == "latest" and resume_dir is None
    run_lock = guard_run_directory(config, output_dir, resume_dir, state, dist_info.world_size, dist_info.is_main)
    start_step = int(state["step"]) if state else 0
    logger = RunLogger(output_dir, run.steps, run.progress, run.tensorboard, enabled=dist_info.is_main,
                       start_step=start_step)
    log = logger.message
    try:
        config_yaml = config.to_yaml()
        if dist_info.is_main:
            atomic_write_text(output_dir / "train_config.yaml", config_yaml)
        if starting_fresh:
            log(f"run.resume 'latest': no checkpoint in {output_dir} yet; starting at step 0")
        if dist_info.device.type == "cpu" and run.precision != "fp32":
            log(f"run.precision {run.precision!r} applies to CUDA only; this CPU run computes in fp32")
        _seed_everything(run.seed)
        model = _build_or_resume_model(config, resume_dir, log).to(dist_info.device)
        tokenizer = get_tokenizer(model)
        transform = image_transform(model.config.vision, train=config.data.train_augment)
        collator = PairCollator(transform, tokenizer, random_transform=config.data.train_augment)
        loss_fn = build_loss(config.loss.name, **config.loss.kwargs)
        uses_masks = getattr(loss_fn, "uses_masked_views", False) and config.masking.fraction > 0
        if (uses_masks and config.masking.text_mask_prob > 0 and config.masking.text_mask_mode == "replace"
                and tokenizer.mask_id is None):
            raise UsageError(
                f"masked text views need a mask token, but the tokenizer of {model.config.name or 'this model'} has "
                "none; set masking.text_mask_prob: 0, masking.text_mask_mode: drop, or give the model a text.mask_id"
            )
        if config.loss.name == "clip":
            model.logit_bias.requires_grad_(False)  # CLIP's softmax loss has no bias
        optimizer = build_optimizer(model, config.optim)
        scaler = torch.amp.GradScaler("cuda", enabled=_uses_grad_scaler(dist_info.device, run.precision))
        autocast = _autocast_factory(dist_info.device, run.precision)
        data_state = None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            ranks_data = state.get("data") or []
            if len(ranks_data) != dist_info.world_size:
                raise ValueError(
                    f"checkpoint {resume_dir} was written by {len(ranks_data)} process(es); resume it with the same "
                    f"number (now {dist_info.world_size})"
                )
            data_state = ranks_data[dist_info.rank]
            restore_rng_state(state["rng"][dist_info.rank])
            logger.event("resume", checkpoint=str(resume_dir), step=start_step)
        if eval_fn is None and dist_info.is_main:
            eval_fn = build_eval_fn(config.eval, get_tokenizer,
                                    lambda m: image_transform(m.config.vision, train=False))
        if broadcast_object(eval_fn is not None) and eval_fn is None:
            eval_fn = _evaluated_on_main_only  # other ranks wait at the barrier that follows each evaluation
        batches = build_train_batches(
            config.data, collator, seed=run.seed, rank=dist_info.rank, world_size=dist_info.world_size,
            start_step=start_step, resume_state=data_state, pin_memory=dist_info.device.type == "cuda", source=source,
        )
        return _run_loop(config, dist_info, model, loss_fn, optimizer, scaler, autocast, batches, tokenizer,
                         uses_masks, logger, start_step, config_yaml, callbacks, eval_fn, output_dir,
                         NonFiniteLossError, samples_before(state, config.data.batch_size))
    finally:
        logger.close()
        if run_lock is not None:
            run_lock.release()
        if owns_process_group:
            cleanup_distributed()


def _run_loop(config, dist_info, model, loss_fn, optimizer, scaler, autocast, batches, tokenizer, uses_masks,
              logger, start_step, config_yaml, callbacks, eval_fn, output_dir, NonFiniteLossError,
              samples_offset: int = 0) -> TrainResult:
    run, optim = config.run, config.optim
    global_batch = config.data.batch_size
    # samples seen = samples_offset + step * global_batch (the offset is non-zero after a batch-size change)
    trainable = [p for p in model.parameters() if p.requires_grad]
    step = start_step
    started = time.perf_counter()
    window_start, window_samples = started, 0
    consecutive_nonfinite = nonfinite_steps = 0
    skipped_samples_window = skipped_total = 0
    window_errors: list = []  # another rank's bad-sample messages, reported by the main process at log steps
    last_checkpoint = None
    final_loss = grad_norm = float("nan")
    stop_reason = "completed"
    history = []
    mixing = config.loss if config.loss.name == "pcmepp" else None

    def checkpoint(at_step: int) -> Path | None:
        states = gather_objects({"data": batches.state(), "rng": capture_rng_state()})
        path = None
        if dist_info.is_main:
            training_state = {
                "step": at_step,
                "samples": samples_offset + at_step * global_batch,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "schedule": {"kind": optim.schedule, "warmup_steps": optim.warmup_steps, "total_steps": run.steps},
                "data": [s["data"] for s in states],
                "rng": [s["rng"] for s in states],
                "world_size": dist_info.world_size,
            }
            try:
                path = save_checkpoint(output_dir, at_step, model, training_state, config_yaml)
            except NonFiniteWeightsError as err:  # a diverged model: keep the last good checkpoint
                logger.event("checkpoint_refused", step=at_step, reason=str(err))
                logger.message(f"warning: {err}")
            else:
                prune_checkpoints(output_dir, run.keep_last)
                logger.event("checkpoint", step=at_step, path=str(path))
        barrier()
        return broadcast_object(str(path) if path else None)

    def evaluate(at_step: int) -> None:
        if eval_fn is None:
            return
        if dist_info.is_main:
            model.eval()
            with torch.no_grad():
                metrics = eval_fn(model, at_step)
            model.train()
            logger.event("eval", step=at_step, metrics=metrics)
            logger.scalars("eval", metrics, at_step)
        barrier()

    vision_cfg = model.config.vision
    # Mid-grey in the model's normalised pixel units: the fill of image_mask_mode 'grey'.
    mid_grey = (0.5 - torch.tensor(vision_cfg.image_mean)) / torch.tensor(vision_cfg.image_std)
    while step < run.steps:
        batch = next(batches)
        lr = learning_rate(step, run.steps, optim)
        set_learning_rate(optimizer, lr)
        inputs = build_step_inputs(
            batch, step=step, seed=run.seed, rank=dist_info.rank, device=dist_info.device,
            masking=config.masking if uses_masks else None, num_patches=model.visual.num_patches,
            mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, mixing=mixing,
            patch_size=model.visual.patch_size, grey=mid_grey,
        )
        skipped_samples_window += batch.skipped
        if batch.errors and dist_info.is_main:
            logger.event("bad_samples", step=step, rank=0, count=batch.skipped, errors=batch.errors)
        elif batch.errors and len(window_errors) < _MAX_RANK_ERRORS:
            window_errors.append({"step": step, "count": batch.skipped, "errors": batch.errors})
        skipped_step, bad_component, terms = False, None, {}
        try:
            terms = forward_backward(model, loss_fn, inputs, optim.accum_freq, autocast, scaler.scale)
        except NonFiniteLossError as err:
            skipped_step, bad_component, terms = True, err.component, dict(err.values)
        if not skipped_step:
            average_gradients(trainable, dist_info.world_size)
            scaler.unscale_(optimizer)
            grad_norm = _grad_norm(trainable, optim.grad_clip)
            if not math.isfinite(grad_norm) and not scaler.is_enabled():
                skipped_step, bad_component = True, "grad_norm"
            else:
                scaler.step(optimizer)
                scaler.update()
                clamp_logit_scale(model)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_samples += global_batch
        if skipped_step:
            consecutive_nonfinite += 1
            nonfinite_steps += 1
            logger.event("nonfinite", step=step, component=bad_component, consecutive=consecutive_nonfinite,
                         values=terms)
            if consecutive_nonfinite >= run.max_nonfinite_steps:
                raise TrainingStopped(
                    f"{consecutive_nonfinite} consecutive steps with a non-finite loss (last component: "
                    f"{bad_component!r}) at step {step}; lower optim.lr, check the data, or raise "
                    f"run.max_nonfinite_steps (now {run.max_nonfinite_steps})"
                )
        else:
            consecutive_nonfinite = 0

        if step % run.log_every == 0 or step == run.steps:
            means = all_reduce_mean(
                {**{k: v for k, v in terms.items()}, "skipped_samples": float(skipped_samples_window)},
                dist_info.device,
            )
            skipped_now = int(round(means.pop("skipped_samples") * dist_info.world_size))
            skipped_total += skipped_now
            if skipped_now and dist_info.distributed:  # the same decision on every rank (a reduced value)
                for rank, reports in enumerate(gather_objects(window_errors)):
                    for report in reports if rank > 0 else ():
                        logger.event("bad_samples", rank=rank, **report)
                window_errors = []
            read = (step - start_step) * global_batch + skipped_total
            if read >= 1000 and skipped_total / read > config.data.max_bad_fraction:
                raise TrainingStopped(
                    f"{skipped_total} of the {read} samples read so far were unreadable "
                    f"({skipped_total / read:.1%} > data.max_bad_fraction={config.data.max_bad_fraction}); "
                    f"see the 'bad_samples' events in {logger.path}"
                )
            now = time.perf_counter()
            record = {
                "step": step,
                "samples": samples_offset + step * global_batch,
                "lr": lr,
                **means,
                "logit_scale": float(model.logit_scale.detach()),
                "logit_bias": float(model.logit_bias.detach()),
                "grad_norm": float(grad_norm) if not skipped_step else float("nan"),
                "samples_per_s": window_samples / max(now - window_start, 1e-9),
                "elapsed_s": now - started,
                "skipped_samples": skipped_now,
                "nonfinite_steps": nonfinite_steps,
            }
            final_loss = record.get("loss", float("nan"))
            history.append({k: record[k] for k in ("step", "loss") if k in record})
            logger.step(record, advance=run.log_every if step % run.log_every == 0 else step % run.log_every)
            window_start, window_samples, skipped_samples_window, window_errors = now, 0, 0, []

        info = StepInfo(step, run.steps, samples_offset + step * global_batch, time.perf_counter() - started, lr,
                        terms.get("loss", float("nan")), terms, skipped_step, model)
        wants_stop = any(bool(cb(info)) for cb in callbacks)
        over_time = run.max_seconds is not None and time.perf_counter() - started >= run.max_seconds
        if (callbacks or run.max_seconds is not None) and _stop_vote(wants_stop or over_time, dist_info) \
                and step < run.steps:
            stop_reason = "callback" if wants_stop else "max_seconds"
            logger.event("stop", step=step, reason=stop_reason)
            break
        if run.eval_every and step % run.eval_every == 0 and step < run.steps:
            evaluate(step)
        if run.save_every and step % run.save_every == 0 and step < run.steps:
            last_checkpoint = checkpoint(step)

    last_checkpoint = checkpoint(step)
    evaluate(step)
    seconds = time.perf_counter() - started
    return TrainResult(
        model=model, steps=step, seconds=seconds, samples=samples_offset + step * global_batch, log_path=logger.path,
        output_dir=output_dir, checkpoint=Path(last_checkpoint) if last_checkpoint else None,
        stop_reason=stop_reason, skipped_samples=skipped_total, nonfinite_steps=nonfinite_steps,
        final_loss=final_loss, history=history,
    )


def _grad_norm(parameters, max_norm: float) -> float:
    """Global gradient norm (clipping to ``max_norm`` when > 0)."""
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
