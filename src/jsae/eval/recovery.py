"""Recovery of a planted ground truth (:mod:`jsae.data.planted`) by a JSAE pair: one definition per metric.

Three questions, each a pure function on arrays (docs/metrics.md, "Planted ground truth — recovery metrics"):

* **Features** — does each SAE's dictionary contain the true directions? Per true feature the best cosine of
  any decoder row (:func:`feature_recovery`), against the chance level of random directions
  (:func:`random_max_cosine`).
* **Edges** — does the pair's Jacobian J = d s_y / d s_x (the paper's eq. 16, between active latents) put
  its mass on the planted edges? |J| is aggregated per latent pair (:class:`LatentPairScores`), latents are
  mapped to true features (:func:`match_latents`), latent pairs to feature pairs
  (:func:`feature_pair_scores`), and the feature-pair scores are ranked against the planted support
  (:func:`edge_recovery`: precision / recall / F1 over a grid of tau, best F1, ROC AUC, average precision).
* **Kinds** — do the linearity probes' labels (linear / JumpReLU / other, :mod:`jsae.eval.probes`) of probed
  functions that land on planted edges agree with the planted kinds (:func:`kind_agreement`)?

No sklearn: the ranking metrics are a few lines of numpy, tested against brute-force definitions.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jsae.data.planted import KINDS, PlantedModel
from jsae.nn.pair import JSAEPair

#: A true feature counts as recovered when some decoder row has cosine above this with it.
RECOVERED_COSINE = 0.9
#: A latent whose best cosine with any true feature is below this is unmatched (it maps to no feature).
MATCH_FLOOR = 0.5
#: The grid of tau for precision / recall / F1, as fractions of the largest feature-pair score (scale-free:
#: J's units differ between pairs and models; multiplying J by c leaves every grid metric unchanged).
REL_TAUS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)

#: Metric keys (``recovery/...``); the per-SAE ones via :func:`recovery_key`.
RECOVERY_PREFIX = "recovery/"
FEATURE_METRICS = ("mean_max_cosine", "frac_recovered", "chance_max_cosine", "matched_frac")
EDGE_ROC_AUC_KEY = "recovery/edge/roc_auc"
EDGE_PR_AUC_KEY = "recovery/edge/pr_auc"
EDGE_BEST_F1_KEY = "recovery/edge/best_f1"
EDGE_BEST_PRECISION_KEY = "recovery/edge/best_precision"
EDGE_BEST_RECALL_KEY = "recovery/edge/best_recall"
KIND_AGREEMENT_KEY = "recovery/kind/agreement"
KIND_N_KEY = "recovery/kind/n_mapped"


def recovery_key(side: str, name: str) -> str:
    """``recovery/{side}/{name}``: a feature-recovery metric of one SAE (``in``: vs D_x, ``out``: vs D_y)."""
    return f"{RECOVERY_PREFIX}{side}/{name}"


def edge_f1_key(rel_tau: float) -> str:
    """``recovery/edge/f1_at_{q}``: F1 with tau = q x the largest feature-pair score."""
    return f"{RECOVERY_PREFIX}edge/f1_at_{rel_tau:g}"


def _np(a: Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def cosine_matrix(W_dec: Tensor | np.ndarray, D: Tensor | np.ndarray) -> np.ndarray:
    """``[n_latents, n_features]`` float64: signed cosine of decoder row a (``W_dec [n_latents, d]``) with true
    feature column j (``D [d, n_features]``). Signed: a latent is non-negative, so -D_j is not feature j."""
    W, Dn = _np(W_dec).astype(np.float64), _np(D).astype(np.float64)
    if W.ndim != 2 or Dn.ndim != 2 or W.shape[1] != Dn.shape[0]:
        raise ValueError(f"W_dec has shape {W.shape} and D {Dn.shape}; expected [n_latents, d] and [d, n_features]")
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-300)
    Dn = Dn / np.maximum(np.linalg.norm(Dn, axis=0, keepdims=True), 1e-300)
    return W @ Dn


def feature_recovery(W_dec: Tensor | np.ndarray, D: Tensor | np.ndarray,
                     threshold: float = RECOVERED_COSINE) -> dict[str, float | np.ndarray]:
    """Per true feature j, ``best_j = max_a cos(W_dec[a], D[:, j])``; returns ``mean_max_cosine`` (mean of
    best_j over features), ``frac_recovered`` (share of features with best_j > threshold) and the arrays
    ``best_cosine`` / ``best_latent`` (ties: the lowest latent index)."""
    if not (isinstance(threshold, (int, float)) and -1 <= threshold <= 1):
        raise ValueError(f"threshold={threshold!r} is invalid; expected a cosine in [-1, 1]")
    C = cosine_matrix(W_dec, D)
    best = C.max(axis=0)
    return {"mean_max_cosine": float(best.mean()), "frac_recovered": float((best > threshold).mean()),
            "best_cosine": best, "best_latent": C.argmax(axis=0)}


def random_max_cosine(d: int, n: int, *, grid: int = 200_001) -> float:
    """The chance level of ``mean_max_cosine``: E[max of n signed cosines] between a fixed unit vector and n
    independent uniform random unit vectors in R^d. The angle theta to a random direction has density
    proportional to sin(theta)^(d - 2) on [0, pi]; E[max] = integral of c d(F(c)^n), F the CDF of cos(theta),
    integrated numerically on ``grid`` angles (error < 1e-4 for d >= 2)."""
    for name, v, lo in (("d", d, 2), ("n", n, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} is invalid; expected an integer >= {lo}")
    theta = np.linspace(np.pi, 0.0, grid)  # ascending cosine
    # the density in theta, integrated per cell (midpoint rule), in log space so large d does not underflow
    mid = (theta[:-1] + theta[1:]) / 2
    logw = (d - 2) * np.log(np.maximum(np.sin(mid), 1e-300))
    w = np.exp(logw - logw.max())
    F = np.concatenate([[0.0], np.cumsum(w) / w.sum()])  # CDF of cos at the grid points
    Fn = F**n
    c_mid = np.cos(mid)
    return float(np.sum(c_mid * np.diff(Fn)))


def match_latents(W_dec: Tensor | np.ndarray, D: Tensor | np.ndarray,
                  floor: float = MATCH_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Each latent to its best-cosine true feature: ``(feature [n_latents] int64, cosine [n_latents])``.

    Rule: latent a maps to ``argmax_j cos(W_dec[a], D[:, j])`` (ties: the lowest feature index); a latent
    whose best cosine is below ``floor`` is unmatched (feature -1). Several latents may map to one feature
    (feature splitting); a feature may get none.
    """
    if not (isinstance(floor, (int, float)) and -1 <= floor <= 1):
        raise ValueError(f"floor={floor!r} is invalid; expected a cosine in [-1, 1]")
    C = cosine_matrix(W_dec, D)
    feature, cos = C.argmax(axis=1), C.max(axis=1)
    return np.where(cos >= floor, feature, -1).astype(np.int64), cos


# --------------------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------------------


class LatentPairScores:
    """Streaming ``sum |J|`` and co-activation counts per (output latent, input latent) pair.

    ``update`` takes one batch of the pair's J (``[T, k_out, k_in]``) with the latents' indices and values;
    an element counts only where **both** latents are active (value > 0): J is also defined for a TopK slot
    the ReLU switched off, but that latent did not fire. The result equals :func:`latent_pair_scores` on the
    concatenated batches.
    """

    def __init__(self, n_out: int, n_in: int) -> None:
        self.n_out, self.n_in = n_out, n_in
        self.sum_abs = torch.zeros(n_out * n_in, dtype=torch.float64)
        self.count = torch.zeros(n_out * n_in, dtype=torch.float64)
        self.n_tokens = 0

    def update(self, J: Tensor, in_idx: Tensor, out_idx: Tensor, in_vals: Tensor, out_vals: Tensor) -> None:
        T, k_out, k_in = J.shape
        if in_idx.shape != (T, k_in) or out_idx.shape != (T, k_out) or in_vals.shape != in_idx.shape \
                or out_vals.shape != out_idx.shape:
            raise ValueError(f"J {tuple(J.shape)}, in_idx {tuple(in_idx.shape)}, out_idx {tuple(out_idx.shape)}: "
                             "expected J [T, k_out, k_in] with indices and values [T, k_in] and [T, k_out]")
        both = (out_vals > 0)[:, :, None] & (in_vals > 0)[:, None, :]
        flat = (out_idx.long()[:, :, None] * self.n_in + in_idx.long()[:, None, :])[both].cpu()
        self.sum_abs.index_add_(0, flat, J.detach().abs()[both].double().cpu())
        self.count.index_add_(0, flat, torch.ones(flat.shape[0], dtype=torch.float64))
        self.n_tokens += T

    def mean_abs(self, min_count: int = 1) -> np.ndarray:
        """``[n_out, n_in]``: mean |J| over the tokens where both latents are active; 0 for a pair co-active on
        fewer than ``min_count`` tokens (never co-active: no evidence of an edge)."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count={min_count!r} is invalid; expected a positive integer")
        s, c = self.sum_abs.numpy(), self.count.numpy()
        out = np.where(c >= min_count, s / np.maximum(c, 1), 0.0)
        return out.reshape(self.n_out, self.n_in)


def latent_pair_scores(J: Tensor, in_idx: Tensor, out_idx: Tensor, in_vals: Tensor, out_vals: Tensor,
                       n_out: int, n_in: int, min_count: int = 1) -> np.ndarray:
    """``[n_out, n_in]``: mean |J| per latent pair over the tokens where both are active (the definition;
    :class:`LatentPairScores` streams it)."""
    acc = LatentPairScores(n_out, n_in)
    acc.update(J, in_idx, out_idx, in_vals, out_vals)
    return acc.mean_abs(min_count)


def feature_pair_scores(latent_scores: np.ndarray, out_match: np.ndarray, in_match: np.ndarray,
                        n_y: int, n_x: int) -> np.ndarray:
    """``[n_y, n_x]``: the score of feature pair (i, j) is the **max** over latent pairs (a, c) with
    ``out_match[a] = i`` and ``in_match[c] = j`` (the best evidence among split latents); 0 where no
    matched latent pair exists (an unrecovered feature cannot recover its edges)."""
    S = _np(latent_scores).astype(np.float64)
    om, im = _np(out_match).astype(np.int64), _np(in_match).astype(np.int64)
    if S.shape != (om.shape[0], im.shape[0]):
        raise ValueError(f"latent_scores has shape {S.shape}; expected ({om.shape[0]}, {im.shape[0]}) from the matches")
    if om.max(initial=-1) >= n_y or im.max(initial=-1) >= n_x:
        raise ValueError(f"a match names feature {max(om.max(initial=-1), im.max(initial=-1))}; "
                         f"expected features < n_y={n_y} / n_x={n_x}")
    out = np.zeros((n_y, n_x), dtype=np.float64)
    a, c = np.nonzero(om >= 0)[0], np.nonzero(im >= 0)[0]
    if a.size and c.size:
        sub = S[np.ix_(a, c)]
        np.maximum.at(out, (om[a][:, None].repeat(c.size, 1), im[c][None, :].repeat(a.size, 0)), sub)
    return out


def _check_scores(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, t = _np(scores).astype(np.float64).reshape(-1), _np(truth).astype(bool).reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"scores have {s.size} entries and truth {t.size}; expected one truth value per score")
    if not np.isfinite(s).all():
        raise ValueError(f"scores have {int((~np.isfinite(s)).sum())} non-finite values; expected finite scores")
    if t.all() or not t.any():
        raise ValueError(f"truth has {int(t.sum())} positives of {t.size}; expected both positives and negatives")
    return s, t


def precision_recall_f1(scores: np.ndarray, truth: np.ndarray, taus: Iterable[float]) -> dict[str, np.ndarray]:
    """At each tau, the support ``score > tau`` against ``truth``: ``precision`` = TP / (TP + FP) (NaN when
    nothing is predicted), ``recall`` = TP / P, ``f1`` = 2 TP / (2 TP + FP + FN) (0 when TP = 0)."""
    s, t = _check_scores(scores, truth)
    tau = np.asarray(list(taus), dtype=np.float64)
    pred = s[None, :] > tau[:, None]
    tp = (pred & t).sum(1).astype(np.float64)
    fp = (pred & ~t).sum(1).astype(np.float64)
    fn = t.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
    return {"tau": tau, "precision": precision, "recall": tp / t.sum(), "f1": 2 * tp / (2 * tp + fp + fn)}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    start = np.r_[True, sv[1:] != sv[:-1]]
    group = np.cumsum(start) - 1
    first = np.nonzero(start)[0]
    last = np.r_[first[1:], v.size] - 1
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2 + 1
    return ranks


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random edge > score of a random non-edge) + P(tie) / 2
    (Mann–Whitney U / (P N), from average ranks)."""
    s, t = _check_scores(scores, truth)
    r = average_ranks(s)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    return float((r[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _cuts(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, TP, FP)`` of the support ``score >= threshold`` at every distinct score, descending."""
    order = np.argsort(-s, kind="mergesort")
    ss, tt = s[order], t[order]
    tp, fp = np.cumsum(tt), np.cumsum(~tt)
    last = np.r_[ss[1:] != ss[:-1], True]  # the last element of each run of equal scores
    return ss[last], tp[last].astype(np.float64), fp[last].astype(np.float64)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """PR AUC as average precision: ``sum_k (R_k - R_{k-1}) P_k`` over the cuts ``score >= t_k`` at the
    distinct scores, descending (``R_0 = 0``; tied scores enter together) — sklearn's definition."""
    s, t = _check_scores(scores, truth)
    _, tp, fp = _cuts(s, t)
    recall = tp / t.sum()
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The best F1 over every cut ``score >= t`` at a distinct score (an oracle tau), with its precision,
    recall and threshold (the highest threshold among equal F1s)."""
    s, t = _check_scores(scores, truth)
    thr, tp, fp = _cuts(s, t)
    fn = t.sum() - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    k = int(np.argmax(f1))
    return {"f1": float(f1[k]), "precision": float(tp[k] / (tp[k] + fp[k])), "recall": float(tp[k] / t.sum()),
            "threshold": float(thr[k])}


def edge_recovery(scores: np.ndarray, truth: np.ndarray,
                  rel_taus: Iterable[float] = REL_TAUS) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Feature-pair scores ``[n_y, n_x]`` against the planted support (bool, same shape): metrics (ROC AUC,
    average precision, best F1 with its precision / recall, F1 at each ``tau = q x max score``) and arrays
    (``edge_tau``, ``edge_rel_tau``, ``edge_precision``, ``edge_recall``, ``edge_f1``)."""
    rel = np.asarray(list(rel_taus), dtype=np.float64)
    if rel.size == 0 or not np.all((rel > 0) & (rel < 1)):
        raise ValueError(f"rel_taus={rel.tolist()} is invalid; expected fractions in (0, 1) of the largest score")
    s, t = _check_scores(scores, truth)
    grid = precision_recall_f1(s, t, rel * s.max())
    best = best_f1(s, t)
    metrics = {EDGE_ROC_AUC_KEY: roc_auc(s, t), EDGE_PR_AUC_KEY: average_precision(s, t),
               EDGE_BEST_F1_KEY: best["f1"], EDGE_BEST_PRECISION_KEY: best["precision"],
               EDGE_BEST_RECALL_KEY: best["recall"]}
    metrics.update({edge_f1_key(q): float(f) for q, f in zip(rel, grid["f1"])})
    arrays = {"edge_tau": grid["tau"], "edge_rel_tau": rel, "edge_precision": grid["precision"],
              "edge_recall": grid["recall"], "edge_f1": grid["f1"]}
    return metrics, arrays


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


def kind_agreement(out_latent: np.ndarray, in_latent: np.ndarray, label: np.ndarray, out_match: np.ndarray,
                   in_match: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The probes' labels against the planted kinds on the probed functions that land on planted edges.

    A probed function (output latent a, input latent c, probe label 0/1/2 as ``KINDS``) lands on planted edge
    (i, j) when ``out_match[a] = i``, ``in_match[c] = j`` and ``kinds[i, j] >= 0`` (``kinds``: the
    ``[n_y, n_x]`` kind matrix, -1 off the edges; :meth:`jsae.data.planted.PlantedEdges.kind_matrix`). Returns
    the confusion matrix ``[planted kind, probe label]`` (int64, 3 x 3) and ``agreement`` (its trace over its
    total; NaN when no function lands on an edge) with ``n_mapped`` (that total).
    """
    a, c, lab = _np(out_latent).astype(np.int64), _np(in_latent).astype(np.int64), _np(label).astype(np.int64)
    om, im, K = _np(out_match).astype(np.int64), _np(in_match).astype(np.int64), _np(kinds).astype(np.int64)
    if not (a.shape == c.shape == lab.shape) or a.ndim != 1:
        raise ValueError(f"out_latent {a.shape}, in_latent {c.shape}, label {lab.shape}: expected equal 1-D shapes")
    if lab.size and (lab.min() < 0 or lab.max() >= len(KINDS)):
        raise ValueError(f"label holds {int(lab.min())}..{int(lab.max())}; expected codes 0..{len(KINDS) - 1} "
                         f"({'/'.join(KINDS)})")
    if a.size and (a.min() < 0 or a.max() >= om.size or c.min() < 0 or c.max() >= im.size):
        raise ValueError(f"latent indices exceed the matches ({om.size} output / {im.size} input latents); "
                         "expected latents of the matched SAEs")
    i, j = om[a], im[c]
    ok = (i >= 0) & (j >= 0)
    planted = np.full(a.shape, -1, dtype=np.int64)
    planted[ok] = K[i[ok], j[ok]]
    on_edge = planted >= 0
    confusion = np.zeros((len(KINDS), len(KINDS)), dtype=np.int64)
    np.add.at(confusion, (planted[on_edge], lab[on_edge]), 1)
    total = int(confusion.sum())
    agreement = float(np.trace(confusion) / total) if total else math.nan
    return confusion, {KIND_AGREEMENT_KEY: agreement, KIND_N_KEY: float(total)}


# --------------------------------------------------------------------------------------------------
# A pair against a planted model, end to end
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def pair_recovery(pair: JSAEPair, planted: PlantedModel, batches: Iterable[Tensor], *, floor: float = MATCH_FLOOR,
                  min_count: int = 1, rel_taus: Iterable[float] = REL_TAUS,
                  threshold: float = RECOVERED_COSINE) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Feature and edge recovery of ``pair`` on ``planted``: J (the pair's, at the true MLP input, as in
    evaluation) over the token batches ``x [T, d]``; returns metrics and arrays (incl. the matches
    ``in_match`` / ``out_match`` that :func:`kind_agreement` needs, and both score matrices)."""
    metrics: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    matches = {}
    for side, sae, D in (("in", pair.sae_in, planted.D_x), ("out", pair.sae_out, planted.D_y)):
        fr = feature_recovery(sae.W_dec, D, threshold)
        match, _ = match_latents(sae.W_dec, D, floor)
        matches[side] = match
        metrics[recovery_key(side, "mean_max_cosine")] = float(fr["mean_max_cosine"])
        metrics[recovery_key(side, "frac_recovered")] = float(fr["frac_recovered"])
        metrics[recovery_key(side, "chance_max_cosine")] = random_max_cosine(planted.d, sae.n_latents)
        metrics[recovery_key(side, "matched_frac")] = float((match >= 0).mean())
        arrays[f"{side}_best_cosine"] = np.asarray(fr["best_cosine"])
        arrays[f"{side}_match"] = match
    acc = LatentPairScores(pair.sae_out.n_latents, pair.sae_in.n_latents)
    dev, dtype = pair.sae_in.W_enc.device, pair.sae_in.W_enc.dtype
    for x in batches:
        out = pair(x.to(device=dev, dtype=dtype))
        assert out.jacobian is not None
        acc.update(out.jacobian, out.in_idx, out.out_idx, out.in_vals, out.out_vals)
    if acc.n_tokens == 0:
        raise ValueError("no tokens in batches; expected at least one batch of MLP inputs")
    latent = acc.mean_abs(min_count)
    feat = feature_pair_scores(latent, matches["out"], matches["in"], planted.n_y, planted.n_x)
    truth = _np(planted.edge_mask())
    edge_metrics, edge_arrays = edge_recovery(feat, truth, rel_taus)
    metrics.update(edge_metrics)
    arrays.update(edge_arrays)
    # the truth beside the scores: the report's intervals resample output features (rows) of both
    arrays.update({"latent_scores": latent, "feature_scores": feat, "edge_truth": truth.astype(bool)})
    return metrics, arrays


# --------------------------------------------------------------------------------------------------
# Command line: python -m jsae recovery (the workflow's `recovery` rule)
# --------------------------------------------------------------------------------------------------

#: The probes' identity fields that must equal the pair's (the labels must come from this very pair).
PROBE_IDENTITY = ("model", "layer", "control", "lam", "seed")


def probe_labels(probes_json: str | os.PathLike[str], identity: dict[str, Any]) -> dict[str, np.ndarray]:
    """``out_latent``, ``in_latent``, ``label`` of a probes.json's npz, after checking it probed this pair."""
    from jsae.io import read_json

    doc = read_json(probes_json)
    pair = doc.get("pair") if isinstance(doc, dict) else None
    if not isinstance(pair, dict) or not isinstance(doc.get("arrays"), str):
        raise ValueError(f"{probes_json} has no 'pair' / 'arrays' entries; expected a probes.json from jsae probes")
    for key in PROBE_IDENTITY:
        a, b = pair.get(key), identity.get(key)
        if a is not None and b is not None and str(a) != str(b):
            raise ValueError(f"{probes_json} probed {key}={a!r} but the pair has {key}={b!r}; expected the probes of "
                             "the same pair")
    npz = Path(probes_json).with_name(doc["arrays"])
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} does not exist; expected the probe arrays next to {probes_json}")
    with np.load(npz) as z:
        missing = [k for k in ("out_latent", "in_latent", "label") if k not in z.files]
        if missing:
            raise ValueError(f"{npz} lacks {', '.join(missing)}; expected per-function probe arrays (jsae probes)")
        return {k: z[k] for k in ("out_latent", "in_latent", "label")}


def cli(argv: list[str]) -> int:
    from jsae.eval.inputs import pair_parser, run_pair_command

    p = pair_parser("python -m jsae recovery",
                    "Recovery of a planted ground truth by a trained pair: feature recovery of both SAEs, edge "
                    "recovery from the pair's Jacobian (ROC AUC, PR AUC, best F1, F1 on a grid of tau) and, with "
                    "--probes, the kind agreement of the probes' labels. Writes recovery.json and recovery_arrays.npz.")
    p.set_defaults(layer=0)
    for action in p._actions:  # a planted model has one MLP: --layer is 0 unless given
        if action.dest == "layer":
            action.required = False
    p.add_argument("--out", required=True, help="output path of recovery.json (recovery_arrays.npz goes next to it)")
    p.add_argument("--probes", default=None, help="probes.json of the same pair (kind agreement); optional")
    p.add_argument("--n-tokens", type=int, default=None, help="validation tokens for the Jacobian scores "
                   "(default: all)")
    p.add_argument("--batch-size", type=int, default=2048, help="tokens per pair forward")
    p.add_argument("--min-count", type=int, default=1,
                   help="latent pairs co-active on fewer tokens score 0 (default: %(default)s)")
    return run_pair_command(p, argv, _recovery_cli)


def _recovery_cli(args: argparse.Namespace) -> int:
    from jsae.checks import check_positive_int
    from jsae.cli import tracking_uri
    from jsae.data.planted import is_planted_dir, load_planted, planted_summary
    from jsae.eval.inputs import cache_rows, load_inputs, pair_identity, run_field, token_count, write_pair_outputs
    from jsae.tracking import log_to_pair_run

    check_positive_int("n_tokens", args.n_tokens, allow_none=True)
    check_positive_int("batch_size", args.batch_size)
    check_positive_int("min_count", args.min_count)
    if not is_planted_dir(args.model):
        raise ValueError(f"--model {args.model} is not a planted model directory; expected one written by "
                         "python -m jsae planted (recovery needs the ground truth)")
    if args.probes is not None and not Path(args.probes).is_file():
        raise FileNotFoundError(f"--probes {args.probes} does not exist; expected a probes.json of the same pair")
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    planted = load_planted(args.model)
    identity = pair_identity(inputs.run, inputs.pair)
    n = token_count(inputs.cache, args.n_tokens)
    metrics, arrays = pair_recovery(inputs.pair, planted, cache_rows(inputs.cache, n, args.batch_size),
                                    min_count=args.min_count)
    settings: dict[str, Any] = {"n_tokens": n, "recovered_cosine": RECOVERED_COSINE, "match_floor": MATCH_FLOOR,
                                "rel_taus": list(REL_TAUS), "min_count": args.min_count, "cache": str(args.cache),
                                "run": str(args.run), "probes": None if args.probes is None else str(args.probes),
                                "planted": planted_summary(planted)}
    if args.probes is not None:
        labels = probe_labels(args.probes, identity)
        confusion, kinds = kind_agreement(labels["out_latent"], labels["in_latent"], labels["label"],
                                          arrays["out_match"], arrays["in_match"],
                                          planted.edges.kind_matrix(planted.n_y, planted.n_x).numpy())
        metrics.update(kinds)
        arrays["kind_confusion"] = confusion
        settings["kind_confusion"] = {"rows": "planted kind", "columns": "probe label", "kinds": list(KINDS),
                                      "counts": confusion.tolist()}
    npz = write_pair_outputs(args.out, "recovery_arrays.npz", metrics, arrays, identity, settings)
    logging.getLogger("jsae.eval.recovery").info(
        "wrote %s and %s: features in %.3f / out %.3f (mean max cosine), edges ROC AUC %.3f, best F1 %.3f%s", args.out,
        npz, metrics[recovery_key("in", "mean_max_cosine")], metrics[recovery_key("out", "mean_max_cosine")],
        metrics[EDGE_ROC_AUC_KEY], metrics[EDGE_BEST_F1_KEY],
        f", kind agreement {metrics[KIND_AGREEMENT_KEY]:.3f}" if KIND_AGREEMENT_KEY in metrics else "")
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), metrics, [args.out],
                    step=run_field(inputs.run, "n_steps"))
    return 0
