"""Losses under torch.distributed (gloo, CPU): per-rank losses and DDP gradients equal the global batch's.

One process group per world size; every loss variant is checked inside the same processes. Local batch
sizes differ between ranks on purpose (3, 4, 5, ... samples) so the global normalisation is exercised.
"""

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from probclip import ProbEmbedding
from probclip.losses import NonFiniteLossError, build_loss, soft_match_labels

IN_DIM, EMBED_DIM = 8, 6


class TinyDualEncoder(nn.Module):
    """Linear image and text encoders producing Gaussian embeddings, plus logit scale and bias."""

    def __init__(self):
        super().__init__()
        self.image_mean, self.image_logvar = nn.Linear(IN_DIM, EMBED_DIM), nn.Linear(IN_DIM, EMBED_DIM)
        self.text_mean, self.text_logvar = nn.Linear(IN_DIM, EMBED_DIM), nn.Linear(IN_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0))

    def forward(self, images, texts, masked_images=None, masked_texts=None):
        """Plain tensors out (``<side>_mean``, ``<side>_logvar``, ...): DDP(find_unused_parameters=True) finds
        the autograd graph only through tensors, lists, dicts and dataclasses in the output."""
        # Views, not the Parameters themselves: DDP(find_unused_parameters=True) takes a Parameter that is itself
        # an output for unused and then fails when its gradient arrives ("marked as ready twice").
        out = {"logit_scale": self.logit_scale.view(()), "logit_bias": self.logit_bias.view(())}
        for side, x, mean_layer, logvar_layer in (
            ("image", images, self.image_mean, self.image_logvar),
            ("text", texts, self.text_mean, self.text_logvar),
            ("masked_image", masked_images, self.image_mean, self.image_logvar),
            ("masked_text", masked_texts, self.text_mean, self.text_logvar),
        ):
            if x is not None:
                out[f"{side}_mean"] = F.normalize(mean_layer(x), dim=-1)
                out[f"{side}_logvar"] = logvar_layer(x) - 2.0
        return out


def _embedding(out, side):
    return ProbEmbedding(out[f"{side}_mean"], out[f"{side}_logvar"]) if f"{side}_mean" in out else None


VARIANTS = [
    # (name, loss name, constructor kwargs, with masked views, with soft match labels)
    ("prolip", "prolip", dict(inclusion_alpha=0.5, inclusion_alpha_occ=0.25, vib_beta=0.01, inclusion_eps=0,
                              inclusion_scale=10), False, False),
    ("prolip+masked", "prolip", dict(inclusion_alpha=0.5, inclusion_alpha_occ=0.25, vib_beta=0.01,
                                     inclusion_eps=0, inclusion_scale=10, text_view_weight=0.5), True, False),
    ("pcmepp", "pcmepp", dict(pseudo_positive_weight=0.1, vib_beta=0.01), False, False),
    ("pcmepp+soft", "pcmepp", dict(pseudo_positive_weight=0.1, vib_beta=0.01), False, True),
    ("siglip", "siglip", {}, False, False),
    ("clip", "clip", {}, False, False),
]


def _global_data(world_size):
    """Identical on every rank: per-rank inputs, masked inputs (first 2 samples) and mixing labels."""
    g = torch.Generator().manual_seed(99)
    sizes = [3 + r for r in range(world_size)]
    data = []
    for b in sizes:
        images, texts = torch.randn(b, IN_DIM, generator=g), torch.randn(b, IN_DIM, generator=g)
        keep = (torch.rand(2, IN_DIM, generator=g) > 0.5).float()
        lam = torch.ones(b)
        lam[0] = 0.3 + 0.4 * torch.rand((), generator=g)
        labels = soft_match_labels(lam, torch.arange(b - 1, -1, -1))
        data.append(dict(images=images, texts=texts, masked_images=images[:2] * keep, masked_texts=texts[:2] * keep,
                         labels=labels))
    return sizes, data


def _call(loss_fn, model, batch, masked, soft, masked_index=None):
    out = model(batch["images"], batch["texts"], batch["masked_images"] if masked else None,
                batch["masked_texts"] if masked else None)
    extra = {}
    if soft:
        extra["match_labels"] = batch["labels"]
    if masked_index is not None:
        extra["masked_index"] = masked_index
    return loss_fn(_embedding(out, "image"), _embedding(out, "text"), out["logit_scale"], out["logit_bias"],
                   masked_image=_embedding(out, "masked_image"), masked_text=_embedding(out, "masked_text"), **extra)


def _worker(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        sizes, data = _global_data(world_size)
        starts = [sum(sizes[:r]) for r in range(world_size)]
        full = {k: torch.cat([d[k] for d in data]) for k in ("images", "texts", "masked_images", "masked_texts")}
        full["labels"] = torch.block_diag(*[d["labels"] for d in data])
        full_masked_index = torch.cat([torch.arange(2) + s for s in starts])

        reference = TinyDualEncoder()
        model = DistributedDataParallel(copy.deepcopy(reference), find_unused_parameters=True)
        for name, loss_name, kwargs, masked, soft in VARIANTS:
            model.zero_grad(set_to_none=True)
            reference.zero_grad(set_to_none=True)
            local = _call(build_loss(loss_name, **kwargs), model, data[rank], masked, soft)
            local["loss"].backward()
            single = _call(build_loss(loss_name, gather_across_ranks=False, **kwargs), reference, full, masked, soft,
                           full_masked_index if masked else None)
            single["loss"].backward()
            for key, value in single.items():
                mean_over_ranks = local[key].detach().clone()
                dist.all_reduce(mean_over_ranks)
                mean_over_ranks /= world_size
                torch.testing.assert_close(mean_over_ranks, value.detach(), rtol=1e-5, atol=1e-7,
                                           msg=lambda m: f"{name} W={world_size} '{key}': {m}")
            for (pname, p_ddp), p_ref in zip(model.module.named_parameters(), reference.parameters()):
                if p_ref.grad is None:
                    assert p_ddp.grad is None or not p_ddp.grad.any(), (name, pname)
                    continue
                torch.testing.assert_close(p_ddp.grad, p_ref.grad, rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"{name} W={world_size} grad of {pname}: {m}")
            if loss_name == "prolip":  # per-sample terms count once: their ranks' sum is not W times the global
                assert single["vib"].item() > 0

        # A NaN on one rank: every rank raises (and none hangs in the backward's collective).
        out = model.module(data[rank]["images"], data[rank]["texts"])
        image = _embedding(out, "image")
        if rank == 0:
            image = ProbEmbedding(image.mean, image.logvar.detach().clone().fill_(float("nan")))
        with pytest.raises(NonFiniteLossError):
            build_loss("prolip")(image, _embedding(out, "text"), out["logit_scale"], out["logit_bias"])
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_losses_are_exact_across_processes(world_size):
    mp.spawn(_worker, args=(world_size, _free_port()), nprocs=world_size, join=True)
