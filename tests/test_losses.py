"""Losses: reference fixtures, formulas against direct dense evaluations, gradients, errors, registry."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from probclip import ProbEmbedding, csd, inclusion_score_paired
from probclip.losses import (
    CLIPLoss,
    NonFiniteLossError,
    PCMEppLoss,
    ProLIPLoss,
    SigLIPLoss,
    build_loss,
    soft_match_labels,
)
from probclip.losses import pairwise as pairwise_module
from probclip.losses import prolip as prolip_module
from probclip.losses.pairwise import pairwise_sigmoid_bce
from probclip.losses.prolip import inclusion_loss_terms, inclusion_margin


def _emb(prefix, tensors):
    return ProbEmbedding(tensors[f"{prefix}_mean"], tensors[f"{prefix}_logvar"])


def _random_batch(b=7, d=5, dtype=torch.float64, lv_range=(-3.0, 0.0), requires_grad=False):
    g = torch.Generator().manual_seed(1234)

    def one():
        mean = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
        lo, hi = lv_range
        logvar = lo + (hi - lo) * torch.rand(b, d, generator=g, dtype=dtype)
        return mean.requires_grad_(requires_grad), logvar.requires_grad_(requires_grad)

    return one(), one()


# ----------------------------------------------------------------------------- reference fixtures


@pytest.mark.parametrize("name", ["default_like", "eps0_scale10"])
def test_prolip_loss_reproduces_reference_on_fixed_features(official_dir, name):
    tensors = load_file(official_dir / "loss-inputs.safetensors")
    expected = json.loads((official_dir / f"loss-{name}.json").read_text())
    kw = expected["kwargs"]
    loss_fn = ProLIPLoss(
        inclusion_alpha=kw["inclusion_alpha"],
        inclusion_alpha_occ=kw["inclusion_alpha_occ"],
        vib_beta=kw["vib_beta"],
        inclusion_eps=kw["inclusion_loss_eps"],
        inclusion_scale=kw["inclusion_loss_scale"],
    )
    out = loss_fn(
        _emb("image", tensors),
        _emb("text", tensors),
        tensors["logit_scale_exp"].log(),
        tensors["logit_bias"],
        masked_image=_emb("masked_image", tensors),
        masked_text=_emb("masked_text", tensors),
    )
    for key, value in expected["loss"].items():
        assert out[key].item() == pytest.approx(value, rel=1e-5), key
    components = ["ppcl", "inclusion", "img_inclusion", "txt_inclusion", "vib"]
    assert out["loss"].item() == pytest.approx(sum(expected["loss"][k] for k in components), rel=1e-5)


def test_prolip_loss_reproduces_reference_on_tiny_checkpoint_outputs(official_dir):
    tensors = load_file(official_dir / "tiny-official-io.safetensors")
    expected = json.loads((official_dir / "tiny-official-loss.json").read_text())
    loss_fn = ProLIPLoss(inclusion_alpha=1.0, inclusion_alpha_occ=0.0, vib_beta=1e-3, inclusion_eps=-10,
                         inclusion_scale=1000)
    out = loss_fn(_emb("image", tensors), _emb("text", tensors), tensors["logit_scale_exp"].log(),
                  tensors["logit_bias"])
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-5), key
    assert out["img_inclusion"].item() == 0.0 and out["txt_inclusion"].item() == 0.0


# ----------------------------------------------------------------------------- formulas vs dense evaluations


def _dense_ppcl(mi, li, mt, lt, log_scale, bias):
    """PPCL written literally: B x B logits with broadcast uncertainty sums and +-1 labels."""
    s = log_scale.exp()
    u_i, u_t = li.exp().sum(-1), lt.exp().sum(-1)
    logits = s * (mi @ mt.T - (u_i[:, None] + u_t[None, :]) / 2) + bias
    labels = 2 * torch.eye(len(mi), dtype=mi.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(mi)


@pytest.mark.parametrize("log_scale,bias", [(2.3, -10.0), (4.6, 30.0), (0.0, 0.0)])
def test_ppcl_value_and_gradients_match_dense_formula(log_scale, bias):
    (mi, li), (mt, lt) = _random_batch(requires_grad=True)
    s1 = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    b1 = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    loss_fn = ProLIPLoss(inclusion_alpha=0, inclusion_alpha_occ=0, vib_beta=0)
    got = loss_fn(ProbEmbedding(mi, li), ProbEmbedding(mt, lt), s1, b1)
    got_grads = torch.autograd.grad(got["loss"], [mi, li, mt, lt, s1, b1])
    want = _dense_ppcl(mi, li, mt, lt, s1, b1)
    want_grads = torch.autograd.grad(want, [mi, li, mt, lt, s1, b1])
    torch.testing.assert_close(got["ppcl"], want, rtol=1e-9, atol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_ppcl_is_stable_for_very_confident_logits():
    # Orthogonal unit means, scale 100, bias -50: positive logits +50, negative logits -50. Each pair's loss
    # is ~2e-22: it must come out as such (no 0 - 0, no inf), like the literal log-sigmoid formula.
    b = 4
    mean = torch.eye(b, dtype=torch.float64)
    logvar = torch.full((b, b), -60.0, dtype=torch.float64)
    log_scale = torch.tensor(100.0, dtype=torch.float64).log()
    out = ProLIPLoss(inclusion_alpha=0, inclusion_alpha_occ=0, vib_beta=0)(
        ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar), log_scale, -50.0
    )
    want = _dense_ppcl(mean, logvar, mean, logvar, log_scale, -50.0)
    assert 0 < want.item() < 1e-20
    assert out["ppcl"].item() == pytest.approx(want.item(), rel=1e-9)


@pytest.mark.parametrize("soft", [False, True])
def test_pairwise_sigmoid_bce_matches_dense_bce_in_chunks(monkeypatch, soft):
    monkeypatch.setattr(pairwise_module, "CHUNK_ELEMENTS", 9)  # forces chunks of 1 row over 9 columns
    g = torch.Generator().manual_seed(5)
    left = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    right = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True) * 4
    offset = 3
    block = torch.rand(4, 4, generator=g, dtype=torch.float64) if soft else None
    got = pairwise_sigmoid_bce(left, right, block, offset)
    dense_targets = torch.zeros(4, 9, dtype=torch.float64)
    dense_targets[:, offset : offset + 4] = block if soft else torch.eye(4, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(left @ right.T, dense_targets, reduction="sum")
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(torch.autograd.grad(got, [left, right]), torch.autograd.grad(want, [left, right])):
        torch.testing.assert_close(g_got, g_want)


def _per_dim_margin(a, b, eps):
    """test(a in b) - test(b in a) per dimension, from the public inclusion test on one dimension at a time."""
    cols = []
    for d in range(a.dim):
        ad, bd = (
            ProbEmbedding(a.mean[:, d : d + 1], a.logvar[:, d : d + 1]),
            ProbEmbedding(b.mean[:, d : d + 1], b.logvar[:, d : d + 1]),
        )
        cols.append(inclusion_score_paired(ad, bd, eps=eps) - inclusion_score_paired(bd, ad, eps=eps))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("eps", [0.0, -1.5, -20.0])
def test_inclusion_margin_agrees_with_the_inclusion_test(eps):
    (mi, li), (mt, lt) = _random_batch(lv_range=(-3.0, 1.0))
    a, b = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    torch.testing.assert_close(inclusion_margin(a, b, eps), _per_dim_margin(a, b, eps), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eps,scale", [(0.0, 10.0), (-3.0, 2.0), (-20.0, 1000.0)])
def test_inclusion_loss_analytic_gradient(monkeypatch, eps, scale):
    monkeypatch.setattr(prolip_module, "PER_SAMPLE_CHUNK_ELEMENTS", 6)  # two rows per chunk
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]

    def loss(mu1, lv1, mu2, lv2):
        return inclusion_loss_terms(ProbEmbedding(mu1, lv1), ProbEmbedding(mu2, lv2), eps, scale)

    assert torch.autograd.gradcheck(loss, args)
    # and the value is the per-dimension formula from the public inclusion test
    want = (-F.logsigmoid(scale * _per_dim_margin(ProbEmbedding(*args[:2]), ProbEmbedding(*args[2:]), eps))).mean(-1)
    torch.testing.assert_close(loss(*args), want)


def test_masked_index_pairs_views_with_the_named_originals():
    (mi, li), (mt, lt) = _random_batch(b=6)
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    loss_fn = ProLIPLoss(inclusion_alpha_occ=0.5, inclusion_eps=0, inclusion_scale=10)
    views_img, views_txt = image[torch.tensor([4, 1])], text[torch.tensor([4, 1])]
    shifted = ProbEmbedding(views_img.mean + 0.1, views_img.logvar - 0.3)
    shifted_txt = ProbEmbedding(views_txt.mean - 0.1, views_txt.logvar + 0.2)
    out = loss_fn(
        image, text, 2.0, -5.0, masked_image=shifted, masked_text=shifted_txt, masked_index=torch.tensor([4, 1])
    )
    originals = image[torch.tensor([4, 1])]
    want_img = 0.5 * (-F.logsigmoid(10 * _per_dim_margin(originals, shifted, 0.0))).mean()
    torch.testing.assert_close(out["img_inclusion"], want_img)
    default = loss_fn(image, text, 2.0, -5.0, masked_image=shifted, masked_text=shifted_txt)
    assert not torch.allclose(default["img_inclusion"], out["img_inclusion"])  # default pairs with samples 0, 1
    with pytest.raises(ValueError, match="masked_index"):
        loss_fn(image, text, 2.0, -5.0, masked_image=shifted, masked_index=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        loss_fn(image, text, 2.0, -5.0, masked_image=shifted, masked_index=torch.tensor([0, 6]))


def test_text_masked_inclusion_weight_can_differ_from_the_image_one():
    (mi, li), (mt, lt) = _random_batch(b=6)
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    views_img = ProbEmbedding(image.mean[:2] + 0.1, image.logvar[:2] - 0.3)
    views_txt = ProbEmbedding(text.mean[:2] - 0.1, text.logvar[:2] + 0.2)
    kwargs = dict(masked_image=views_img, masked_text=views_txt)
    shared = ProLIPLoss(inclusion_alpha_occ=0.5, inclusion_eps=0, inclusion_scale=10)(image, text, 2.0, -5.0, **kwargs)
    split = ProLIPLoss(inclusion_alpha_occ=0.5, inclusion_alpha_occ_text=2.0, inclusion_eps=0, inclusion_scale=10)(
        image, text, 2.0, -5.0, **kwargs)
    want_txt = 0.5 * (-F.logsigmoid(10 * _per_dim_margin(text[:2], views_txt, 0.0))).mean()
    torch.testing.assert_close(shared["txt_inclusion"], want_txt)
    torch.testing.assert_close(split["txt_inclusion"], 4 * want_txt)
    torch.testing.assert_close(split["img_inclusion"], shared["img_inclusion"])
    torch.testing.assert_close(split["loss"] - shared["loss"], 3 * want_txt)
    with pytest.raises(ValueError, match="inclusion_alpha_occ_text"):
        ProLIPLoss(inclusion_alpha_occ_text=-1.0)


def test_text_view_term_matches_each_caption_with_its_masked_view():
    (mi, li), (mt, lt) = _random_batch(b=6)
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    views = ProbEmbedding(torch.nn.functional.normalize(text.mean[:3] + 0.1, dim=-1), text.logvar[:3] + 0.2)
    index = torch.tensor([0, 2, 4])  # the samples whose masked views are passed
    kwargs = dict(masked_text=views, masked_index=index)
    off = ProLIPLoss(inclusion_alpha_occ=0.0)(image, text, 2.0, -5.0, **kwargs)
    on = ProLIPLoss(inclusion_alpha_occ=0.0, text_view_weight=0.5)(image, text, 2.0, -5.0, **kwargs)
    originals = text[index]
    z = math.exp(2.0) * (originals.mean @ views.mean.T - (originals.uncertainty[:, None] + views.uncertainty) / 2) - 5
    want = 0.5 * -F.logsigmoid((2 * torch.eye(3, dtype=z.dtype) - 1) * z).sum() / 3
    torch.testing.assert_close(on["txt_view_ppcl"], want)
    torch.testing.assert_close(on["loss"] - off["loss"], want)
    assert off["txt_view_ppcl"] == 0
    with pytest.raises(ValueError, match="text_view_weight"):
        ProLIPLoss(text_view_weight=-1.0)


def test_siglip_and_clip_match_open_clip():
    from open_clip.loss import ClipLoss, SigLipLoss

    (mi, _), (mt, _) = _random_batch(b=9, d=6)
    image, text = ProbEmbedding(mi, torch.zeros_like(mi)), ProbEmbedding(mt, torch.zeros_like(mt))
    log_scale, bias = torch.tensor(2.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    sig = SigLIPLoss()(image, text, log_scale, bias)
    assert sig["loss"].item() == pytest.approx(SigLipLoss()(mi, mt, log_scale.exp(), bias).item(), rel=1e-10)
    clip = CLIPLoss()(image, text, log_scale, bias)
    assert clip["loss"].item() == pytest.approx(ClipLoss()(mi, mt, log_scale.exp()).item(), rel=1e-10)
    assert clip["loss"].item() == pytest.approx((clip["i2t"] + clip["t2i"]).item(), rel=1e-12)


def _reference_pcmepp(image, text, a, shift, labels, pseudo_weight, vib_beta):
    """PCME++ evaluated directly on the B x B CSD matrix, pseudo-positive rows found by a loop."""
    logits = -a * csd(image, text) + shift
    bce_mean = lambda z, y: F.binary_cross_entropy_with_logits(z, y)  # noqa: E731
    total = 2 * bce_mean(logits, labels)

    def pseudo_targets(z, y):
        y = y.clone()
        for i in range(len(y)):
            gt = int(torch.argmax(y[i]))
            for j in range(y.shape[1]):
                if z[i, j] >= z[i, gt]:
                    y[i, j] = y[i, gt]
        return y

    with torch.no_grad():
        p_i2t, p_t2i = pseudo_targets(logits, labels), pseudo_targets(logits.T, labels.T)
    total = total + pseudo_weight * (bce_mean(logits, p_i2t) + bce_mean(logits.T, p_t2i))

    def kl(e):
        return -0.5 * (1 + e.logvar - e.mean.pow(2) - e.logvar.exp()).mean()

    return total + vib_beta * (kl(image) + kl(text))


def test_pcmepp_matches_direct_evaluation_with_soft_labels():
    b = 8
    (mi, li), (mt, lt) = _random_batch(b=b, d=4, lv_range=(-2.0, -0.5), requires_grad=True)
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    lam = torch.tensor([0.3, 0.8, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    labels = soft_match_labels(lam, torch.tensor([7, 6, 2, 3, 4, 5, 6, 7]))
    torch.testing.assert_close(labels.sum(1), torch.ones(b, dtype=torch.float64))
    assert labels[0, 7].item() == pytest.approx(0.7) and labels[1, 6].item() == pytest.approx(0.2)
    a = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    out = PCMEppLoss(pseudo_positive_weight=0.1, vib_beta=1e-2)(image, text, a.log(), shift, match_labels=labels)
    want = _reference_pcmepp(image, text, a, shift, labels, 0.1, 1e-2)
    torch.testing.assert_close(out["loss"], want)
    torch.testing.assert_close(out["loss"], out["match"] + out["pseudo"] + out["vib"])
    assert out["pseudo"].item() > 0
    params = [mi, li, mt, lt, a, shift]
    for g, w in zip(torch.autograd.grad(out["loss"], params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- errors, dtypes, registry


def test_non_finite_terms_raise_naming_the_component():
    (mi, li), (mt, lt) = _random_batch(dtype=torch.float32)
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    # eps = 100 overflows the inclusion precisions (inf / inf): only the inclusion term is NaN.
    with pytest.raises(NonFiniteLossError) as info:
        ProLIPLoss(inclusion_alpha=1.0, inclusion_eps=100.0)(image, text, 2.0, -5.0)
    assert info.value.component == "inclusion" and "ppcl" not in info.value.components
    assert isinstance(info.value, FloatingPointError)
    bad = ProbEmbedding(mi.clone(), li.clone())
    bad.logvar[0, 0] = float("nan")
    for loss_fn in (ProLIPLoss(), PCMEppLoss(), SigLIPLoss(), CLIPLoss()):
        bad_mean = ProbEmbedding(torch.where(torch.isnan(bad.logvar), bad.logvar, bad.mean), bad.logvar)
        with pytest.raises(NonFiniteLossError) as info:
            loss_fn(bad_mean, text, 2.0, -5.0)
        assert info.value.component != "loss" and info.value.component in str(info.value)


def test_large_terms_are_kept_not_dropped():
    # The reference drops inclusion terms above 1e5; here they stay in the total.
    (mi, li), (mt, lt) = _random_batch()
    out = ProLIPLoss(inclusion_alpha=1.0, inclusion_eps=-20, inclusion_scale=1e4)(
        ProbEmbedding(mi, li + 30), ProbEmbedding(mt, lt), 2.0, -5.0)
    assert out["inclusion"].item() > 1e5
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in out if k != "loss"), rel=1e-12)


def test_half_precision_inputs_are_evaluated_in_float32():
    (mi, li), (mt, lt) = _random_batch(dtype=torch.float32)
    low = ProLIPLoss()(
        ProbEmbedding(mi.bfloat16(), li.bfloat16()), ProbEmbedding(mt.bfloat16(), lt.bfloat16()), 2.0, -5.0
    )
    assert low["loss"].dtype == torch.float32
    ref = ProLIPLoss()(ProbEmbedding(mi.bfloat16().float(), li.bfloat16().float()),
                       ProbEmbedding(mt.bfloat16().float(), lt.bfloat16().float()), 2.0, -5.0)
    torch.testing.assert_close(low["loss"], ref["loss"])


def test_input_checks_name_the_problem():
    (mi, li), (mt, lt) = _random_batch()
    image, text = ProbEmbedding(mi, li), ProbEmbedding(mt, lt)
    with pytest.raises(ValueError, match="pair up"):
        ProLIPLoss()(image, text[:3], 0.0, 0.0)
    with pytest.raises(ValueError, match="does not use masked views"):
        SigLIPLoss()(image, text, 0.0, 0.0, masked_image=image[:2])
    with pytest.raises(TypeError, match="match_labels"):
        ProLIPLoss()(image, text, 0.0, 0.0, match_labels=torch.eye(7))
    with pytest.raises(ValueError, match="logit_scale"):
        ProLIPLoss()(image, text, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="vib_beta"):
        ProLIPLoss(vib_beta=-1.0)
    with pytest.raises(ValueError, match=r"\[7, 7\]"):
        PCMEppLoss()(image, text, 0.0, 0.0, match_labels=torch.eye(6))


def test_build_loss_by_name():
    assert isinstance(build_loss("prolip", vib_beta=0.0), ProLIPLoss)
    assert isinstance(build_loss("PCMEpp"), PCMEppLoss)
    assert isinstance(build_loss("siglip"), SigLIPLoss)
    assert isinstance(build_loss("clip"), CLIPLoss)
    assert build_loss("prolip", inclusion_scale=10).inclusion_scale == 10
    with pytest.raises(ValueError, match="accepted names: clip, pcmepp, prolip, siglip"):
        build_loss("infonce")


def test_prolip_loss_trains_the_tiny_model_with_masked_views():
    import probclip

    model = probclip.create_model("ProLIP-Tiny")
    tokenizer = probclip.get_tokenizer(model)
    images = torch.randn(4, 3, 32, 32)
    tokens = tokenizer(["a red square", "a blue circle", "two green lines", "a dog"])
    out = model(images, tokens)
    keep = torch.arange(model.visual.num_patches // 4).expand(2, -1)
    masked_image = model.encode_image(images[:2], keep_patches=keep)
    masked_text = model.encode_text(tokens[:2])
    terms = ProLIPLoss(inclusion_alpha=1e-3, inclusion_alpha_occ=1e-2)(
        out["image"], out["text"], out["logit_scale"], out["logit_bias"], masked_image=masked_image,
        masked_text=masked_text)
    terms["loss"].backward()
    assert all(terms[k].item() > 0 for k in ("ppcl", "inclusion", "img_inclusion", "vib"))
    assert model.logit_scale.grad is not None and model.logit_bias.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.visual.parameters())


@pytest.mark.parametrize(
    "cls,pieces",
    [
        (
            ProLIPLoss,
            ["-log sigmoid(y_ij * z_ij)", "(u_i + u_j) / 2", "incl(image_i in text_i)", "kl_i", "loss          ="],
        ),
        (PCMEppLoss, ["-a * CSD(image_i, text_j)", "BCE(z, y) =", "pseudo =", "vib    =", "loss   ="]),
        (SigLIPLoss, ["-log sigmoid(y_ij * (s * mu_i . mu_j + beta_b))"]),
        (CLIPLoss, ["-log softmax_j(z_ij)[i]", "loss = (i2t + t2i) / 2"]),
    ],
)
def test_each_loss_docstring_states_its_formula(cls, pieces):
    for piece in pieces:
        assert piece in cls.__doc__, (cls.__name__, piece)
