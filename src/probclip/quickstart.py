"""``probclip quickstart``: train a tiny ProLIP and a SigLIP baseline on the synthetic world, evaluate, report.

Steps: (1) build the held-out test material of the synthetic world; (2) train a tiny ProLIP (ProLIP loss: PPCL,
inclusion, masked-view inclusion, VIB) with ``probclip.train.train``; (3) train the same architecture with the
SigLIP loss for the same number of steps; (4) evaluate both on the ``test`` split with exact positives; (5) write
``OUT/metrics.json``, ``OUT/report.html`` (+ ``OUT/plots/*.png``), ``OUT/model/`` (the ProLIP model, loadable
by ``probclip.create_model_from_pretrained``) and ``OUT/timings.json`` (measured wall-clock).

The budget is step-based so that a run is reproducible: ``--minutes M`` becomes a fixed number of steps per model,
``steps = floor((60 M - OVERHEAD_SECONDS) / ASSUMED_STEP_SECONDS)`` (the assumed seconds of one ProLIP step plus one
SigLIP step), whatever the machine's speed. In ``metrics.json``, ``train.seconds`` is this budgeted training time
(steps x the model's assumed step seconds), so two runs
with the same seed write the same file; the measured times go to ``timings.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .cli import run_command
from .errors import UsageError
from .eval.hierarchy import flat_hierarchy_metrics
from .hierarchy_head import HEAD_FILE
from .jsonsafe import json_safe
from .synthetic import build_evaluation_set, evaluate_synthetic, world_vocabulary
from .synthetic.hierarchy import synthetic_hierarchy_metrics, synthetic_training_fits
from .synthetic.report import write_report
from .tokenizers import get_tokenizer, word_tokenizer_config
from .train import train
from .train.config import TrainConfig
from .transforms import image_transform

__all__ = [
    "ASSUMED_STEP_SECONDS",
    "OVERHEAD_SECONDS",
    "DEFAULT_MINUTES",
    "steps_for_budget",
    "quickstart_config",
    "run_quickstart",
    "main",
]

#: Seconds one training step is assumed to take, per model (batch 128, one training thread and two data workers on a
#: 2-core machine; the ProLIP step encodes its masked views too). Measured on an idle 2-core machine: 0.122 s and
#: 0.068 s; the assumed values leave about 7% of margin.
ASSUMED_PROLIP_STEP_SECONDS = 0.13
ASSUMED_SIGLIP_STEP_SECONDS = 0.075
#: Assumed seconds of one step, by objective.
ASSUMED_STEP_SECONDS_BY_OBJECTIVE = {"prolip": ASSUMED_PROLIP_STEP_SECONDS, "siglip": ASSUMED_SIGLIP_STEP_SECONDS}
#: Seconds of one step of both models together.
ASSUMED_STEP_SECONDS = sum(ASSUMED_STEP_SECONDS_BY_OBJECTIVE.values())
#: Seconds set aside for data, evaluation of both models and the report.
OVERHEAD_SECONDS = 60.0
DEFAULT_MINUTES = 8.0
#: A note is printed when a model's measured step time exceeds the assumed one by this factor.
SLOW_MACHINE_FACTOR = 1.25
BATCH_SIZE = 128
#: Share of the training images per degradation level 0..4: all clean. Degraded test images are never seen in
#: training; the masked image views (grey patches) are what teaches the model that hidden content is uncertain.
TRAIN_DEGRADATION_PROBS = (1.0, 0.0, 0.0, 0.0, 0.0)
#: Degradation of the test images whose uncertainty is measured (levels 0..4: a grey square of growing side).
EVAL_DEGRADATION_KIND = "occlusion"
#: Caption levels listed per training image (one is drawn per step): levels 2-5 twice as often as 0-1.
TRAIN_CAPTION_LEVELS = (0, 1, 2, 3, 4, 5, 2, 3, 4, 5)
#: Masked views for the inclusion losses: half of each batch gets an image view with half of its patches painted
#: grey and a phrase view of its caption: whole phrases dropped, a strictly more general caption ("a red circle"
#: from "a small red circle at the top left"; the synthetic world's ``phrase_view``). Dropping single words
#: (``"drop"``, near the published recipe's masked tokens) made captions like "a red at the", and every hierarchy
#: number lower on three seeds (docs/quickstart.md). ``text_mask_prob`` drops words of a caption that has no
#: phrase view. The views are the world's (``phrase_views: synthetic``) whichever source reads its captions, so the
#: recipe also trains on the world written as webdataset shards (the curation demo's subsets).
MASKING = {"fraction": 0.5, "image_keep_ratio": 0.5, "image_mask_mode": "grey",
           "text_mask_prob": 0.5, "text_mask_mode": "phrase", "phrase_views": "synthetic"}
#: ProLIP loss: the image-in-text inclusion term weighs 1.0 (released: 1e-7, effectively off), the text
#: original-in-masked one 1.0, the image one 0.01, all with a smooth sigmoid (scale 10) at the released training's eps
#: (-20, where only the variances enter the test); a PPCL term (weight 1.0) matches each caption with its masked view
#: (a more general caption). See docs/quickstart.md, "The recipe and the choices".
PROLIP_LOSS = {"inclusion_alpha": 1.0, "inclusion_alpha_occ": 0.01, "inclusion_alpha_occ_text": 1.0,
               "inclusion_scale": 10.0, "text_view_weight": 1.0}


def steps_for_budget(minutes: float) -> int:
    """Training steps per model for a total budget of ``minutes`` (both models, evaluation and report included)."""
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not 0 < minutes < math.inf:
        raise UsageError(f"--minutes must be a finite number > 0; got {minutes!r}")
    return max(1, math.floor((60.0 * minutes - OVERHEAD_SECONDS) / ASSUMED_STEP_SECONDS))


def _model_overrides() -> dict:
    text = dict(word_tokenizer_config(world_vocabulary()), context_length=20, init_unc_bias=-4.0)
    return {"text": text, "vision": {"init_unc_bias": -4.0}}


def quickstart_config(objective: str, steps: int, seed: int, output_dir: str | Path, threads: int = 1):
    """The ``TrainConfig`` of one quickstart model: ``objective`` is ``prolip`` or ``siglip``."""
    return TrainConfig.from_dict({
        "model": {"name": "ProLIP-Tiny-Word", "overrides": _model_overrides()},
        "data": {
            "source": "synthetic", "batch_size": BATCH_SIZE, "num_workers": 2,
            "synthetic": {"size": 1_000_000, "degradation_probs": list(TRAIN_DEGRADATION_PROBS),
                          "levels": list(TRAIN_CAPTION_LEVELS)},
        },
        "loss": {"name": objective, "kwargs": dict(PROLIP_LOSS) if objective == "prolip" else {}},
        "masking": dict(MASKING),
        "optim": {"lr": 1e-3, "warmup_steps": max(1, steps // 10), "weight_decay": 0.05},
        "run": {
            "steps": steps, "output_dir": str(output_dir), "device": "cpu", "precision": "fp32", "seed": seed,
            "log_every": max(1, min(50, steps // 10)), "progress": "plain", "save_every": 0, "keep_last": 1,
            "tensorboard": False, "cpu_threads": threads, "overwrite": True,  # a re-run replaces the demo's runs
        },
    })


def _nest(flat: dict) -> dict:
    """``{"a.b": x}`` -> ``{"a": {"b": x}}``, numbers rounded to 6 decimals, undefined ones (NaN) as None."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = float(value)
        node[leaf] = round(value, 6) if math.isfinite(value) else value
    return json_safe(out)  # undefined values (e.g. the correlation of a constant accuracy): null


def _say(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def _warn_if_slow(objective: str, seconds: float, steps: int) -> None:
    """Say so when this machine's steps took much longer than the budget assumes (the run then takes longer than
    ``--minutes``; its results do not change)."""
    if steps < 20:  # too few steps to say
        return
    assumed, measured = ASSUMED_STEP_SECONDS_BY_OBJECTIVE[objective], seconds / steps
    if measured > SLOW_MACHINE_FACTOR * assumed:
        _say(f"note: {objective} steps took {measured:.3f} s here, {measured / assumed:.1f}x the {assumed:.3f} s the "
             "budget assumes (a slower or busy CPU); the run takes longer than --minutes, with the same results")


def _train_summary(objective: str, result) -> dict:
    """``train`` of metrics.json: the budgeted seconds (steps x assumed step seconds), samples and steps."""
    return {"seconds": round(result.steps * ASSUMED_STEP_SECONDS_BY_OBJECTIVE[objective], 6),
            "samples": result.samples, "steps": result.steps}


def run_quickstart(out_dir: str | Path, steps: int, seed: int = 0, threads: int = 1) -> dict:
    """Run the whole quickstart into ``out_dir`` with ``steps`` training steps per model; returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(threads)
    _say(f"building the held-out test set of the synthetic world (seed {seed})")
    eval_set = build_evaluation_set(seed, degradation_kind=EVAL_DEGRADATION_KIND)
    timings, results = {}, {}
    for objective in ("prolip", "siglip"):
        _say(f"training {objective} for {steps} steps of {BATCH_SIZE} pairs")
        config = quickstart_config(objective, steps, seed, out / "runs" / objective, threads)
        result = train(config)
        timings[f"{objective}.train_seconds"] = result.seconds
        _warn_if_slow(objective, result.seconds, result.steps)
        model = result.model.eval()
        _say(f"evaluating {objective} on {len(eval_set.scenes)} test images and {len(eval_set.captions)} captions")
        metrics, details = evaluate_synthetic(model, eval_set, get_tokenizer(model),
                                              image_transform(model.config.vision),
                                              probabilistic=objective == "prolip")
        tokenizer = get_tokenizer(model)
        with torch.no_grad():
            empty = model.encode_text(tokenizer([""]))
        calibration = head = None
        if objective == "prolip":
            _say("fitting the match calibration and the hierarchy head on the training split")
            fit_started = time.perf_counter()
            calibration, head, _ = synthetic_training_fits(model, tokenizer, image_transform(model.config.vision), seed)
            timings["prolip.fit_seconds"] = time.perf_counter() - fit_started
        details["hierarchy"] = synthetic_hierarchy_metrics(details["embeddings"], eval_set, empty,
                                                           probabilistic=objective == "prolip", model=model,
                                                           calibration=calibration, head=head)
        metrics.update(flat_hierarchy_metrics(details["hierarchy"]))
        results[objective] = (model, metrics, details, result, head)
    prolip_model, prolip_metrics, prolip_details, prolip_result, prolip_head = results["prolip"]
    _, baseline_metrics, baseline_details, baseline_result, _ = results["siglip"]
    metrics = _nest(prolip_metrics)
    metrics["train"] = _train_summary("prolip", prolip_result)
    metrics["baseline"] = _nest(baseline_metrics)
    metrics["baseline"]["train"] = _train_summary("siglip", baseline_result)
    metrics["config"] = {"seed": seed, "steps_per_model": steps, "batch_size": BATCH_SIZE,
                         "model": "ProLIP-Tiny-Word",
                         "assumed_step_seconds": dict(ASSUMED_STEP_SECONDS_BY_OBJECTIVE),
                         "degradation_kind": EVAL_DEGRADATION_KIND}
    (out / "metrics.json").write_text(
        json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    prolip_model.save_pretrained(out / "model")
    prolip_head.to_file(out / "model" / HEAD_FILE)  # the search ranks "more general / more specific" by it
    report = write_report(out, metrics, eval_set, prolip_details, baseline_details)
    timings["total_seconds"] = time.perf_counter() - started
    (out / "timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _say(f"done in {timings['total_seconds']:.0f} s; metrics: {out / 'metrics.json'}")
    _say(f"report: {report.resolve()}")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``probclip quickstart``."""
    parser = argparse.ArgumentParser(
        prog="probclip quickstart",
        description="Train a tiny ProLIP and a SigLIP baseline on the synthetic world (CPU), evaluate both on "
                    "held-out scenes with exact truth, and write metrics.json, report.html and model/.",
    )
    parser.add_argument("--out", default="probclip-quickstart", help="output directory (default probclip-quickstart)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help=f"total budget in minutes, turned into a fixed number of steps (default {DEFAULT_MINUTES:g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the models and the data order")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per model (overrides --minutes; for short experiments and tests)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: faster than 2 on a small, busy CPU)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probclip quickstart``; returns the exit status (errors: one line on stderr)."""
    return run_command("quickstart", _quickstart_command, sys.argv[1:] if argv is None else list(argv))


def _quickstart_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1; got {args.steps}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0; got {args.seed}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1; got {args.threads}")
    steps = args.steps if args.steps is not None else steps_for_budget(args.minutes)
    run_quickstart(args.out, steps, args.seed, args.threads)
    return 0
