"""Independent oracles for the JSAE pair: dense tensors and autograd, no closed forms."""

from __future__ import annotations

import torch

from jsae import JSAEPair, TopKSAE


def dense_code(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """s = TopK(ReLU(W_enc x + b_enc)) as a dense [..., n_latents] tensor (brute force)."""
    pre = x @ sae.W_enc.T + sae.b_enc
    mask = torch.zeros_like(pre).scatter(-1, pre.topk(sae.k, dim=-1).indices, 1.0)
    return torch.relu(pre) * mask


def dense_decode(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    return dense_code(sae, x) @ sae.W_dec + sae.b_dec


def f_s_at(pair: JSAEPair, module: torch.nn.Module, x_b: torch.Tensor):
    """f_s = e_y . f . d_x . tau_k (eq. 3) for one token, with the MLP linearised at the true x.

    Appendix D.1 evaluates the MLP at the true input x, not at x_hat; so the decoder is shifted by
    the constant ``x - d_x(s0)``, which leaves every derivative of eq. 10 unchanged and puts the
    evaluation point at x. ``module`` is the Hugging Face MLP itself (not our adapter).
    Returns ``(f, s0)``: f maps a dense s_x [n_in] to a dense s_y [n_out].
    """
    sae_in, sae_out = pair.sae_in, pair.sae_out
    s0 = dense_code(sae_in, x_b).detach()
    in_mask = (
        torch.zeros_like(s0).scatter(0, (x_b @ sae_in.W_enc.T + sae_in.b_enc).topk(sae_in.k).indices, 1.0).detach()
    )

    def f(s: torch.Tensor) -> torch.Tensor:
        s_bar = s * in_mask  # tau_k (eqs. 6, 14)
        x_in = x_b + (s_bar - s0) @ sae_in.W_dec  # d_x, shifted to evaluate at x
        y = module(x_in)
        return dense_code(sae_out, y)

    return f, s0


def naive_pair_loss(pair: JSAEPair, module: torch.nn.Module, x: torch.Tensor, coef: float) -> torch.Tensor:
    """Eq. 5 with dense codes and a dense autograd Jacobian per token (create_graph for the grads)."""
    with torch.no_grad():
        y = module(x)
    mse_in = ((dense_decode(pair.sae_in, x) - x) ** 2).mean()
    mse_out = ((dense_decode(pair.sae_out, y) - y) ** 2).mean()
    jac = 0.0
    for b in range(x.shape[0]):
        f, s0 = f_s_at(pair, module, x[b])
        J = torch.autograd.functional.jacobian(f, s0, create_graph=True)
        jac = jac + J.abs().sum() / (pair.sae_in.k * pair.sae_out.k)
    return mse_in + mse_out + coef * jac / x.shape[0]
