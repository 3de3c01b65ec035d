"""The k x k Jacobian of f_s = e_y . f . d_x . tau_k over the active latents (appendix A).

Per token, with ``o`` the output SAE's active latents and ``i`` the input SAE's:

    J = W_enc,y[o] @ W_out @ (sum_m diag(d_m) @ W_m) @ W_dec,x[i]^T

which is eq. 16 for a plain MLP (one term: ``W_m = W_in``, ``d_m = phi'(z)``) and eq. 29 for a
gated MLP (two terms: ``(W_gate, h * phi'(g))`` and ``(W_up, phi(g))``).

How it is computed (measurements in BENCHMARKS.md):

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


def _gather(W: Tensor, idx: Tensor) -> Tensor:
    """``W[idx]`` for a 2-D index, ``[T, k, h]``; ``index_select`` is ~2x faster than ``W[idx]`` on CPU."""
    return W.index_select(0, idx.reshape(-1)).view(*idx.shape, W.shape[1])


def _contract_chunk(A: Tensor, Bs, ds, o: Tensor, i: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """One chunk of tokens: ``P_m = A[o] * d_m``, ``B_m[i]`` and ``J = sum_m P_m @ B_m[i]^T``."""
    Ao = _gather(A, o)
    Ps = [Ao * d[:, None, :] for d in ds]
    Bis = [_gather(B, i) for B in Bs]
    J = torch.bmm(Ps[0], Bis[0].transpose(1, 2))
    for P, Bi in zip(Ps[1:], Bis[1:]):
        J.baddbmm_(P, Bi.transpose(1, 2))
    return Ps, Bis, J


def _accumulate_grads(G: Tensor, Ps, Bis, ds, o: Tensor, i: Tensor, gA: Tensor | None, gBs) -> None:
    """Add one chunk's ``dL/dA`` and ``dL/dB_m`` given ``G = dL/dJ`` (scattered to latent rows)."""
    h = Ps[0].shape[-1]
    if gA is not None:
        gAo = sum(torch.bmm(G, Bi).mul_(d[:, None, :]) for Bi, d in zip(Bis, ds))
        gA.index_add_(0, o.reshape(-1), gAo.reshape(-1, h).to(gA.dtype))
    Gt = G.transpose(1, 2)
    for P, gB in zip(Ps, gBs):
        if gB is not None:
            gB.index_add_(0, i.reshape(-1), torch.bmm(Gt, P).reshape(-1, h).to(gB.dtype))


def _grad_buffer(like: Tensor, needed: bool) -> Tensor | None:
    """Gradient accumulator: float32 at least, so bf16 autocast does not sum many terms in bf16."""
    return (
        torch.zeros(like.shape, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
        if needed
        else None
    )


class _ActiveContract(torch.autograd.Function):
    """``J[b] = sum_m (A[o_b] * d_m[b]) @ B_m[i_b]^T`` for every token b, chunked over tokens.

    Inputs: ``A [u_out, h]``, ``o [T, k_out]`` and ``i [T, k_in]`` (row indices into A and B_m),
    then ``B_1..B_M [u_in, h]`` and ``d_1..d_M [T, h]``. Gradients flow to ``A`` and ``B_m``; the
    diagonal factors are data (evaluated at the true MLP input, appendix D.1). The backward
    re-gathers each chunk instead of keeping ``T * k * h`` gathers alive between the passes.
    """

    @staticmethod
    def forward(ctx, A: Tensor, o: Tensor, i: Tensor, chunk: int, *terms: Tensor):  # type: ignore[override]
        M = len(terms) // 2
        Bs, ds = terms[:M], terms[M:]
        T = o.shape[0]
        J = A.new_empty(T, o.shape[1], i.shape[1])
        for s in range(0, T, chunk):
            J[s : s + chunk] = _contract_chunk(
                A, Bs, [d[s : s + chunk] for d in ds], o[s : s + chunk], i[s : s + chunk]
            )[2]
        ctx.chunk, ctx.M = chunk, M
        ctx.save_for_backward(A, o, i, *terms)
        return J

    @staticmethod
    def backward(ctx, G: Tensor):  # type: ignore[override]
        A, o, i, *terms = ctx.saved_tensors
        M, chunk = ctx.M, ctx.chunk
        Bs, ds = terms[:M], terms[M:]
        gA = _grad_buffer(A, ctx.needs_input_grad[0])
        gBs = [_grad_buffer(B, ctx.needs_input_grad[4 + m]) for m, B in enumerate(Bs)]
        for s in range(0, o.shape[0], chunk):
            sl = slice(s, s + chunk)
            dc = [d[sl] for d in ds]
            Ps, Bis, _ = _contract_chunk(A, Bs, dc, o[sl], i[sl])
            _accumulate_grads(G[sl], Ps, Bis, dc, o[sl], i[sl], gA, gBs)
        return (gA, None, None, None, *gBs, *(None for _ in range(M)))


class _ActiveContractL1(torch.autograd.Function):
    """Fused eq. 5 Jacobian term: ``sum_b,a,c w[b, a] |J[b, a, c]|`` and its gradient in one pass.

    The gradient of an L1 term is ``w * sign(J)``, known as soon as J is; so each chunk's gathers
    serve the value and both gradients, and the backward only scales the stored gradients. That
    halves the gather traffic of the memory-bound contraction against :class:`_ActiveContract`.
    Also returns J itself (detached) for logging.
    """

    @staticmethod
    def forward(ctx, A: Tensor, o: Tensor, i: Tensor, w: Tensor, chunk: int, *terms: Tensor):  # type: ignore[override]
        M = len(terms) // 2
        Bs, ds = terms[:M], terms[M:]
        T = o.shape[0]
        J = A.new_empty(T, o.shape[1], i.shape[1])
        gA = _grad_buffer(A, ctx.needs_input_grad[0])
        gBs = [_grad_buffer(B, ctx.needs_input_grad[5 + m]) for m, B in enumerate(Bs)]
        total = torch.zeros((), dtype=torch.promote_types(A.dtype, torch.float32), device=A.device)
        for s in range(0, T, chunk):
            sl = slice(s, s + chunk)
            dc = [d[sl] for d in ds]
            Ps, Bis, Jc = _contract_chunk(A, Bs, dc, o[sl], i[sl])
            G = torch.sign(Jc).mul_(w[sl, :, None])
            total += (G * Jc).sum(dtype=total.dtype)  # = sum w |J|
            J[sl] = Jc
            _accumulate_grads(G, Ps, Bis, dc, o[sl], i[sl], gA, gBs)
        ctx.M = M
        ctx.save_for_backward(*(g if g is not None else A.new_empty(0) for g in (gA, *gBs)))
        ctx.mark_non_differentiable(J)
        return total, J

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_J: Tensor | None):  # type: ignore[override]
        gA, *gBs = ctx.saved_tensors
        # autograd casts each gradient back to its input's dtype (bf16 under autocast)
        scaled = [grad_total * g if g.numel() else None for g in (gA, *gBs)]
        return (scaled[0], None, None, None, None, *scaled[1:], *(None for _ in range(ctx.M)))


def _batch_latents(idx: Tensor, n: int) -> tuple[Tensor | None, Tensor]:
    """Latents active anywhere in the batch and ``idx`` re-indexed into them (``None`` = all)."""
    used, inverse = torch.unique(idx, return_inverse=True)
    if used.numel() == n:
        return None, idx
    return used, inverse


def _prepare(
    W_enc_out: Tensor,
    W_out: Tensor,
    terms: list[tuple[Tensor, Tensor]],
    W_dec_in: Tensor,
    out_idx: Tensor,
    in_idx: Tensor,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """The two weight products of eq. 16/29 for batch-active latents, and indices into their rows."""
    used_out, o = _batch_latents(out_idx, W_enc_out.shape[0])
    used_in, i = _batch_latents(in_idx, W_dec_in.shape[0])
    enc = W_enc_out if used_out is None else W_enc_out[used_out]
    dec = W_dec_in if used_in is None else W_dec_in[used_in]
    A = enc @ W_out  # [u_out, d_hidden]
    Bs = [dec @ W_m.t() for W_m, _ in terms]  # [u_in, d_hidden] each
    ds = [d.to(A.dtype) for _, d in terms]
    return A, o, i, Bs, ds


def _chunk_tokens(chunk_elements: int, k: int, h: int) -> int:
    return max(1, chunk_elements // (k * h))


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
    :meth:`jsae.nn.mlp.MLP.jacobian_terms`), ``W_dec_in [n_in, d_in]`` the input SAE's decoder.
    This is the Jacobian of the pre-TopK output latents; :meth:`jsae.nn.pair.JSAEPair.jacobian` zeroes
    the rows of output latents that the ReLU switched off.
    """
    A, o, i, Bs, ds = _prepare(W_enc_out, W_out, terms, W_dec_in, out_idx, in_idx)
    chunk = _chunk_tokens(chunk_elements, max(o.shape[1], i.shape[1]), A.shape[1])
    return _ActiveContract.apply(A, o, i, chunk, *Bs, *ds)


def active_jacobian_l1(
    W_enc_out: Tensor,
    W_out: Tensor,
    terms: list[tuple[Tensor, Tensor]],
    W_dec_in: Tensor,
    out_idx: Tensor,
    in_idx: Tensor,
    row_weight: Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """``(sum_b,a,c row_weight[b, a] * |J[b, a, c]|, J)`` with J as :func:`active_jacobian`.

    The differentiable L1 value and a detached J, from one fused pass (:class:`_ActiveContractL1`).
    With ``row_weight = active_out / (T * k_out * k_in)`` the value is eq. 5's Jacobian term.
    """
    A, o, i, Bs, ds = _prepare(W_enc_out, W_out, terms, W_dec_in, out_idx, in_idx)
    chunk = _chunk_tokens(chunk_elements, max(o.shape[1], i.shape[1]), A.shape[1])
    return _ActiveContractL1.apply(A, o, i, row_weight.to(A.dtype), chunk, *Bs, *ds)


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
