"""Gradient averaging: DistributedDataParallel (all-reduce overlapped with the backward pass) against averaging
after the backward pass (``probclip.train.distributed.average_gradients``, the bucketed all-reduce the trainer
used before), on the same model, batch and processes.

Each round times one optimizer step of each variant, in alternating order, on every process; the reported
numbers are medians over rounds of the slowest process's step time, and their ratio.

Run (one process per GPU, or gloo processes on a CPU):
    torchrun --standalone --nproc_per_node 8 benchmarks/bench_ddp.py --model ViT-B-16-ProLIP --batch 64 --device cuda
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_ddp.py --model ProLIP-Tiny --batch 16 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.distributed as dist

import probclip
from probclip.losses import build_loss
from probclip.train.distributed import average_gradients, cleanup_distributed, init_distributed
from probclip.train.loop import wrap_model
from probclip.train.step import StepInputs, TrainingForward, forward_backward


def _inputs(model, batch: int, device: torch.device, seed: int) -> StepInputs:
    generator = torch.Generator().manual_seed(seed)
    size, length = model.visual.image_size, model.text.context_length
    images = torch.randn(batch, 3, size, size, generator=generator)
    tokens = torch.randint(3, min(model.config.text.vocab_size, 1000), (batch, length), generator=generator)
    return StepInputs(images.to(device), tokens.to(device))


def _timed_step(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ProLIP-Tiny")
    parser.add_argument("--batch", type=int, default=16, help="samples per process")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    info = init_distributed(args.device)
    if not info.distributed:
        raise SystemExit("run under torchrun with --nproc_per_node >= 2")
    torch.manual_seed(0)
    model = probclip.create_model(args.model).to(info.device)
    ddp_model, plain_model = model, copy.deepcopy(model)
    ddp = wrap_model(ddp_model, info)
    plain = TrainingForward(plain_model)
    loss_fn = build_loss("prolip")
    inputs = _inputs(model, args.batch, info.device, seed=info.rank)
    trainable = [p for p in plain_model.parameters() if p.requires_grad]

    def ddp_step():
        ddp_model.zero_grad(set_to_none=True)
        forward_backward(ddp, loss_fn, inputs)

    def after_backward_step():
        plain_model.zero_grad(set_to_none=True)
        forward_backward(plain, loss_fn, inputs)
        average_gradients(trainable, info.world_size)

    times: dict[str, list[float]] = {"ddp": [], "after_backward": []}
    for _ in range(2):  # warm-up (allocations, DDP bucket rebuild)
        ddp_step()
        after_backward_step()
    for r in range(args.rounds):
        order = [("ddp", ddp_step), ("after_backward", after_backward_step)]
        for name, step in order if r % 2 == 0 else order[::-1]:
            times[name].append(_timed_step(step, info.device))
    if info.is_main:
        medians = {k: statistics.median(v) for k, v in times.items()}
        grad_mb = sum(p.numel() for p in trainable) * 4 / 2**20
        print(json.dumps({
            "model": args.model, "processes": info.world_size, "batch_per_process": args.batch,
            "device": str(info.device), "fp32_gradient_mib": round(grad_mb, 1),
            "median_step_s": {k: round(v, 4) for k, v in medians.items()},
            "after_backward_over_ddp": round(medians["after_backward"] / medians["ddp"], 3),
        }, indent=2))
    cleanup_distributed()


if __name__ == "__main__":
    main()
