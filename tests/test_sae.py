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


# -- AuxK codes (Gao et al. 2024, A.2) --------------------------------------------------------------------------


def dense_aux_reference(sae: TopKSAE, x: torch.Tensor, mask: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK's e_hat through dense tensors: ReLU'd pre-activations of the masked latents, kept where they are among
    the token's k_aux largest masked pre-activations (brute-force sort), times W_dec, no b_dec."""
    pre = x @ sae.W_enc.T + sae.b_enc
    keep = torch.zeros_like(pre)
    for b in range(pre.shape[0]):
        ranked = sorted((j for j in range(sae.n_latents) if mask[j]), key=lambda j: -pre[b, j].item())[:k_aux]
        keep[b, ranked] = 1.0
    return (torch.relu(pre) * keep) @ sae.W_dec


def aux_case(seed: int, n_masked: int):
    torch.manual_seed(seed)
    sae = make_sae(seed)
    with torch.no_grad():
        sae.b_enc[:6] = -4.0  # masked latents whose pre-activations are <= 0: selected slots worth 0
    mask = torch.zeros(30, dtype=torch.bool)
    mask[torch.randperm(30)[:n_masked]] = True
    return sae, mask, torch.randn(25, 10, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(("n_masked", "k_aux"), [(12, 5), (3, 5), (30, 30), (0, 4)])
def test_aux_codes_are_brute_force_topk_over_the_mask(n_masked, k_aux):
    sae, mask, x = aux_case(4, n_masked)
    x = x.detach()
    with torch.no_grad():
        vals, idx, aux_vals, aux_idx = sae.encode_with_aux(x, mask, k_aux)
        main_vals, main_idx = sae.encode(x)
    assert torch.equal(vals, main_vals) and torch.equal(idx, main_idx)  # the main code is unchanged
    assert aux_vals.shape == aux_idx.shape == (25, k_aux)
    pre = x @ sae.W_enc.T + sae.b_enc
    for b in range(25):
        ranked = sorted((j for j in range(30) if mask[j]), key=lambda j: -pre[b, j].item())[:k_aux]
        expected = {j: pre[b, j].item() for j in ranked if pre[b, j] > 0}
        got = {int(j): float(v) for j, v in zip(aux_idx[b], aux_vals[b]) if v != 0}
        assert got.keys() == expected.keys() and all(got[j] == pytest.approx(expected[j], abs=1e-12) for j in got)
        assert all(v == 0 for j, v in zip(aux_idx[b].tolist(), aux_vals[b].tolist()) if not mask[j])
    with torch.no_grad():
        torch.testing.assert_close(sae.decode_directions(aux_vals, aux_idx), dense_aux_reference(sae, x, mask, k_aux),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n_masked", "k_aux"), [(12, 5), (3, 5), (0, 4)])
def test_aux_gradients_match_dense_autograd(n_masked, k_aux):
    """Gradients of a loss on both the main and the aux reconstruction (a latent can be in both selections)."""
    sae, mask, x = aux_case(5, n_masked)
    t_main, t_aux = torch.randn(25, 10, dtype=torch.float64), torch.randn(25, 10, dtype=torch.float64)

    def grads(both):
        sae.zero_grad()
        x.grad = None
        main, aux = both()
        (((main - t_main) ** 2).sum() + 0.7 * ((aux - t_aux) ** 2).sum()).backward()
        return [p.grad.clone() for p in sae.parameters()] + [x.grad.clone()]

    def ours():
        vals, idx, aux_vals, aux_idx = sae.encode_with_aux(x, mask, k_aux)
        if n_masked == 12:  # the case exercises a latent selected by both (its two gradients add up)
            same = idx.unsqueeze(-1) == aux_idx.unsqueeze(-2)
            assert (same & (vals.unsqueeze(-1) > 0) & (aux_vals.unsqueeze(-2) > 0)).any()
        return sae.decode(vals, idx), sae.decode_directions(aux_vals, aux_idx)

    got = grads(ours)
    ref = grads(lambda: (dense_reference(sae, x), dense_aux_reference(sae, x, mask, k_aux)))
    for name, a, b in zip(["W_enc", "b_enc", "W_dec", "b_dec", "x"], got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_aux_bad_inputs():
    sae = make_sae()
    x = torch.randn(5, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"k_aux=31 is invalid; expected an integer with 1 <= k_aux <= n_latents=30"):
        sae.encode_with_aux(x, torch.ones(30, dtype=torch.bool), 31)
    with pytest.raises(ValueError, match=r"aux_mask has shape \(29,\).*expected a bool \[30\] mask"):
        sae.encode_with_aux(x, torch.ones(29, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match=r"dtype torch.int64.*expected a bool \[30\] mask"):
        sae.encode_with_aux(x, torch.ones(30, dtype=torch.long), 3)
