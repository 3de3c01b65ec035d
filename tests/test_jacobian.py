"""The closed-form active Jacobian (eqs. 16, 29) against torch.func.jacrev of f_s, dense, float64."""

from __future__ import annotations

import pytest
import torch
from builders import PLAIN_MLPS, D, build_hf_mlp
from oracle import dense_code, f_s_at

from jsae import JSAEPair, TopKSAE

N_IN, N_OUT, K_IN, K_OUT = 30, 36, 4, 5  # k_in != k_out catches transposed indices


def make_pair(module, seed=0, out_bias=0.5) -> JSAEPair:
    torch.manual_seed(seed)
    sae_in = TopKSAE(D, N_IN, K_IN, seed=seed, dtype=torch.float64)
    sae_out = TopKSAE(D, N_OUT, K_OUT, seed=seed + 1, dtype=torch.float64)
    with torch.no_grad():
        for sae in (sae_in, sae_out):
            sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
            sae.b_dec.normal_(0.0, 0.2)
        sae_in.b_enc.normal_(0.0, 0.3)
        sae_out.b_enc.normal_(out_bias, 0.5)
    return JSAEPair(sae_in, sae_out, module)


def check_against_jacrev(pair, module, x):
    J, in_idx, out_idx = pair.jacobian(x)
    assert J.shape == (x.shape[0], K_OUT, K_IN)
    for b in range(x.shape[0]):
        f, s0 = f_s_at(pair, module, x[b])
        dense = torch.func.jacrev(f)(s0)  # [n_out, n_in]
        active = dense[out_idx[b]][:, in_idx[b]]
        torch.testing.assert_close(J[b], active, rtol=1e-6, atol=1e-10)
        rest = dense.clone()
        rest[out_idx[b][:, None], in_idx[b][None, :]] = 0.0
        assert torch.count_nonzero(rest) == 0, "the dense Jacobian is non-zero outside the active k x k block"
    return J


def test_jacobian_equals_jacrev(hf_mlp):
    pair = make_pair(hf_mlp)
    x = torch.randn(6, D, dtype=torch.float64)
    J = check_against_jacrev(pair, hf_mlp, x)
    assert (J.abs() > 1e-3).float().mean() > 0.5  # a real test: most entries are far from zero


def test_inactive_output_latents_have_zero_rows():
    module = build_hf_mlp("llama-silu")
    pair = make_pair(module, out_bias=-3.0)  # many selected output latents have pre-activation <= 0
    x = torch.randn(6, D, dtype=torch.float64)
    out_vals, _ = pair.sae_out.encode(module(x).detach())
    assert (out_vals == 0).any() and (out_vals > 0).any()
    J = check_against_jacrev(pair, module, x)
    assert torch.all(J[out_vals == 0] == 0)


def test_matches_literal_f_s_where_reconstruction_is_exact():
    """At a token whose reconstruction is exact, the shifted oracle is the paper's literal eq. 3."""
    module = build_hf_mlp("neox-gelu")
    pair = make_pair(module)
    x = torch.randn(1, D, dtype=torch.float64)
    with torch.no_grad():  # move b_dec so that x_hat = x exactly for this token
        pair.sae_in.b_dec.add_(x[0] - pair.sae_in(x)[0])
    sae_in, sae_out = pair.sae_in, pair.sae_out
    s0 = dense_code(sae_in, x[0])
    mask = (s0 != 0).double()

    def literal_f_s(s):
        return dense_code(sae_out, module((s * mask) @ sae_in.W_dec + sae_in.b_dec))

    J, in_idx, out_idx = pair.jacobian(x)
    dense = torch.func.jacrev(literal_f_s)(s0)
    torch.testing.assert_close(J[0], dense[out_idx[0]][:, in_idx[0]], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", PLAIN_MLPS)
def test_authors_formulation_agrees(name):
    module = build_hf_mlp(name)
    pair = make_pair(module)
    x = torch.randn(200, D, dtype=torch.float64)  # every latent active somewhere: the unrestricted path
    authors = JSAEPair(pair.sae_in, pair.sae_out, pair.mlp, jacobian_impl="authors")
    (loss, _), (ref_loss, _) = pair.loss(x, 1.0), authors.loss(x, 1.0)
    torch.testing.assert_close(pair(x).jacobian, authors(x).jacobian, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(loss, list(pair.parameters()))
    ref_grads = torch.autograd.grad(ref_loss, list(authors.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_authors_formulation_rejects_gated_mlps():
    with pytest.raises(ValueError, match="plain MLPs only; this MLP is gated"):
        JSAEPair(TopKSAE(D, 20, 3), TopKSAE(D, 20, 3), build_hf_mlp("llama-silu"), jacobian_impl="authors")


@pytest.mark.parametrize("name", ["neox-gelu", "llama-silu"])
def test_chunking_and_batch_restriction_do_not_change_values_or_grads(name):
    module = build_hf_mlp(name)
    x = torch.randn(50, D, dtype=torch.float64)
    results = []
    for chunk_elements, n_tokens in [(1 << 22, 50), (1, 50), (100, 50)]:
        pair = make_pair(module)
        pair.chunk_elements = chunk_elements
        loss, _ = pair.loss(x[:n_tokens], lam=2.0)
        loss.backward()
        results.append((pair(x).jacobian.detach(), [p.grad.clone() for p in pair.parameters()]))
    for J, grads in results[1:]:
        torch.testing.assert_close(J, results[0][0], rtol=1e-12, atol=1e-13)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["neox-gelu", "gemma3-gelu-tanh"])
def test_fused_l1_equals_autograd_of_generic_path(name):
    from jsae.nn.jacobian import active_jacobian, active_jacobian_l1

    module = build_hf_mlp(name)
    pair = make_pair(module)
    x = torch.randn(30, D, dtype=torch.float64)
    out = pair(x, with_jacobian=False)
    _, terms = pair.mlp.jacobian_terms(x)
    weight = torch.rand(30, K_OUT, dtype=torch.float64)
    args = (pair.sae_out.W_enc, pair.mlp.W_out, terms, pair.sae_in.W_dec, out.out_idx, out.in_idx)
    l1, J = active_jacobian_l1(*args, weight, chunk_elements=3 * K_OUT * 40)
    ref_J = active_jacobian(*args)
    ref = (ref_J.abs() * weight[..., None]).sum()
    torch.testing.assert_close(l1, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(J, ref_J.detach(), rtol=1e-12, atol=1e-14)
    assert not J.requires_grad
    params = [pair.sae_out.W_enc, pair.sae_in.W_dec]
    for g, r in zip(torch.autograd.grad(3.0 * l1, params), torch.autograd.grad(3.0 * ref, params)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
