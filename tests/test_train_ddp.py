"""Training steps under DistributedDataParallel (gloo, CPU, 2 processes): the gradients of a ``TrainingForward``
in DDP, with masked views, exact accumulation (``no_sync``), a skipped step and a loss on the means alone, equal
the gradients of the global batch in one process."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import probclip
from probclip.losses import build_loss
from probclip.train.distributed import DistInfo
from probclip.train.loop import wrap_model
from probclip.train.step import StepInputs, TrainingForward, forward_backward

WORLD, LOCAL = 2, 4


def _global_inputs() -> StepInputs:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * LOCAL, 3, 32, 32, generator=generator, dtype=torch.float64)
    tokens = torch.randint(3, 70, (WORLD * LOCAL, 16), generator=generator)
    tokens[:, 10:] = 0
    masked_index = torch.tensor([0, 2, 4, 7])  # two masked views per rank
    keep = torch.stack([torch.randperm(16, generator=generator)[:6] for _ in range(4)])
    masked_tokens = torch.where(torch.rand(4, 16, generator=generator) < 0.7, torch.tensor(2), tokens[masked_index])
    return StepInputs(images, tokens, masked_index=masked_index, keep_patches=keep, masked_tokens=masked_tokens)


def _local_inputs(full: StepInputs, rank: int) -> StepInputs:
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    views = (full.masked_index >= rank * LOCAL) & (full.masked_index < (rank + 1) * LOCAL)
    return StepInputs(full.images[rows], full.tokens[rows], masked_index=full.masked_index[views] - rank * LOCAL,
                      keep_patches=full.keep_patches[views], masked_tokens=full.masked_tokens[views])


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        reference = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1}).double()
        model = copy.deepcopy(reference)
        ddp = wrap_model(model, DistInfo(rank, WORLD))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        full, local = _global_inputs(), _local_inputs(_global_inputs(), rank)

        reference.zero_grad(set_to_none=True)
        forward_backward(reference, build_loss("prolip", gather_across_ranks=False), full)
        expected = _grads(reference)
        assert len(expected) == len(list(reference.parameters()))
        for accum in (1, 2):
            model.zero_grad(set_to_none=True)
            forward_backward(ddp, build_loss("prolip"), local, accum_freq=accum)
            got = _grads(model)
            assert set(got) == set(expected), accum
            for name, grad in got.items():
                torch.testing.assert_close(grad, expected[name], rtol=1e-9, atol=1e-12,
                                           msg=lambda m: f"accum {accum}, {name}: {m}")

        # A step skipped before its backward pass (non-finite loss) leaves DDP ready for the next one.
        model.zero_grad(set_to_none=True)
        ddp(local.images, local.tokens, local)
        forward_backward(ddp, build_loss("prolip"), local)
        for name, grad in _grads(model).items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-9, atol=1e-12, msg=name)

        # A loss on the means alone: the log-variance heads are frozen, every other parameter gets its gradient.
        siglip_model = copy.deepcopy(reference)
        siglip_model.lock_logvar_heads()
        siglip_ddp = wrap_model(siglip_model, DistInfo(rank, WORLD))
        for _ in range(2):
            siglip_model.zero_grad(set_to_none=True)
            forward_backward(siglip_ddp, build_loss("siglip"), local)
        assert set(_grads(siglip_model)) == {n for n, p in siglip_model.named_parameters() if p.requires_grad}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_steps_match_the_global_batch():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_a_single_process_is_not_wrapped():
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    forward = wrap_model(model, DistInfo())
    assert isinstance(forward, TrainingForward) and forward.model is model
