"""TopK transcoders and skip transcoders: a sparse replacement of an MLP, the JSAE's peer methods.

A *transcoder* (Dunefsky et al. 2024; TopK as in EleutherAI's ``sparsify``, ``transcode=True``) encodes the MLP
input x and decodes to the MLP output y:

    s = TopK(ReLU(W_enc x + b_enc)),    y_hat = W_dec^T s + b_dec.

A *skip transcoder* (Paulo, Shabalin, Belrose 2025, "Transcoders Beat Sparse Autoencoders for Interpretability";
``sparsify``'s ``skip_connection=True``) adds a dense linear path: ``y_hat = W_dec^T s + b_dec + W_skip x``.

Shapes follow :mod:`jsae.nn.sae`: ``W_enc [n_latents, d_in]``, ``W_dec [n_latents, d_out]`` (one row per latent),
``b_enc [n_latents]``, ``b_dec [d_out]``, ``W_skip [d_out, d_in]``. The encoder and decode are the TopK SAE's
(:class:`jsae.nn.sae.TopKCoder`: a backward over the k selected latents only; :func:`jsae.nn.sae.sparse_decode`).

Initialisation is sparsify's (and so Paulo et al.'s), not the TopK SAE's appendix-D tying ``W_enc = W_dec``: the
encoder and decoder live in different spaces (x and y), so there is nothing to tie. ``W_enc`` uniform in
``[-1/sqrt(d_in), 1/sqrt(d_in)]`` (``nn.Linear``'s default), ``W_dec = 0``, ``W_skip = 0``, zero biases; then
:meth:`TopKTranscoder.init_biases_` centres the pre-activations on the data (``b_enc = -W_enc mean(x)``) and
starts the output at the data's mean (``b_dec = mean(y)``), as sparsify's trainer does on its first batch. The
decoder rows are *not* renormalised (sparsify neither renormalises nor projects a transcoder's decoder gradient).

``tests/test_transcoder.py`` checks the forward against ``sparsify.SparseCoder`` given identical weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from jsae.checks import check_k
from jsae.nn.sae import TopKCoder, sparse_decode

#: The baselines, by the name used in configs, paths and MLflow (``method``): whether each has a skip path.
TRANSCODER_METHODS = {"transcoder": False, "skip_transcoder": True}


def check_method(method: object) -> str:
    """``method`` must name a transcoder baseline (:data:`TRANSCODER_METHODS`)."""
    if method not in TRANSCODER_METHODS:
        raise ValueError(f"method={method!r} is invalid; expected one of {', '.join(TRANSCODER_METHODS)}")
    return str(method)


def _check_scale(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid; expected a positive finite number")
    return float(value)


class TopKTranscoder(TopKCoder):
    """``y_hat = W_dec^T TopK(ReLU(W_enc x + b_enc)) + b_dec`` (``+ W_skip x`` with ``skip=True``); the encoder,
    :meth:`encode_with_aux` and :meth:`decode_directions` are :class:`jsae.nn.sae.TopKCoder`'s."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_latents: int,
        k: int,
        *,
        skip: bool = False,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("n_latents", n_latents)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; expected a positive integer")
        check_k(k, n_latents)
        self.d_in, self.d_out, self.n_latents, self.k, self.skip = d_in, d_out, n_latents, k, bool(skip)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        dtype = dtype or torch.get_default_dtype()
        bound = 1.0 / math.sqrt(d_in)
        W_enc = (torch.rand(n_latents, d_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        self.W_enc = nn.Parameter(W_enc.to(dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(torch.zeros(n_latents, d_out, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype, device=device))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=dtype, device=device)) if skip else None

    @property
    def method(self) -> str:
        return "skip_transcoder" if self.skip else "transcoder"

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, n_latents={self.n_latents}, k={self.k}, skip={self.skip}"

    def decode(self, vals: Tensor, idx: Tensor, x: Tensor | None = None) -> Tensor:
        """``[..., d_out]`` from k (value, index) pairs per token; a skip transcoder also needs its input ``x``."""
        if vals.shape != idx.shape:
            raise ValueError(f"vals shape {tuple(vals.shape)} != idx shape {tuple(idx.shape)}; expected equal shapes")
        lead, kk = vals.shape[:-1], vals.shape[-1]
        out = sparse_decode(vals.reshape(-1, kk), idx.reshape(-1, kk), self.W_dec, self.b_dec)
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip transcoder decodes with its input; expected decode(vals, idx, x)")
            out = out + x.reshape(-1, self.d_in).to(self.W_skip.dtype) @ self.W_skip.t()
        return out.reshape(*lead, self.d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(*self.encode(x), x)

    @torch.no_grad()
    def init_biases_(self, x_mean: Tensor, y_mean: Tensor) -> None:
        """``b_enc = -W_enc mean(x)`` (pre-activations centred on the data) and ``b_dec = mean(y)``: sparsify's
        initialisation of a transcoder on its first batch, from given means (``[d_in]``, ``[d_out]``)."""
        x_mean = torch.as_tensor(x_mean)
        y_mean = torch.as_tensor(y_mean)
        if x_mean.shape != (self.d_in,) or y_mean.shape != (self.d_out,):
            raise ValueError(f"x_mean {tuple(x_mean.shape)} and y_mean {tuple(y_mean.shape)} are invalid; "
                             f"expected [{self.d_in}] and [{self.d_out}]")
        x_mean = x_mean.to(device=self.W_enc.device, dtype=torch.float64)
        self.b_enc.copy_(-(self.W_enc.double() @ x_mean))
        self.b_dec.copy_(y_mean)

    @torch.no_grad()
    def fold_scales_(self, input_scale: float, output_scale: float) -> None:
        """Make a transcoder trained on ``a x -> b y`` act on raw activations: same latents, raw-space output.

        ``W_enc *= a``; ``W_dec, b_dec /= b``; ``W_skip *= a / b``.
        """
        a, b = _check_scale("input_scale", input_scale), _check_scale("output_scale", output_scale)
        self.W_enc.mul_(a)
        self.W_dec.div_(b)
        self.b_dec.div_(b)
        if self.W_skip is not None:
            self.W_skip.mul_(a / b)
