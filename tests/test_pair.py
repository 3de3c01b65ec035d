"""The JSAE pair: eq. 5's loss and its gradients against a dense autograd implementation."""

from __future__ import annotations

import pytest
import torch
from builders import D, build_hf_mlp
from oracle import dense_decode, naive_pair_loss
from test_jacobian import N_IN, N_OUT, make_pair
from test_sae import dense_aux_reference

from jsae import JSAEPair, TopKSAE
from jsae.nn.pair import AuxK


@pytest.mark.parametrize("name", ["neox-gelu", "gpt2-gelu-new", "llama-silu", "gemma3-gelu-tanh"])
@pytest.mark.parametrize("coef", [0.0, 0.7])
def test_loss_and_gradients_match_dense_autograd(name, coef):
    module = build_hf_mlp(name)
    x = torch.randn(5, D, dtype=torch.float64)
    pair = make_pair(module)
    loss, parts = pair.loss(x, lam=coef)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in pair.named_parameters()}

    ref_pair = make_pair(module)  # same seed: identical parameters
    ref = naive_pair_loss(ref_pair, module, x, coef)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    assert float(parts.loss) == pytest.approx(float(ref.detach()), rel=1e-10)
    assert float(parts.mse_in + parts.mse_out + coef * parts.jac) == pytest.approx(float(loss.detach()), rel=1e-12)
    for n, p in ref_pair.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-8, atol=1e-11, msg=f"gradient of {n}")
    if coef > 0:
        assert ours["sae_out.W_enc"].abs().sum() > 0 and float(parts.jac) > 0


def test_trainable_parameters_are_the_two_saes():
    pair = make_pair(build_hf_mlp("llama-silu"))
    names = [n for n, _ in pair.named_parameters()]
    assert names == [f"{s}.{p}" for s in ("sae_in", "sae_out") for p in ("W_enc", "b_enc", "W_dec", "b_dec")]
    assert all(p.requires_grad for p in pair.parameters())
    assert pair.float().mlp.W_out.dtype == torch.float32  # .to()/.float() move the frozen MLP too
    loss, _ = pair.loss(torch.randn(4, D), 1.0)
    assert loss.dtype == torch.float32


def test_lambda_zero_skips_the_jacobian():
    pair = make_pair(build_hf_mlp("neox-gelu"))
    out = pair(torch.randn(4, D, dtype=torch.float64), with_jacobian=False)
    assert out.jacobian is None
    _, parts = pair.loss(torch.randn(4, D, dtype=torch.float64), lam=0)
    assert float(parts.jac) == 0.0


def test_normalize_decoders():
    pair = make_pair(build_hf_mlp("neox-gelu"))
    with torch.no_grad():
        pair.sae_in.W_dec.mul_(3.0)
        pair.sae_out.W_dec.mul_(0.5)
    pair.normalize_decoders_()
    for sae in (pair.sae_in, pair.sae_out):
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_latents, dtype=torch.float64))


def test_bad_inputs():
    module = build_hf_mlp("neox-gelu")
    with pytest.raises(ValueError, match=r"sae_in.d_in=7 does not match the MLP input width 12"):
        JSAEPair(TopKSAE(7, 20, 3), TopKSAE(D, 20, 3), module)
    with pytest.raises(ValueError, match=r"sae_out.d_in=9 does not match the MLP output width 12"):
        JSAEPair(TopKSAE(D, 20, 3), TopKSAE(9, 20, 3), module)
    with pytest.raises(TypeError, match="unsupported MLP module type Linear"):
        JSAEPair(TopKSAE(D, 20, 3), TopKSAE(D, 20, 3), torch.nn.Linear(D, D))
    pair = make_pair(module)
    with pytest.raises(ValueError, match=r"x has shape \(4, 5\)"):
        pair.loss(torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="lam=-1"):
        pair.loss(torch.randn(4, D, dtype=torch.float64), lam=-1)
    with pytest.raises(ValueError, match="lam=nan"):
        pair.loss(torch.randn(4, D, dtype=torch.float64), lam=float("nan"))
    x = torch.randn(4, D, dtype=torch.float64)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        pair.jacobian(x)


@pytest.mark.parametrize("name", ["neox-gelu", "llama-silu"])
def test_bf16_autocast_runs_and_stays_close(name):
    """The CUDA recipe (fp32 weights, bf16 autocast), exercised on CPU: same loss to bf16 accuracy."""
    module = build_hf_mlp(name).float()
    pair = make_pair(module).float()
    x = torch.randn(64, D)
    ref, _ = pair.loss(x, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = pair.loss(x, 1.0)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in pair.parameters())
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=0.05)
    assert torch.isfinite(parts.jac)


def test_loss_parts_jacobian_equals_pair_jacobian():
    """The fused training path returns the same (ReLU-masked) J as pair.jacobian()."""
    module = build_hf_mlp("llama-silu")
    pair = make_pair(module, out_bias=-3.0)  # some selected output latents are switched off
    x = torch.randn(8, D, dtype=torch.float64)
    _, parts = pair.loss(x, 1.0)
    J, _, _ = pair.jacobian(x)
    assert (parts.out_vals == 0).any()
    torch.testing.assert_close(parts.jacobian, J.detach(), rtol=0, atol=0)


class _ScaledModule(torch.nn.Module):
    """The MLP as the SAEs see it under activation scales: ``x~ -> c_y * f(x~ / c_x)``."""

    def __init__(self, module: torch.nn.Module, in_scale: float, out_scale: float) -> None:
        super().__init__()
        self.module, self.in_scale, self.out_scale = module, in_scale, out_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_scale * self.module(x / self.in_scale)


@pytest.mark.parametrize("name", ["neox-gelu", "llama-silu"])
def test_scaled_pair_equals_saes_on_scaled_activations(name):
    """With scales, loss and gradients equal the dense oracle run on c_x x around c_y f(. / c_x)."""
    module = build_hf_mlp(name)
    x = torch.randn(5, D, dtype=torch.float64) * 4.0
    c_in, c_out = 0.37, 2.9
    pair = make_pair(module)
    pair.set_activation_scales(c_in, c_out)
    loss, parts = pair.loss(x, lam=0.7)
    loss.backward()
    ref_pair = make_pair(module)
    ref = naive_pair_loss(ref_pair, _ScaledModule(module, c_in, c_out), c_in * x, 0.7)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for n, p in ref_pair.named_parameters():
        torch.testing.assert_close(dict(pair.named_parameters())[n].grad, p.grad, rtol=1e-8, atol=1e-11, msg=n)


@pytest.mark.parametrize("impl", ["active", "authors"])
def test_folding_the_scales_keeps_latents_jacobian_and_reconstructions(impl):
    module = build_hf_mlp("neox-gelu")
    x = torch.randn(6, D, dtype=torch.float64) * 3.0
    pair = make_pair(module)
    pair.jacobian_impl = impl
    pair.set_activation_scales(1.8, 0.21)
    with torch.no_grad():
        before = pair(x)
        l1_before = pair.loss(x, 1.0)[1].jac
        pair.fold_activation_scales_()
        after = pair(x)
        l1_after = pair.loss(x, 1.0)[1].jac
    assert (pair.input_scale, pair.output_scale) == (1.0, 1.0)
    assert torch.equal(before.in_idx, after.in_idx) and torch.equal(before.out_idx, after.out_idx)
    for field in ("in_vals", "out_vals", "jacobian", "x_hat", "y_hat"):
        torch.testing.assert_close(getattr(after, field), getattr(before, field), rtol=1e-10, atol=1e-12, msg=field)
    torch.testing.assert_close(l1_after, l1_before, rtol=1e-10, atol=0)
    # The scale really changes J: the unscaled pair differs by out_scale / in_scale.
    plain = make_pair(module)
    with torch.no_grad():
        assert not torch.allclose(plain(x).jacobian, before.jacobian)


def test_bad_activation_scales_are_refused():
    pair = make_pair(build_hf_mlp("neox-gelu"))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="input_scale=.*expected a positive finite number"):
            pair.set_activation_scales(bad, 1.0)
    with pytest.raises(ValueError, match="scale=.*expected a positive finite number"):
        pair.sae_in.fold_input_scale_(0.0)


# -- AuxK (Gao et al. 2024, A.2) ---------------------------------------------------------------------------------


def naive_aux_mse(sae: TopKSAE, a: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """MSE(e, e_hat) with the error e = a - x_hat (a constant) and e_hat from the dead latents, all dense."""
    error = (a - dense_decode(sae, a)).detach()
    return ((error - dense_aux_reference(sae, a, dead, k_aux)) ** 2).mean()


@pytest.mark.parametrize("lam", [0.0, 0.7])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.37, 2.9)])
def test_auxk_loss_and_gradients_match_a_dense_reference(lam, scales):
    module = build_hf_mlp("neox-gelu")
    x = torch.randn(6, D, dtype=torch.float64) * 2.0
    c_in, c_out = scales
    g = torch.Generator().manual_seed(1)
    dead_in, dead_out = torch.rand(N_IN, generator=g) < 0.4, torch.rand(N_OUT, generator=g) < 0.5
    aux = AuxK(coef=0.25, dead_in=dead_in, dead_out=dead_out, k_in=6, k_out=3)
    pair = make_pair(module)
    pair.set_activation_scales(c_in, c_out)
    loss, parts = pair.loss(x, lam=lam, auxk=aux)
    loss.backward()

    ref_pair = make_pair(module)  # same seed: identical parameters; the oracle runs in the SAEs' scaled units
    xs = c_in * x
    with torch.no_grad():
        ys = c_out * module(x)
    eq5 = naive_pair_loss(ref_pair, _ScaledModule(module, c_in, c_out), xs, lam)
    aux_in = naive_aux_mse(ref_pair.sae_in, xs, dead_in, 6)
    aux_out = naive_aux_mse(ref_pair.sae_out, ys, dead_out, 3)
    ref = eq5 + 0.25 * (aux_in + aux_out)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    # parts.loss is eq. 5 alone (runs with and without AuxK compare); the AuxK MSEs are reported before coef
    assert float(parts.loss) == pytest.approx(eq5.item(), rel=1e-10)
    assert float(parts.auxk_in) == pytest.approx(aux_in.item(), rel=1e-10) and aux_in.item() > 0
    assert float(parts.auxk_out) == pytest.approx(aux_out.item(), rel=1e-10) and aux_out.item() > 0
    for n, p in ref_pair.named_parameters():
        torch.testing.assert_close(dict(pair.named_parameters())[n].grad, p.grad, rtol=1e-8, atol=1e-11, msg=n)


def test_auxk_without_dead_latents_changes_nothing():
    module = build_hf_mlp("llama-silu")
    x = torch.randn(5, D, dtype=torch.float64)
    grads = []
    for aux in (None, AuxK(1 / 32, torch.zeros(N_IN, dtype=torch.bool), torch.zeros(N_OUT, dtype=torch.bool), 4, 4)):
        pair = make_pair(module)
        loss, parts = pair.loss(x, 0.7, aux)
        loss.backward()
        grads.append({n: p.grad for n, p in pair.named_parameters()})
        if aux is not None:  # e_hat = 0: the AuxK MSE is the main MSE, a constant (its gradient is 0)
            assert float(parts.auxk_in) == pytest.approx(float(parts.mse_in), rel=1e-12)
            assert float(parts.auxk_out) == pytest.approx(float(parts.mse_out), rel=1e-12)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-14, atol=0, msg=n)


@pytest.mark.parametrize("coef", [0.0, -0.1, float("nan"), float("inf"), True])
def test_auxk_bad_coef_is_refused(coef):
    with pytest.raises(ValueError, match=r"auxk coef=.* is invalid; expected a positive finite number"):
        AuxK(coef, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), 1, 1)
