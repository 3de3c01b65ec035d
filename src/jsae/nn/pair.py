"""The JSAE pair: ``sae_in`` on the MLP input x, ``sae_out`` on y = MLP(x), and the loss (eq. 5).

Evaluation point (appendix D.1, eq. 33): the MLP runs on the *true* input x, so y, the output
SAE's top-k and the activation derivatives in the Jacobian are all taken at x, not at x_hat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jsae.checks import check_features
from jsae.nn.jacobian import DEFAULT_CHUNK_ELEMENTS, active_jacobian, active_jacobian_l1, jacobian_authors_formulation
from jsae.nn.mlp import MLP, mlp_from_module
from jsae.nn.sae import TopKSAE

#: Where the Jacobian and the output SAE's input are evaluated; recorded in every run's params.
EVALUATION_POINT = "true_mlp_input"

#: ``active``: products for batch-active latents + chunked gather-contract (ours, the default);
#: ``authors``: the paper code's formulation (plain MLPs only), kept as the benchmark baseline.
JACOBIAN_IMPLS = ("active", "authors")

#: How activations are scaled before the SAEs see them (recorded in every run's params).
#: ``none``: raw activations, the paper's setup. ``expected_norm``: x and y are each multiplied by
#: one constant so that their mean L2 norm is sqrt(d) (Gao et al., 2024; SAELens'
#: ``expected_average_only_in``). Without it eq. 5 weighs its terms by the MLP's gain: an MLP whose
#: output is 8x larger than its input (tiny-neox) makes MSE(y) dwarf MSE(x) and inflates J by 8x,
#: so one lambda means different things on different models.
ACTIVATION_NORMALIZATIONS = ("none", "expected_norm")


@dataclass
class PairOutput:
    """Everything one forward of a pair computes, for training and evaluation alike."""

    x_hat: Tensor
    y: Tensor
    y_hat: Tensor
    in_vals: Tensor
    in_idx: Tensor
    out_vals: Tensor
    out_idx: Tensor
    jacobian: Tensor | None  # [T, k_out, k_in]
    #: AuxK's reconstructions of each SAE's error from its dead latents, in the SAE's (scaled) units
    #: (``[T, d]``); None unless the forward was given an :class:`AuxK`.
    in_aux_recon: Tensor | None = None
    out_aux_recon: Tensor | None = None


@dataclass(frozen=True)
class AuxK:
    """AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", section A.2) for one loss.

    Each SAE's reconstruction error ``e`` (detached) is reconstructed from its ``k`` dead latents
    with the largest pre-activations, ``e_hat = sum ReLU(pre_j) W_dec[j]`` (no ``b_dec``), and the
    loss gains ``coef * (MSE(e_x, e_hat_x) + MSE(e_y, e_hat_y))``. The MSEs are eq. 5's (averaged
    over tokens and features, in the SAEs' scaled units), so ``coef`` weighs them against eq. 5's
    MSEs whatever the activation scale; Gao et al.'s code divides both their main MSE and this one by
    the batch variance of the target, which eq. 5 does not. Gradients reach only the selected dead
    latents' encoder rows, encoder biases and decoder rows. ``dead_in`` / ``dead_out``: bool
    ``[n_latents]`` masks (training: :meth:`jsae.train.dead.DeadLatentTracker.dead_mask`).
    """

    coef: float
    dead_in: Tensor
    dead_out: Tensor
    k_in: int
    k_out: int

    def __post_init__(self) -> None:
        c = self.coef
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"auxk coef={c!r} is invalid; expected a positive finite number (no AuxK: pass None)")


@dataclass(frozen=True)
class LossParts:
    """Detached results of one :meth:`JSAEPair.loss`: eq. 5's terms and the tensors training needs.

    ``jac`` is the Jacobian term before lam (0 when lam = 0, J is then not computed and
    ``jacobian`` is None); the MSEs are in the SAEs' (scaled) units. ``loss`` is eq. 5's value
    (without the AuxK term, so runs with and without AuxK compare); ``auxk_in`` / ``auxk_out`` are
    the AuxK MSEs before ``coef`` (0 without AuxK). The latents (``in_vals``, ``in_idx``,
    ``out_vals``, ``out_idx``) feed the dead-latent counts, ``jacobian`` the J metrics.
    """

    loss: Tensor
    mse_in: Tensor
    mse_out: Tensor
    jac: Tensor
    in_vals: Tensor
    in_idx: Tensor
    out_vals: Tensor
    out_idx: Tensor
    jacobian: Tensor | None
    auxk_in: Tensor
    auxk_out: Tensor


class _Codes(NamedTuple):
    """Both SAEs' top-k codes of a batch, with y = MLP(x) and the MLP's Jacobian factors at x
    (and, given an :class:`AuxK`, both SAEs' AuxK codes as ``(vals, idx)``)."""

    y: Tensor
    terms: list[tuple[Tensor, Tensor]]
    in_vals: Tensor
    in_idx: Tensor
    out_vals: Tensor
    out_idx: Tensor
    in_aux: tuple[Tensor, Tensor] | None = None
    out_aux: tuple[Tensor, Tensor] | None = None


def mse(target: Tensor, recon: Tensor) -> Tensor:
    """MSE averaged over tokens and features (eq. 5's MSE terms, as the paper's code scales them)."""
    return F.mse_loss(recon, target.to(recon.dtype))


def expected_norm_scale(norms: Tensor, d: int) -> float:
    """``sqrt(d) / mean_t ||a_t||`` from per-token L2 norms: the scale giving mean norm sqrt(d)."""
    if norms.dim() != 1 or norms.shape[0] < 1:
        raise ValueError(f"norms have shape {tuple(norms.shape)}; expected a non-empty [tokens] tensor")
    mean_norm = float(norms.double().mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"activations have mean L2 norm {mean_norm!r}; expected a positive finite number")
    return math.sqrt(d) / mean_norm


def jacobian_l1(J: Tensor) -> Tensor:
    """Eq. 5's Jacobian term without lambda: ``(1 / k^2) sum |J|`` per token, averaged over tokens."""
    return J.abs().sum(dim=(-2, -1)).mean() / (J.shape[-2] * J.shape[-1])


class JSAEPair(nn.Module):
    """A pair of TopK SAEs around a frozen MLP; its trainable parameters are the two SAEs'."""

    def __init__(
        self, sae_in: TopKSAE, sae_out: TopKSAE, mlp: MLP | nn.Module, *, jacobian_impl: str = "active"
    ) -> None:
        super().__init__()
        mlp = mlp_from_module(mlp)
        if sae_in.d_in != mlp.d_in:
            raise ValueError(f"sae_in.d_in={sae_in.d_in} does not match the MLP input width {mlp.d_in}; expected equal")
        if sae_out.d_in != mlp.d_out:
            raise ValueError(
                f"sae_out.d_in={sae_out.d_in} does not match the MLP output width {mlp.d_out}; expected equal"
            )
        if jacobian_impl not in JACOBIAN_IMPLS:
            raise ValueError(f"jacobian_impl={jacobian_impl!r} is invalid; expected one of {JACOBIAN_IMPLS}")
        if jacobian_impl == "authors" and mlp.kind != "plain":
            raise ValueError(f"jacobian_impl='authors' supports plain MLPs only; this MLP is {mlp.kind}")
        self.sae_in, self.sae_out, self.mlp = sae_in, sae_out, mlp
        self.jacobian_impl = jacobian_impl
        self.chunk_elements = DEFAULT_CHUNK_ELEMENTS
        # The SAEs see input_scale * x and output_scale * y (see ACTIVATION_NORMALIZATIONS); every
        # PairOutput field except the latents and J is in raw activation units.
        self.input_scale = 1.0
        self.output_scale = 1.0

    def set_activation_scales(self, input_scale: float, output_scale: float) -> None:
        """The SAEs will see ``input_scale * x`` and ``output_scale * y`` (training in normalised units)."""
        for name, value in (("input_scale", input_scale), ("output_scale", output_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; expected a positive finite number")
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)

    def fold_activation_scales_(self) -> None:
        """Fold the scales into the SAEs' weights (then both are 1): identical latents, J and outputs.

        Exported SAEs therefore act on raw activations, as SAELens and our evaluation expect.
        """
        self.sae_in.fold_input_scale_(self.input_scale)
        self.sae_out.fold_input_scale_(self.output_scale)
        self.input_scale = self.output_scale = 1.0

    def mlp_terms(self, x: Tensor, *, with_terms: bool = True) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """y = MLP(x) and (unless ``with_terms=False``) the Jacobian's diagonal factors at x.

        Both are constants for the SAEs' training (the MLP is frozen, x is data).
        """
        dtype = self.sae_in.W_enc.dtype
        x = x.to(self.mlp.W_out.dtype)
        with torch.no_grad():
            y, terms = self.mlp.jacobian_terms(x) if with_terms else (self.mlp(x), [])
        return y.to(dtype), [(W, d.to(dtype)) for W, d in terms]

    def forward(self, x: Tensor, *, with_jacobian: bool = True) -> PairOutput:
        """Encode x and y = MLP(x), decode both, and (optionally) the differentiable active J."""
        return self._forward(x, with_jacobian)

    def _encode(self, x: Tensor, *, with_terms: bool, aux: AuxK | None = None) -> _Codes:
        check_features(x, self.sae_in.d_in, "x")
        x = x.reshape(-1, self.sae_in.d_in)
        y, terms = self.mlp_terms(x, with_terms=with_terms)
        in_scale, out_scale = self.input_scale, self.output_scale
        x_s = x * in_scale if in_scale != 1.0 else x
        y_s = y * out_scale if out_scale != 1.0 else y
        if aux is None:
            in_vals, in_idx = self.sae_in.encode(x_s)
            out_vals, out_idx = self.sae_out.encode(y_s)
            return _Codes(y, terms, in_vals, in_idx, out_vals, out_idx)
        in_vals, in_idx, *in_aux = self.sae_in.encode_with_aux(x_s, aux.dead_in, aux.k_in)
        out_vals, out_idx, *out_aux = self.sae_out.encode_with_aux(y_s, aux.dead_out, aux.k_out)
        return _Codes(y, terms, in_vals, in_idx, out_vals, out_idx, tuple(in_aux), tuple(out_aux))

    def _row_factor(self, codes: _Codes) -> Tensor:
        """``[T, k_out]``: the factor of each row of J for the ReLU and the two scales.

        An output latent the ReLU switched off has zero value and zero derivative: its row of J is 0.
        The chain rule through the two scales multiplies J by out_scale / in_scale.
        """
        out_active = (codes.out_vals > 0).to(codes.in_vals.dtype)
        return out_active * (self.output_scale / self.input_scale)

    def _decode(self, codes: _Codes, J: Tensor | None) -> PairOutput:
        in_scale, out_scale = self.input_scale, self.output_scale
        x_hat = self.sae_in.decode(codes.in_vals, codes.in_idx)
        y_hat = self.sae_out.decode(codes.out_vals, codes.out_idx)
        return PairOutput(
            x_hat=x_hat / in_scale if in_scale != 1.0 else x_hat,
            y=codes.y,
            y_hat=y_hat / out_scale if out_scale != 1.0 else y_hat,
            in_vals=codes.in_vals,
            in_idx=codes.in_idx,
            out_vals=codes.out_vals,
            out_idx=codes.out_idx,
            jacobian=J,
            in_aux_recon=self.sae_in.decode_directions(*codes.in_aux) if codes.in_aux is not None else None,
            out_aux_recon=self.sae_out.decode_directions(*codes.out_aux) if codes.out_aux is not None else None,
        )

    def _forward(self, x: Tensor, with_jacobian: bool, aux: AuxK | None = None) -> PairOutput:
        """The pair's forward; ``with_jacobian``: also the differentiable, ReLU-masked active J."""
        codes = self._encode(x, with_terms=with_jacobian, aux=aux)
        J = None
        if with_jacobian:
            row_factor = self._row_factor(codes)
            J = self._jacobian_value(codes.terms, codes.out_idx, codes.in_idx) * row_factor.unsqueeze(-1)
        return self._decode(codes, J)

    def _forward_with_l1(self, x: Tensor, aux: AuxK | None = None) -> tuple[PairOutput, Tensor]:
        """The forward with J and eq. 5's Jacobian term (fused with J's computation for ``active``)."""
        codes = self._encode(x, with_terms=True, aux=aux)
        row_factor = self._row_factor(codes)
        if self.jacobian_impl == "active":
            args = self._jacobian_args(codes.terms, codes.out_idx, codes.in_idx)
            weight = row_factor / (row_factor.shape[0] * self.sae_out.k * self.sae_in.k)
            l1, J = active_jacobian_l1(*args, weight, chunk_elements=self.chunk_elements)
            J = J * row_factor.unsqueeze(-1)
        else:
            J = self._jacobian_value(codes.terms, codes.out_idx, codes.in_idx) * row_factor.unsqueeze(-1)
            l1 = jacobian_l1(J)
        return self._decode(codes, J), l1

    def _jacobian_args(self, terms: list[tuple[Tensor, Tensor]], out_idx: Tensor, in_idx: Tensor) -> tuple:
        dtype = self.sae_in.W_dec.dtype
        terms = [(W.to(dtype), d) for W, d in terms]
        return self.sae_out.W_enc, self.mlp.W_out.to(dtype), terms, self.sae_in.W_dec, out_idx, in_idx

    def _jacobian_value(self, terms: list[tuple[Tensor, Tensor]], out_idx: Tensor, in_idx: Tensor) -> Tensor:
        W_enc_out, W_out, terms, W_dec_in, out_idx, in_idx = self._jacobian_args(terms, out_idx, in_idx)
        if self.jacobian_impl == "authors":
            [(W_in, phi_prime)] = terms
            return jacobian_authors_formulation(W_enc_out, W_out, W_in, phi_prime, W_dec_in, out_idx, in_idx)
        return active_jacobian(W_enc_out, W_out, terms, W_dec_in, out_idx, in_idx, chunk_elements=self.chunk_elements)

    def jacobian(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(J, in_idx, out_idx)`` with ``J[b, a, c] = d s_y[out_idx[b, a]] / d s_x[in_idx[b, c]]``."""
        out = self.forward(x)
        assert out.jacobian is not None
        return out.jacobian, out.in_idx, out.out_idx

    def loss(self, x: Tensor, lam: float = 1.0, auxk: AuxK | None = None) -> tuple[Tensor, LossParts]:
        """Eq. 5: ``MSE(x, x_hat) + MSE(y, y_hat) + lam / k^2 sum |J|``, averaged over tokens.

        ``lam = 0`` trains two traditional SAEs (the Jacobian is then not computed). ``auxk``
        adds the AuxK term (:class:`AuxK`) to the differentiable loss; None (the default) computes
        exactly what it did before AuxK existed. Returns the differentiable loss and its detached
        :class:`LossParts`; with activation scales set, the MSEs are in the SAEs' scaled units.
        """
        lam_value = float(lam)
        if not lam_value >= 0 or lam_value == float("inf"):
            raise ValueError(f"lam={lam!r} is invalid; expected a finite number >= 0")
        if lam_value > 0:
            out, jac = self._forward_with_l1(x, auxk)
        else:
            out, jac = self._forward(x, with_jacobian=False, aux=auxk), None
        x = x.reshape(-1, self.sae_in.d_in)
        # In the SAEs' (scaled) units: MSE(c x, c x_hat) = c^2 MSE(x, x_hat).
        mse_in = mse(x, out.x_hat) * self.input_scale**2
        mse_out = mse(out.y, out.y_hat) * self.output_scale**2
        total = mse_in + mse_out
        zero = torch.zeros((), dtype=total.dtype, device=total.device)
        if jac is None:
            jac = zero
        else:
            total = total + lam_value * jac
        eq5 = total.detach()
        aux_in = aux_out = zero
        if auxk is not None:
            assert out.in_aux_recon is not None and out.out_aux_recon is not None
            # The errors in raw units, their models back from the scaled units, then c^2: as mse_in / mse_out.
            aux_in = self._aux_mse((x - out.x_hat).detach(), out.in_aux_recon, self.input_scale)
            aux_out = self._aux_mse((out.y - out.y_hat).detach(), out.out_aux_recon, self.output_scale)
            total = total + auxk.coef * (aux_in + aux_out)
        parts = LossParts(
            loss=eq5,
            mse_in=mse_in.detach(),
            mse_out=mse_out.detach(),
            jac=jac.detach(),
            in_vals=out.in_vals.detach(),
            in_idx=out.in_idx.detach(),
            out_vals=out.out_vals.detach(),
            out_idx=out.out_idx.detach(),
            jacobian=out.jacobian.detach() if out.jacobian is not None else None,
            auxk_in=aux_in.detach(),
            auxk_out=aux_out.detach(),
        )
        return total, parts

    @staticmethod
    def _aux_mse(error: Tensor, aux_recon_scaled: Tensor, scale: float) -> Tensor:
        """``MSE(c e, e_hat)`` for the error ``e`` in raw units and its model ``e_hat`` in scaled units."""
        return mse(error, aux_recon_scaled / scale if scale != 1.0 else aux_recon_scaled) * scale**2

    @torch.no_grad()
    def normalize_decoders_(self) -> None:
        """Unit-norm decoder rows in both SAEs (appendix D: after every optimiser step)."""
        self.sae_in.normalize_decoder_()
        self.sae_out.normalize_decoder_()
