import pytest
import torch

from probclip import ProbEmbedding


def _emb(n=4, d=8, dtype=torch.float32):
    return ProbEmbedding(torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype))


def test_uncertainty_is_trace_of_covariance():
    e = _emb()
    torch.testing.assert_close(e.uncertainty, e.logvar.exp().sum(-1))
    assert e.uncertainty.shape == (4,)
    assert e.dim == 8 and len(e) == 4


def test_indexing_slicing_and_iteration():
    e = _emb(5)
    s = e[1:3]
    assert isinstance(s, ProbEmbedding) and s.shape == (2, 8)
    torch.testing.assert_close(s.mean, e.mean[1:3])
    one = e[2]
    assert one.shape == (8,)
    torch.testing.assert_close(one.logvar, e.logvar[2])
    idx = e[torch.tensor([0, 4])]
    torch.testing.assert_close(idx.mean, e.mean[[0, 4]])
    assert [x.mean.tolist() for x in e] == [row.tolist() for row in e.mean]
    with pytest.raises(IndexError, match="leading"):
        e[0, 1]


def test_to_detach_and_cat():
    e = ProbEmbedding(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True))
    d = e.detach()
    assert not d.mean.requires_grad and not d.logvar.requires_grad
    h = e.to(torch.float64)
    assert h.dtype == torch.float64 and h.logvar.dtype == torch.float64
    c = ProbEmbedding.cat([e.detach(), _emb(2, 4)])
    assert c.shape == (5, 4)
    torch.testing.assert_close(c.mean[:3], e.mean.detach())
    with pytest.raises(ValueError, match="different sizes"):
        ProbEmbedding.cat([_emb(2, 4), _emb(2, 5)])
    with pytest.raises(ValueError, match="empty"):
        ProbEmbedding.cat([])


@pytest.mark.parametrize(
    "mean,logvar,err,msg",
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), ValueError, r"\(3, 4\) and logvar \(3, 5\)"),
        (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long), TypeError, "floating-point"),
        (torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64), TypeError, "share a dtype"),
        ([0.0], torch.zeros(1), TypeError, "list"),
        (torch.tensor(1.0), torch.tensor(1.0), ValueError, "scalar"),
    ],
)
def test_construction_errors_name_the_values(mean, logvar, err, msg):
    with pytest.raises(err, match=msg):
        ProbEmbedding(mean, logvar)


def test_check_finite_names_field():
    e = ProbEmbedding(torch.zeros(2, 3), torch.tensor([[0.0, float("nan"), 0.0], [float("inf"), 0, 0]]))
    with pytest.raises(ValueError, match=r"img\.logvar .*1 NaN, 1 infinite"):
        e.check_finite("img")


def test_device_moves_and_mismatched_devices():
    e = _emb(3, 4)
    moved = e.to("meta")
    assert moved.device.type == "meta" and moved.logvar.device.type == "meta" and moved.shape == (3, 4)
    assert e.to("cpu", torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="one device; got cpu and meta"):
        ProbEmbedding(torch.zeros(3, 4), torch.zeros(3, 4, device="meta"))


def test_cat_keeps_gradients_and_rejects_the_embedding_dim():
    a = ProbEmbedding(torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True))
    b = _emb(1, 3)
    c = ProbEmbedding.cat([a, b])
    c.uncertainty.sum().backward()
    torch.testing.assert_close(a.logvar.grad, a.logvar.exp().detach())
    with pytest.raises(ValueError, match="must not be the embedding dim"):
        ProbEmbedding.cat([a, b], dim=-1)
    with pytest.raises(TypeError, match="item 1 is a Tensor"):
        ProbEmbedding.cat([b, torch.zeros(1, 3)])
