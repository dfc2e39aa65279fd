"""Training-step cost of ProLIP vs SigLIP with the same towers and batch (CPU, same process, ratio of medians).

A step is what ``probclip.train`` does per batch: build the step inputs (masked views for ProLIP), forward both
towers, the loss, backward, gradient clipping, AdamW update and logit-scale clamp. Three objectives are timed,
interleaved round by round in a shuffled order so that machine load affects them alike:

- ``siglip``: the deterministic baseline (sigmoid loss on the means);
- ``prolip_no_masks``: ProLIP's loss (PPCL + inclusion + VIB) without masked views;
- ``prolip``: ProLIP as trained by default: plus masked views of 1 in 8 samples (image keeps 75% of patches,
  text has 75% of tokens masked) and the original-in-masked inclusion terms.

Run:  .venv/bin/python benchmarks/bench_train_step.py [--model ProLIP-Small-Word] [--batch 64] [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time

import torch


def _step_runner(model, loss_name: str, batch, masking_fraction: float, seed: int):
    from probclip.losses import build_loss
    from probclip.train.config import MaskingSection, OptimSection
    from probclip.train.optim import build_optimizer, clamp_logit_scale
    from probclip.train.step import ViewGeometry, build_step_inputs, forward_backward

    loss_fn = build_loss(loss_name)
    optimizer = build_optimizer(model, OptimSection(lr=1e-4))
    masking = MaskingSection(fraction=masking_fraction) if masking_fraction > 0 else None
    step_counter = [0]
    geometry = ViewGeometry(num_patches=model.visual.num_patches, mask_id=model.config.text.mask_id,
                            pad_id=model.config.text.pad_id)

    def run_step() -> float:
        start = time.perf_counter()
        inputs = build_step_inputs(batch, step=step_counter[0], seed=seed, rank=0, device=torch.device("cpu"),
                                   masking=masking, geometry=geometry)
        forward_backward(model, loss_fn, inputs)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(model)
        step_counter[0] += 1
        return time.perf_counter() - start

    return run_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ProLIP-Small-Word")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import probclip
    from probclip.data.samples import PairBatch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = probclip.create_model(args.model)
    size, context = base.visual.image_size, base.config.text.context_length
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, base.config.text.vocab_size, (args.batch, context), generator=generator)
    tokens[:, context * 2 // 3:] = base.config.text.pad_id
    batch = PairBatch(torch.randn(args.batch, 3, size, size, generator=generator), tokens)

    runners = {
        "siglip": _step_runner(copy.deepcopy(base), "siglip", batch, 0.0, 0),
        "prolip_no_masks": _step_runner(copy.deepcopy(base), "prolip", batch, 0.0, 0),
        "prolip": _step_runner(copy.deepcopy(base), "prolip", batch, 0.125, 0),
    }
    times = {name: [] for name in runners}
    order = list(runners)
    shuffler = random.Random(0)
    for round_index in range(args.warmup + args.rounds):
        shuffler.shuffle(order)  # no objective always runs first (or last) in a round
        for name in order:
            seconds = runners[name]()
            if round_index >= args.warmup:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "median_ms": {name: round(value * 1e3, 2) for name, value in medians.items()},
        "ratio_prolip_vs_siglip": round(medians["prolip"] / medians["siglip"], 4),
        "ratio_prolip_no_masks_vs_siglip": round(medians["prolip_no_masks"] / medians["siglip"], 4),
        # robust to slow load drifts: the median over rounds of the within-round ratio
        "median_round_ratio_prolip": round(statistics.median(
            p / s for p, s in zip(times["prolip"], times["siglip"])), 4),
        "median_round_ratio_prolip_no_masks": round(statistics.median(
            p / s for p, s in zip(times["prolip_no_masks"], times["siglip"])), 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
