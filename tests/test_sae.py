"""TopK SAE against a dense reference implementation (brute-force top-k, dense decode, autograd)."""

from __future__ import annotations

import pytest
import torch

from jsae import TopKSAE


def dense_reference(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """x_hat through dense tensors: full pre-activations, a 0/1 top-k mask, dense code @ W_dec."""
    pre = x @ sae.W_enc.T + sae.b_enc
    mask = torch.zeros_like(pre).scatter(-1, pre.topk(sae.k, dim=-1).indices, 1.0)
    code = torch.relu(pre) * mask
    return code @ sae.W_dec + sae.b_dec


def make_sae(seed=0, d=10, n=30, k=4) -> TopKSAE:
    sae = TopKSAE(d, n, k, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.3)
        sae.b_dec.normal_(0.0, 0.3)
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
    return sae


def test_parameters_and_initialisation():
    sae = TopKSAE(10, 30, 4, seed=3)
    assert [n for n, _ in sae.named_parameters()] == ["W_enc", "b_enc", "W_dec", "b_dec"]
    assert sae.W_enc.shape == (30, 10) and sae.W_dec.shape == (30, 10)
    assert sae.b_enc.shape == (30,) and sae.b_dec.shape == (10,)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(30))
    assert torch.equal(sae.W_enc, sae.W_dec)  # appendix D: W_enc = W_dec^T (paper's column convention)
    assert torch.equal(sae.b_enc, torch.zeros(30)) and torch.equal(sae.b_dec, torch.zeros(10))
    assert torch.equal(TopKSAE(10, 30, 4, seed=3).W_dec, sae.W_dec)
    assert not torch.equal(TopKSAE(10, 30, 4, seed=4).W_dec, sae.W_dec)


def test_encode_is_brute_force_topk():
    torch.manual_seed(0)
    sae = make_sae()
    x = torch.randn(25, 10, dtype=torch.float64)
    vals, idx = sae.encode(x)
    assert vals.shape == idx.shape == (25, 4) and idx.dtype == torch.long
    pre = x @ sae.W_enc.T + sae.b_enc
    for b in range(25):  # brute force: sort all pre-activations of the token
        order = sorted(range(30), key=lambda j: -pre[b, j].item())[:4]
        assert set(idx[b].tolist()) == set(order)
        for v, j in zip(vals[b].tolist(), idx[b].tolist()):
            assert v == pytest.approx(max(pre[b, j].item(), 0.0), abs=1e-12)


def test_decode_equals_dense_decode():
    torch.manual_seed(1)
    sae = make_sae()
    x = torch.randn(25, 10, dtype=torch.float64)
    torch.testing.assert_close(sae.decode(*sae.encode(x)), dense_reference(sae, x), rtol=1e-12, atol=1e-12)


def test_gradients_match_dense_autograd():
    torch.manual_seed(2)
    sae = make_sae()
    with torch.no_grad():
        sae.b_enc[:5] = -5.0  # some selected latents have negative pre-activations -> ReLU'd to 0
    x = torch.randn(40, 10, dtype=torch.float64, requires_grad=True)
    target = torch.randn(40, 10, dtype=torch.float64)

    def grads(fn):
        sae.zero_grad()
        x.grad = None
        ((fn(x) - target) ** 2).sum().backward()
        return [p.grad.clone() for p in sae.parameters()] + [x.grad.clone()]

    ours, ref = grads(sae), grads(lambda x: dense_reference(sae, x))
    for name, a, b in zip(["W_enc", "b_enc", "W_dec", "b_dec", "x"], ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_leading_dims_and_module_behaviour():
    sae = make_sae().float()
    assert sae.W_enc.dtype == torch.float32
    x = torch.randn(2, 3, 10)
    vals, idx = sae.encode(x)
    assert vals.shape == (2, 3, 4)
    assert sae(x).shape == (2, 3, 10)
    torch.testing.assert_close(sae(x).reshape(6, 10), sae(x.reshape(6, 10)))
    assert sae.double().W_dec.dtype == torch.float64


def test_normalize_decoder():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(30, 1, dtype=torch.float64) * 3 + 0.1)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(30, dtype=torch.float64))


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 30, 0), "k=0"),
        ((10, 30, 31), "k=31"),
        ((10, 30, 2.5), "k=2.5"),
        ((0, 30, 4), "d_in=0"),
        ((10, -1, 4), "n_latents=-1"),
    ],
)
def test_bad_construction(args, match):
    with pytest.raises(ValueError, match=match):
        TopKSAE(*args)


def test_bad_inputs():
    sae = make_sae()
    with pytest.raises(ValueError, match=r"shape \(5, 9\).*\[\.\.\., 10\]"):
        sae.encode(torch.zeros(5, 9, dtype=torch.float64))
    bad = torch.zeros(5, 10, dtype=torch.float64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        sae.encode(bad)
    with pytest.raises(TypeError, match="dtype torch.int64"):
        sae.encode(torch.zeros(5, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="vals shape"):
        sae.decode(torch.zeros(5, 4, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.long))
