"""A ProbCLIP wrapped in DistributedDataParallel trains with find_unused_parameters=True."""

import socket

import pytest
import torch
import torch.distributed as dist

import probclip
from probclip.losses import ProLIPLoss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_with_unused_parameter_search_sees_every_output():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = probclip.create_model("ProLIP-Tiny-Word")
        reference = probclip.create_model("ProLIP-Tiny-Word")
        reference.load_state_dict(model.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        tokenizer = probclip.get_tokenizer(model)
        images = torch.randn(4, 3, 32, 32)
        tokens = tokenizer(["a red circle", "a shape", "a square", "a blue cross"])
        loss_fn = ProLIPLoss()
        for _ in range(2):  # the second iteration fails if a parameter is marked ready twice
            model.zero_grad()
            out = ddp(images, tokens)
            loss_fn(out["image"], out["text"], out["logit_scale"], out["logit_bias"])["loss"].backward()
        ref_out = reference(images, tokens)
        loss_fn(ref_out["image"], ref_out["text"], ref_out["logit_scale"], ref_out["logit_bias"])["loss"].backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    finally:
        dist.destroy_process_group()
