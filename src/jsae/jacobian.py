"""The k x k Jacobian of f_s = e_y . f . d_x . tau_k over the active latents (appendix A).

Per token, with ``o`` the output SAE's active latents and ``i`` the input SAE's:

    J = W_enc,y[o] @ W_out @ (sum_m diag(d_m) @ W_m) @ W_dec,x[i]^T

which is eq. 16 for a plain MLP (one term: ``W_m = W_in``, ``d_m = phi'(z)``) and eq. 29 for a
gated MLP (two terms: ``(W_gate, h * phi'(g))`` and ``(W_up, phi(g))``).

How it is computed (see DESIGN "Where the time goes"):

1. the two weight products ``A = W_enc,y[U_out] @ W_out`` ``[u_out, d_hidden]`` and
   ``B_m = W_dec,x[U_in] @ W_m^T`` ``[u_in, d_hidden]`` only for the latents active somewhere in
   the batch (``U``); with small batches this skips most of the ``n * d * d_hidden`` work;
2. a chunked gather-contract (:class:`_ActiveContract`) that gathers the k rows of ``A`` and
   ``B_m`` for a few hundred tokens at a time and never stores the ``B * k * d_hidden`` gathers
   for the backward: it recomputes them there, chunk by chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Elements per gathered chunk [tokens, k, d_hidden]: 2^22 floats = 16 MiB in float32.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


class _ActiveContract(torch.autograd.Function):
    """``J[b] = sum_m (A[o_b] * d_m[b]) @ B_m[i_b]^T`` for every token b, chunked over tokens.

    Inputs: ``A [u_out, h]``, ``o [T, k_out]`` and ``i [T, k_in]`` (row indices into A and B_m),
    then ``B_1..B_M [u_in, h]`` and ``d_1..d_M [T, h]``. Gradients flow to ``A`` and ``B_m``; the
    diagonal factors are data (evaluated at the true MLP input, appendix D.1).
    """

    @staticmethod
    def forward(ctx, A: Tensor, o: Tensor, i: Tensor, chunk: int, *terms: Tensor):  # type: ignore[override]
        M = len(terms) // 2
        Bs, ds = terms[:M], terms[M:]
        T = o.shape[0]
        J = A.new_empty(T, o.shape[1], i.shape[1])
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            Ao = A[o[s:e]]
            acc = None
            for B, d in zip(Bs, ds):
                part = torch.bmm(Ao * d[s:e, None, :], B[i[s:e]].transpose(1, 2))
                acc = part if acc is None else acc.add_(part)
            J[s:e] = acc
        ctx.chunk, ctx.M = chunk, M
        ctx.save_for_backward(A, o, i, *terms)
        return J

    @staticmethod
    def backward(ctx, G: Tensor):  # type: ignore[override]
        A, o, i, *terms = ctx.saved_tensors
        M, chunk = ctx.M, ctx.chunk
        Bs, ds = terms[:M], terms[M:]
        need_A = ctx.needs_input_grad[0]
        need_B = [ctx.needs_input_grad[4 + m] for m in range(M)]
        gA = torch.zeros_like(A) if need_A else None
        gBs = [torch.zeros_like(B) if need else None for B, need in zip(Bs, need_B)]
        h = A.shape[1]
        T = o.shape[0]
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            Gc = G[s:e]
            Ao = A[o[s:e]]
            gAo = None
            for m, (B, d) in enumerate(zip(Bs, ds)):
                dc = d[s:e, None, :]
                if need_A:
                    part = torch.bmm(Gc, B[i[s:e]]).mul_(dc)
                    gAo = part if gAo is None else gAo.add_(part)
                if need_B[m]:
                    gBi = torch.bmm(Gc.transpose(1, 2), Ao * dc)
                    gBs[m].index_add_(0, i[s:e].reshape(-1), gBi.reshape(-1, h))
            if need_A:
                gA.index_add_(0, o[s:e].reshape(-1), gAo.reshape(-1, h))
        return (gA, None, None, None, *gBs, *(None for _ in range(M)))


def _batch_latents(idx: Tensor, n: int) -> tuple[Tensor | None, Tensor]:
    """Latents active anywhere in the batch and ``idx`` re-indexed into them (``None`` = all)."""
    used, inverse = torch.unique(idx, return_inverse=True)
    if used.numel() == n:
        return None, idx
    return used, inverse


def active_jacobian(
    W_enc_out: Tensor,
    W_out: Tensor,
    terms: list[tuple[Tensor, Tensor]],
    W_dec_in: Tensor,
    out_idx: Tensor,
    in_idx: Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """``J[b, a, c] = d s_y[out_idx[b, a]] / d s_x[in_idx[b, c]]`` (eq. 16; eq. 29 for gated MLPs).

    ``W_enc_out [n_out, d_out]`` is the output SAE's encoder, ``W_out [d_out, d_hidden]`` the MLP's
    output weight, ``terms`` the MLP's ``[(W_m [d_hidden, d_in], d_m [T, d_hidden])]`` (see
    :meth:`jsae.mlp.MLP.jacobian_terms`), ``W_dec_in [n_in, d_in]`` the input SAE's decoder.
    This is the Jacobian of the pre-TopK output latents; :meth:`jsae.pair.JSAEPair.jacobian` zeroes
    the rows of output latents that the ReLU switched off.
    """
    used_out, o = _batch_latents(out_idx, W_enc_out.shape[0])
    used_in, i = _batch_latents(in_idx, W_dec_in.shape[0])
    enc = W_enc_out if used_out is None else W_enc_out[used_out]
    dec = W_dec_in if used_in is None else W_dec_in[used_in]
    A = enc @ W_out  # [u_out, d_hidden]
    Bs = [dec @ W_m.t() for W_m, _ in terms]  # [u_in, d_hidden] each
    ds = [d.to(A.dtype) for _, d in terms]
    chunk = max(1, chunk_elements // (max(o.shape[1], i.shape[1]) * A.shape[1]))
    return _ActiveContract.apply(A, o, i, chunk, *Bs, *ds)


def jacobian_authors_formulation(
    W_enc_out: Tensor,
    W_out: Tensor,
    W_in: Tensor,
    phi_prime: Tensor,
    W_dec_in: Tensor,
    out_idx: Tensor,
    in_idx: Tensor,
) -> Tensor:
    """Eq. 16 as the paper's code computes it (plain MLPs only): the baseline for benchmarks.

    Both ``[n, d_hidden]`` products are recomputed for every latent each call and their rows
    gathered per token into ``[T, k, d_hidden]`` tensors that autograd keeps for the backward.
    """
    wd1 = W_dec_in @ W_in.t()  # [n_in, d_hidden]
    w2e = W_enc_out @ W_out  # [n_out, d_hidden]
    return torch.einsum("tcm,tm,tam->tac", wd1[in_idx], phi_prime, w2e[out_idx])
