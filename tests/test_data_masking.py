"""Masked views (explicit keep/mask ratios) and PCME++ mixed samples."""

from __future__ import annotations

import pytest
import torch

from probclip.data import (
    mask_text_tokens,
    mix_images,
    num_kept_patches,
    num_masked,
    sample_keep_patches,
)
from probclip.train.step import masked_selection


def test_num_masked_rounds_and_bounds():
    assert num_masked(64, 0.125) == 8
    assert num_masked(3, 0.125) == 1  # at least one when masking is on
    assert num_masked(10, 0.0) == 0
    with pytest.raises(ValueError, match="fraction"):
        num_masked(10, 1.5)


def test_keep_ratio_counts_kept_patches():
    assert num_kept_patches(196, 0.75) == 147
    generator = torch.Generator().manual_seed(0)
    keep = sample_keep_patches(5, 16, 0.25, generator)
    assert keep.shape == (5, 4)
    for row in keep:
        assert len(set(row.tolist())) == 4 and row.min() >= 0 and row.max() < 16
        assert row.tolist() == sorted(row.tolist())
    with pytest.raises(ValueError, match="kept"):
        num_kept_patches(16, 0.0)


def test_text_masking_replaces_only_non_padding_at_the_given_rate():
    tokens = torch.full((200, 40), 0)
    tokens[:, :30] = torch.randint(5, 50, (200, 30))
    masked = mask_text_tokens(tokens, 0.75, mask_id=3, pad_id=0, generator=torch.Generator().manual_seed(1))
    replaced = masked == 3
    assert not replaced[:, 30:].any()  # padding untouched
    rate = replaced[:, :30].float().mean().item()
    assert abs(rate - 0.75) < 0.02
    assert torch.equal(masked[~replaced], tokens[~replaced])
    with pytest.raises(ValueError, match="mask token"):
        mask_text_tokens(tokens, 0.5, mask_id=None, pad_id=0)


def test_text_masking_drop_mode_removes_tokens_and_keeps_the_order():
    tokens = torch.zeros((300, 24), dtype=torch.long)
    lengths = torch.randint(1, 20, (300,))
    for row, length in zip(tokens, lengths):
        row[:length] = torch.randint(5, 50, (int(length),))
    dropped = mask_text_tokens(tokens, 0.5, mask_id=None, pad_id=0, generator=torch.Generator().manual_seed(2),
                               mode="drop")
    kept_total = 0
    for original, view, length in zip(tokens, dropped, lengths):
        content = view[view != 0].tolist()
        kept_total += len(content)
        assert view[len(content):].eq(0).all()  # padding only after the kept tokens
        it = iter(original[:length].tolist())
        assert all(tok in it for tok in content)  # a subsequence of the original, in order
    rate = 1 - kept_total / lengths.sum().item()
    assert abs(rate - 0.5) < 0.04
    all_dropped = mask_text_tokens(tokens, 1.0, mask_id=None, pad_id=0, mode="drop")
    assert all_dropped.eq(0).all()
    with pytest.raises(ValueError, match="replace.*drop"):
        mask_text_tokens(tokens, 0.5, mask_id=3, pad_id=0, mode="shuffle")


def test_masked_selection_is_one_in_eight_and_independent_of_the_split():
    whole = masked_selection(0, 64, 0.125)
    assert whole == list(range(0, 64, 8))
    halves = masked_selection(0, 32, 0.125) + [32 + i for i in masked_selection(32, 32, 0.125)]
    assert halves == whole
    assert masked_selection(0, 10, 0.0) == []


def test_mixing_mirrors_a_quarter_with_exact_cutmix_area():
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(8)])
    generator = torch.Generator().manual_seed(0)
    mixed, lam, partner = mix_images(images, 0.25, 2.0, cutmix_prob=1.0, generator=generator)
    assert partner.tolist() == [7, 6, 2, 3, 4, 5, 6, 7][:2] + list(range(2, 8))
    assert torch.equal(mixed[2:], images[2:]) and lam[2:].eq(1).all()
    for i in range(2):
        j = 7 - i
        own_share = (mixed[i, 0] == float(i)).float().mean().item()
        assert own_share == pytest.approx(lam[i].item())
        assert set(mixed[i].unique().tolist()) <= {float(i), float(j)}
    mixed_up, lam_up, _ = mix_images(images, 0.25, 2.0, cutmix_prob=0.0, generator=torch.Generator().manual_seed(0))
    expected = lam_up[0] * 0 + (1 - lam_up[0]) * 7
    assert torch.allclose(mixed_up[0], torch.full((3, 8, 8), expected.item()))
    assert 0 < lam_up[0] < 1


def test_grey_masking_paints_exactly_the_patches_not_kept():
    from probclip.data.masking import paint_masked_patches

    images = torch.randn(2, 3, 8, 12)  # a 2 x 3 grid of 4-pixel patches
    keep = torch.tensor([[0, 4], [1, 5]])
    fill = torch.tensor([0.1, 0.2, 0.3])
    painted = paint_masked_patches(images, keep, 4, fill)
    for n in range(2):
        for patch in range(6):
            r, c = divmod(patch, 3)
            block = painted[n, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
            if patch in keep[n].tolist():
                assert torch.equal(block, images[n, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])
            else:
                assert torch.equal(block, fill[:, None, None].expand_as(block))
    assert not torch.equal(painted, images) and images.abs().sum() > 0  # the input is left as it was


def test_step_inputs_with_grey_image_masking_keep_every_token():
    from probclip.data import PairBatch
    from probclip.train.config import MaskingSection
    from probclip.train.step import ViewGeometry, build_step_inputs

    images, tokens = torch.randn(16, 3, 32, 32), torch.randint(3, 20, (16, 6))
    batch = PairBatch(images=images, tokens=tokens)
    masking = MaskingSection(fraction=0.125, image_keep_ratio=0.75, text_mask_prob=0.5, image_mask_mode="grey")
    grey = torch.tensor([0.0, 0.5, -0.5])
    inputs = build_step_inputs(batch, step=0, seed=0, rank=0, device=torch.device("cpu"), masking=masking,
                               geometry=ViewGeometry(num_patches=16, patch_size=8, grey=grey, mask_id=2, pad_id=0))
    assert inputs.keep_patches is None and inputs.masked_images.shape == (2, 3, 32, 32)
    for view, index in zip(inputs.masked_images, inputs.masked_index.tolist()):
        patches = view.unfold(1, 8, 8).unfold(2, 8, 8).reshape(3, 16, 64)
        original = images[index].unfold(1, 8, 8).unfold(2, 8, 8).reshape(3, 16, 64)
        is_grey = torch.tensor([torch.equal(patches[:, p], grey[:, None].expand(3, 64)) for p in range(16)])
        assert int(is_grey.sum()) == 4  # 12 of 16 patches kept
        assert torch.equal(patches[:, ~is_grey], original[:, ~is_grey])
    with pytest.raises(ValueError, match="grey"):
        build_step_inputs(batch, step=0, seed=0, rank=0, device=torch.device("cpu"), masking=masking,
                          geometry=ViewGeometry(num_patches=16, mask_id=2, pad_id=0))
