"""TopK sparse autoencoders (paper eqs. 1-2 with phi = TopK; initialisation from appendix D).

Shapes follow one convention everywhere: ``W_enc`` and ``W_dec`` are both ``[n_latents, d_in]``
(one row per latent), ``b_enc`` is ``[n_latents]`` and ``b_dec`` is ``[d_in]``.

Speed: the encoder forward is the only dense ``B x n_latents`` computation. Its backward, the
decode and the decode's backward touch only the k selected latents per token (``B*k*d`` work
instead of ``B*n*d``); see :class:`_TopKEncode` and :func:`sparse_decode`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jsae.checks import check_features, check_k


class _TopKEncode(torch.autograd.Function):
    """TopK-ReLU encoder whose backward only touches the k selected latents per token.

    Autograd through ``torch.topk`` would scatter the gradient into a dense ``[B, n]`` tensor and
    multiply it by ``x`` (``B*n*d`` MACs). Only ``B*k`` entries of that tensor are non-zero, so the
    weight gradient is a sparse-dense product and the input gradient an ``embedding_bag``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int):  # type: ignore[override]
        pre = torch.addmm(b_enc, x, W_enc.t())
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        del pre  # the dense pre-activations are not needed for the backward
        active = vals > 0
        vals = vals * active
        ctx.save_for_backward(x, W_enc, idx, active)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals: Tensor, _grad_idx: Tensor | None):  # type: ignore[override]
        x, W_enc, idx, active = ctx.saved_tensors
        return (*_sparse_encoder_grads(ctx.needs_input_grad, x, W_enc, idx, grad_vals * active), None)


class _TopKEncodeAux(torch.autograd.Function):
    """:class:`_TopKEncode` plus AuxK's codes from the same pre-activations (Gao et al. 2024, A.2).

    Besides the top-k, returns the ``k_aux`` largest ReLU'd pre-activations among the latents in
    ``aux_mask`` (the dead ones); a selected latent outside the mask or with a pre-activation <= 0
    gets value 0 (so fewer than ``k_aux`` masked latents is fine). One dense matmul serves both;
    the backward stays sparse over the ``k + k_aux`` selected latents per token.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, aux_mask: Tensor, k_aux: int):  # type: ignore[override]
        pre = torch.addmm(b_enc, x, W_enc.t())
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        active = vals > 0
        vals = vals * active
        masked = pre.masked_fill_(~aux_mask, float("-inf"))  # in place: pre is not needed again
        aux_vals, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)
        del pre, masked
        aux_active = aux_vals > 0  # False for -inf (not in the mask) and for pre-activations <= 0
        aux_vals = torch.where(aux_active, aux_vals, torch.zeros_like(aux_vals))
        ctx.save_for_backward(x, W_enc, torch.cat([idx, aux_idx], -1), torch.cat([active, aux_active], -1))
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, grad_vals: Tensor, _gi: Tensor | None, grad_aux: Tensor, _gai: Tensor | None):  # type: ignore[override]
        x, W_enc, idx, active = ctx.saved_tensors
        # A latent both in the top-k and in the aux selection gets both gradients (summed below).
        g = torch.cat([grad_vals, grad_aux], -1) * active
        return (*_sparse_encoder_grads(ctx.needs_input_grad, x, W_enc, idx, g), None, None, None)


def _sparse_encoder_grads(
    needs: tuple[bool, ...], x: Tensor, W_enc: Tensor, idx: Tensor, g: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients wrt ``(x, W_enc, b_enc)`` of an encoder whose selected pre-activations ``idx`` got ``g``."""
    grad_x = grad_W = grad_b = None
    if needs[0]:
        grad_x = F.embedding_bag(idx, W_enc, per_sample_weights=g, mode="sum")
    if needs[1]:
        grad_W = scatter_outer(idx, g, x, W_enc.shape[0])
    if needs[2]:
        grad_b = torch.zeros(W_enc.shape[0], dtype=g.dtype, device=g.device)
        grad_b.index_add_(0, idx.reshape(-1), g.reshape(-1))
    return grad_x, grad_W, grad_b


def scatter_outer(idx: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """``out[j] = sum over (b, a) with idx[b, a] == j of weights[b, a] * rows[b]``, shape ``[n, d]``.

    The weight gradient of a TopK encoder (and of a gather-decode): a sparse ``[n, B]`` matrix with
    ``B*k`` non-zeros times the dense ``[B, d]`` rows, without building a ``[B, k, d]`` tensor.
    """
    B, k = idx.shape
    token = torch.arange(B, device=idx.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([idx.reshape(-1), token]), weights.reshape(-1), (n, B), dtype=rows.dtype,
        check_invariants=False,  # indices come from topk: in range by construction
    )
    return torch.sparse.mm(sparse, rows)


def sparse_decode(vals: Tensor, idx: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """``x_hat = sum_a vals[:, a] * W_dec[idx[:, a]] + b_dec`` (eq. 2), a gather-sum over k rows.

    ``embedding_bag`` fuses the gather and the weighted sum, so neither the forward nor the backward
    builds a dense ``[B, n_latents]`` code or a ``[B, k, d]`` gather.
    """
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum") + b_dec


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest ReLU'd pre-activations ``W_enc x + b_enc`` of ``x [..., d_in]`` and their latent indices,
    ``[..., k]`` each (:class:`_TopKEncode`): the encoder of a TopK SAE and of a transcoder."""
    d_in = W_enc.shape[1]
    check_features(x, d_in, "x")
    lead = x.shape[:-1]
    vals, idx = _TopKEncode.apply(x.reshape(-1, d_in).to(W_enc.dtype), W_enc, b_enc, k)
    return vals.reshape(*lead, k), idx.reshape(*lead, k)


def topk_encode_aux(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, aux_mask: Tensor, k_aux: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`topk_encode`'s ``(vals, idx)`` plus AuxK's ``(aux_vals, aux_idx)``, each ``[..., k_aux]``
    (:class:`_TopKEncodeAux`; ``aux_mask``: a bool ``[n_latents]`` mask, ``1 <= k_aux <= n_latents``)."""
    n_latents, d_in = W_enc.shape
    check_features(x, d_in, "x")
    if isinstance(k_aux, bool) or not isinstance(k_aux, int) or not 1 <= k_aux <= n_latents:
        raise ValueError(f"k_aux={k_aux!r} is invalid; expected an integer with 1 <= k_aux <= n_latents={n_latents}")
    if aux_mask.shape != (n_latents,) or aux_mask.dtype != torch.bool:
        raise ValueError(
            f"aux_mask has shape {tuple(aux_mask.shape)} and dtype {aux_mask.dtype}; "
            f"expected a bool [{n_latents}] mask"
        )
    lead = x.shape[:-1]
    vals, idx, aux_vals, aux_idx = _TopKEncodeAux.apply(
        x.reshape(-1, d_in).to(W_enc.dtype), W_enc, b_enc, k, aux_mask.to(W_enc.device), k_aux,
    )
    return (vals.reshape(*lead, k), idx.reshape(*lead, k), aux_vals.reshape(*lead, k_aux),
            aux_idx.reshape(*lead, k_aux))


def decode_directions(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_a vals[..., a] * W_dec[idx[..., a]]`` without a bias, ``[..., d]``: a reconstruction of a difference
    of activations (AuxK's model of the reconstruction error), where the bias cancels."""
    if vals.shape != idx.shape:
        raise ValueError(f"vals shape {tuple(vals.shape)} != idx shape {tuple(idx.shape)}; expected equal shapes")
    lead, kk = vals.shape[:-1], vals.shape[-1]
    weights = vals.reshape(-1, kk).to(W_dec.dtype)
    out = F.embedding_bag(idx.reshape(-1, kk), W_dec, per_sample_weights=weights, mode="sum")
    return out.reshape(*lead, W_dec.shape[1])


class TopKCoder(nn.Module):
    """What a TopK SAE and a TopK transcoder (:class:`jsae.nn.transcoder.TopKTranscoder`) share: the TopK encoder
    of ``W_enc [n_latents, d_in]``, ``b_enc [n_latents]`` with ``k`` and AuxK's decode of ``W_dec``'s rows."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    k: int

    def pre_activations(self, x: Tensor) -> Tensor:
        """Dense ``W_enc x + b_enc``, ``[..., n_latents]``: for analysis, never used in training."""
        return F.linear(x, self.W_enc, self.b_enc)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The k largest ReLU'd pre-activations and their latent indices: ``[..., k]``, ``[..., k]``."""
        return topk_encode(x, self.W_enc, self.b_enc, self.k)

    def encode_with_aux(self, x: Tensor, aux_mask: Tensor, k_aux: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`encode`'s ``(vals, idx)`` plus AuxK's ``(aux_vals, aux_idx)``, each ``[..., k_aux]``.

        ``aux_vals`` are the ``k_aux`` largest ReLU'd pre-activations among the latents where the
        ``[n_latents]`` bool ``aux_mask`` is True (0 for a slot no such latent fills with a positive
        value). Gao et al. (2024, A.2) reconstruct the main reconstruction's error from these with the
        dead latents as the mask (:meth:`jsae.nn.pair.JSAEPair.loss`).
        """
        return topk_encode_aux(x, self.W_enc, self.b_enc, self.k, aux_mask, k_aux)

    def decode_directions(self, vals: Tensor, idx: Tensor) -> Tensor:
        """``sum_a vals[:, a] * W_dec[idx[:, a]]`` without ``b_dec`` (nor a transcoder's skip path), ``[..., d]``
        (:func:`decode_directions`)."""
        return decode_directions(vals, idx, self.W_dec)


class TopKSAE(TopKCoder):
    """A k-sparse autoencoder: ``s = TopK(ReLU(W_enc x + b_enc))``, ``x_hat = W_dec^T s + b_dec``.

    Initialised as in appendix D (after Gao et al., 2024): decoder rows drawn at random and scaled
    to unit norm, ``W_enc = W_dec`` (the paper's ``W_enc = W_dec^T`` in its column convention),
    zero biases. Call :meth:`normalize_decoder_` after every optimiser step.
    """

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        k: int,
        *,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("n_latents", n_latents)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; expected a positive integer")
        check_k(k, n_latents)
        self.d_in, self.n_latents, self.k = d_in, n_latents, k
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        dtype = dtype or torch.get_default_dtype()
        bound = 1.0 / math.sqrt(d_in)
        W_dec = (torch.rand(n_latents, d_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).to(dtype)
        self.W_enc = nn.Parameter(W_dec.clone().to(device))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(W_dec.to(device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}"

    def decode(self, vals: Tensor, idx: Tensor) -> Tensor:
        """Reconstruction from k (value, index) pairs per token, ``[..., d_in]``."""
        if vals.shape != idx.shape:
            raise ValueError(f"vals shape {tuple(vals.shape)} != idx shape {tuple(idx.shape)}; expected equal shapes")
        lead, kk = vals.shape[:-1], vals.shape[-1]
        out = sparse_decode(vals.reshape(-1, kk), idx.reshape(-1, kk), self.W_dec, self.b_dec)
        return out.reshape(*lead, self.d_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(*self.encode(x))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` act on raw ``x``: same latents, raw-space reconstruction.

        ``W_enc *= scale`` (so ``W_enc x = W_enc_old (scale x)``), ``W_dec, b_dec /= scale``. Decoder
        rows are then of norm ``1 / scale``; do not call :meth:`normalize_decoder_` afterwards.
        """
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r} is invalid; expected a positive finite number")
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale decoder rows to unit norm (appendix D: at init and after every step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))
