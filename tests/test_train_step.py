"""One training step's inputs: masked views with the configured ratios, independent of the number of processes;
PCME++ mixed samples; device and precision choices of the loop."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from probclip.data.samples import PairBatch
from probclip.train.config import LossSection, MaskingSection
from probclip.train.precision import autocast_factory, uses_grad_scaler
from probclip.train.step import ViewGeometry, build_step_inputs

CPU = torch.device("cpu")
PATCHES, MASK_ID, PAD_ID, TEXT_LENGTH = 16, 2, 0, 30


def _batch(size: int = 16) -> PairBatch:
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(5, 60, (size, 40), generator=generator)
    tokens[:, TEXT_LENGTH:] = PAD_ID
    return PairBatch(torch.randn(size, 3, 8, 8, generator=generator), tokens)


def _inputs(batch: PairBatch, rank: int = 0, step: int = 3, masking=None, mixing=None):
    return build_step_inputs(batch, step=step, seed=11, rank=rank, device=CPU, masking=masking, mixing=mixing,
                             geometry=ViewGeometry(num_patches=PATCHES, mask_id=MASK_ID, pad_id=PAD_ID))


def test_masked_views_follow_the_configured_ratios():
    batch = _batch(64)
    inputs = _inputs(batch, masking=MaskingSection())  # 1 in 8 samples, keep 75% of patches, mask 75% of tokens
    assert inputs.masked_index.tolist() == list(range(0, 64, 8))
    assert inputs.keep_patches.shape == (8, 12)  # round(0.75 * 16) patch indices kept per view
    for row in inputs.keep_patches.tolist():
        assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < PATCHES
    originals = batch.tokens[inputs.masked_index]
    masked = inputs.masked_tokens
    assert torch.equal(masked[:, TEXT_LENGTH:], originals[:, TEXT_LENGTH:])  # padding untouched
    changed = masked != originals
    assert torch.all(masked[changed] == MASK_ID)
    rate = (masked[:, :TEXT_LENGTH] == MASK_ID).float().mean().item()
    assert 0.65 < rate < 0.85, rate  # 240 tokens at p = 0.75
    assert torch.equal(inputs.images, batch.images) and torch.equal(inputs.tokens, batch.tokens)

    kept_half = _inputs(batch, masking=MaskingSection(image_keep_ratio=0.25, text_mask_prob=0.0))
    assert kept_half.keep_patches.shape == (8, 4) and kept_half.masked_tokens is None
    assert _inputs(batch, masking=MaskingSection(fraction=0.0)).masked_index is None


def test_masked_views_do_not_depend_on_the_number_of_processes():
    batch, masking = _batch(16), MaskingSection()
    whole = _inputs(batch, masking=masking)
    ranks = [_inputs(PairBatch(batch.images[r * 8:(r + 1) * 8], batch.tokens[r * 8:(r + 1) * 8]), rank=r,
                     masking=masking) for r in range(2)]
    assert whole.masked_index.tolist() == [0, 8]
    assert [r.masked_index.tolist() for r in ranks] == [[0], [0]]
    assert torch.equal(whole.keep_patches, torch.cat([r.keep_patches for r in ranks]))
    assert torch.equal(whole.masked_tokens, torch.cat([r.masked_tokens for r in ranks]))
    again = _inputs(batch, masking=masking)
    assert torch.equal(again.keep_patches, whole.keep_patches)  # seeded by (seed, step, index)
    other_step = _inputs(batch, step=4, masking=masking)
    assert not torch.equal(other_step.masked_tokens, whole.masked_tokens)


def test_pcmepp_mixes_a_quarter_of_the_batch_with_soft_labels():
    batch = _batch(16)
    inputs = _inputs(batch, mixing=LossSection(name="pcmepp"))
    labels = inputs.match_labels
    assert labels.shape == (16, 16) and torch.allclose(labels.sum(dim=1), torch.ones(16))
    mixed_rows = [i for i in range(16) if labels[i, i] < 1]
    assert mixed_rows == [0, 1, 2, 3]  # round(0.25 * 16), each mixed with the mirrored image 15 - i
    for i in mixed_rows:
        assert labels[i, 15 - i] == pytest.approx(1 - labels[i, i].item())
        assert not torch.equal(inputs.images[i], batch.images[i])
    assert torch.equal(labels[4:], torch.eye(16)[4:])
    assert torch.equal(inputs.images[4:], batch.images[4:])
    assert _inputs(batch, mixing=LossSection(name="pcmepp", mix_fraction=0.0)).match_labels is None


def test_precision_autocast_on_cuda_only_and_a_scaler_for_fp16():
    for precision in ("fp32", "bf16", "fp16"):
        assert autocast_factory(CPU, precision) is contextlib.nullcontext  # CPU runs compute in fp32
        assert not uses_grad_scaler(CPU, precision)
    cuda = torch.device("cuda", 0)
    assert autocast_factory(cuda, "fp32") is contextlib.nullcontext
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # building a CUDA autocast context warns on a machine without CUDA
        assert autocast_factory(cuda, "bf16")().fast_dtype == torch.bfloat16
        assert autocast_factory(cuda, "fp16")().fast_dtype == torch.float16
    assert uses_grad_scaler(cuda, "fp16") and not uses_grad_scaler(cuda, "bf16")
