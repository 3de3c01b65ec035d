"""The study's per-pair results, read back from the evaluation outputs, and lookups over them.

Inputs are ``evaluation.json`` (+ ``jacobian_stats.npz``), ``probes.json`` (+ ``probe_curves.npz``) and, for
a planted model's pairs, ``recovery.json`` (its ``recovery/...`` scalars join the pair's metrics) files; each
JSON carries the pair's identity (model, layer, control, lam, seed), and the workflow writes them under
``<model>/L<layer>/<control>/lam<lam>/seed<seed>/`` (:data:`PATH_PATTERN`), whose first part names the model
for the report. A "site" is one (model, layer). A pair trained with several seeds (replicates) has one
:class:`PairResult` per seed; the figures and tables show the base seed (:func:`base_seed`), the claims
combine the seeds. The figures and the summary both read through here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jsae.eval.metrics import (
    IN_CE_ABLATION_DELTA_KEY,
    IN_CE_LOSS_DELTA_KEY,
    IN_CE_SCORE_KEY,
    IN_CE_SCORE_REFUSED_KEY,
    OUT_CE_ABLATION_DELTA_KEY,
    OUT_CE_LOSS_DELTA_KEY,
    OUT_CE_SCORE_KEY,
    OUT_CE_SCORE_REFUSED_KEY,
    PROBE_PREFIX,
)
from jsae.eval.recovery import RECOVERY_PREFIX
from jsae.io import read_json

#: Where the workflow puts a pair's outputs: ``<model>/L<layer>/<control>/lam<lam>/seed<seed>/<file>`` (an
#: older layout without the seed level is still read, as seed 0 unless the JSON names it).
PATH_PATTERN = re.compile(r"(?P<model>[^/]+)/L(?P<layer>\d+)/(?P<control>trained|reinit)/lam(?P<lam>[^/]+)"
                          r"(?:/seed(?P<seed>\d+))?/[^/]+$")


@dataclass
class PairResult:
    """Everything the figures read about one pair: identity, scalar metrics and (lazily) arrays."""

    model: str
    layer: int
    control: str
    lam: float
    seed: int = 0  # the SAE training seed
    metrics: dict[str, float] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # evaluation's settings (e.g. the CE score's floor)
    stats_path: Path | None = None
    curves_path: Path | None = None
    recovery_path: Path | None = None  # recovery_arrays.npz of a planted model's pair

    @property
    def has_recovery(self) -> bool:
        """Whether recovery.json (a planted ground truth's recovery) was among the inputs for this pair."""
        return any(k.startswith(RECOVERY_PREFIX) for k in self.metrics)

    @property
    def site(self) -> tuple[str, int]:
        return (self.model, self.layer)

    @property
    def key(self) -> tuple[str, int, str, float, int]:
        return (self.model, self.layer, self.control, self.lam, self.seed)

    def stats(self) -> dict[str, np.ndarray]:
        return _load_npz(self.stats_path, "jacobian_stats.npz", self)

    def curves(self) -> dict[str, np.ndarray]:
        return _load_npz(self.curves_path, "probe_curves.npz", self)

    def recovery_arrays(self) -> dict[str, np.ndarray]:
        return _load_npz(self.recovery_path, "recovery_arrays.npz", self)

    @property
    def label(self) -> str:
        return f"{self.model} L{self.layer} {self.control} λ={self.lam:g} seed {self.seed}"


def _load_npz(path: Path | None, name: str, pair: PairResult) -> dict[str, np.ndarray]:
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{name} for {pair.label} not found (expected {path}); "
                                "re-run the evaluation of this pair")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _identity(doc: dict, path: Path) -> tuple[str, int, str, float, int]:
    """(model, layer, control, lam, seed): the workflow's path names the model; the JSON names the rest."""
    pair = doc.get("pair") or {}
    m = PATH_PATTERN.search(path.as_posix())
    model = m["model"] if m else (Path(str(pair.get("model", "model"))).name or "model")
    layer = pair.get("layer", m["layer"] if m else None)
    control = pair.get("control") or (m["control"] if m else "trained")
    lam = pair.get("lam", m["lam"] if m else None)
    seed = pair.get("seed", m["seed"] if m and m["seed"] is not None else 0)
    if layer is None or lam is None:
        raise ValueError(f"{path} has no pair identity (pair.layer / pair.lam) and is not under "
                         "<model>/L<layer>/<control>/lam<lam>/seed<seed>/; expected an evaluation or probes JSON "
                         "from jsae")
    return model, int(layer), str(control), float(lam), int(seed)


def load_results(paths: Iterable[str | Path]) -> list[PairResult]:
    """Merge evaluation.json and probes.json files into one :class:`PairResult` per pair."""
    by_key: dict[tuple[str, int, str, float, int], PairResult] = {}
    for p in map(Path, paths):
        if p.suffix != ".json":
            continue  # npz siblings are found next to their JSON
        doc = read_json(p)
        metrics = doc.get("metrics")
        if not isinstance(metrics, dict):
            raise ValueError(f"{p} has no 'metrics' object; expected an evaluation.json or probes.json from jsae")
        ident = _identity(doc, p)
        res = by_key.setdefault(ident, PairResult(*ident))
        res.identity.update(doc.get("pair") or {})
        is_probe = any(k.startswith(PROBE_PREFIX) for k in metrics) or p.name.startswith("probes")
        is_recovery = p.name.startswith("recovery") or (bool(metrics) and all(k.startswith(RECOVERY_PREFIX)
                                                                                for k in metrics))
        # a null value is a measured "no value" (e.g. a refused score): kept as NaN, not dropped
        values = {k: float("nan") if v is None else float(v) for k, v in metrics.items() if v is None or _is_number(v)}
        if is_recovery:  # its keys are recovery/...: merged into the metrics, evaluation's settings left alone
            res.metrics.update(values)
            res.recovery_path = p.with_name(doc.get("arrays", "recovery_arrays.npz"))
        elif is_probe:
            res.probes.update(values)
            res.curves_path = p.with_name(doc.get("arrays", "probe_curves.npz"))
        else:
            res.metrics.update(values)
            res.settings.update(doc.get("settings") or {})
            res.stats_path = p.with_name(doc.get("arrays", "jacobian_stats.npz"))
    return sorted(by_key.values(), key=lambda r: r.key)


def find_results(eval_root: str | Path) -> list[Path]:
    """Every evaluation.json, probes.json and recovery.json under ``eval_root``."""
    root = Path(eval_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; expected the evaluation root (results/eval)")
    return sorted([*root.rglob("evaluation.json"), *root.rglob("probes.json"), *root.rglob("recovery.json")])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sites_of(results: Sequence[PairResult]) -> list[tuple[str, int]]:
    """The (model, layer) sites among the results, sorted."""
    return sorted({r.site for r in results})


def replicates(results: Sequence[PairResult], site: tuple[str, int], control: str, lam: float) -> list[PairResult]:
    """Every seed of the pair of ``site`` with this control and λ, by seed."""
    return sorted((r for r in results if r.site == site and r.control == control
                   and math.isclose(r.lam, lam, rel_tol=1e-9, abs_tol=1e-12)), key=lambda r: r.seed)


def pick_pair(results: Sequence[PairResult], site: tuple[str, int], control: str, lam: float,
              seed: int | None = None) -> PairResult | None:
    """The pair of ``site`` with this control and λ — of ``seed``, or by default the base (lowest) seed — or None."""
    for r in replicates(results, site, control, lam):
        if seed is None or r.seed == seed:
            return r
    return None


def base_seed(results: Sequence[PairResult]) -> list[PairResult]:
    """One result per (model, layer, control, λ): its base (lowest) seed — what figures and tables show."""
    first: dict[tuple[str, int, str, float], PairResult] = {}
    for r in sorted(results, key=lambda r: r.key):
        first.setdefault(r.key[:4], r)
    return sorted(first.values(), key=lambda r: r.key)


def default_jsae_lam(results: Sequence[PairResult]) -> float:
    """The largest trained λ ≤ 1 (the paper's sweet-spot range), else the smallest positive λ."""
    lams = sorted({r.lam for r in results if r.control == "trained" and r.lam > 0})
    if not lams:
        raise ValueError("no trained pair with λ > 0; expected at least one JSAE to compare with λ = 0")
    small = [x for x in lams if x <= 1]
    return small[-1] if small else lams[0]


def metric(r: PairResult | None, key: str) -> float:
    """An evaluation or probe scalar of ``r``; NaN when the pair or the key is absent."""
    if r is None:
        return float("nan")
    if key in r.metrics:
        return r.metrics[key]
    if key in r.probes:
        return r.probes[key]
    return float("nan")


def ce_score_mean(r: PairResult) -> float:
    """The paper's fig. 5 y-axis: the mean of the input and output SAEs' CE loss scores.

    NaN when either score is NaN (refused or absent): a mean over one side would be a different quantity.
    """
    return 0.5 * (metric(r, IN_CE_SCORE_KEY) + metric(r, OUT_CE_SCORE_KEY))


#: Per SAE side: the CE loss score, CE_recon − CE_clean and CE_zero − CE_clean (nats/token), and the
#: refusal flag evaluation writes beside them (jsae.eval.metrics.ce_splice_metrics).
CE_SCORE_KEYS = {"in": IN_CE_SCORE_KEY, "out": OUT_CE_SCORE_KEY}
CE_LOSS_DELTA_KEYS = {"in": IN_CE_LOSS_DELTA_KEY, "out": OUT_CE_LOSS_DELTA_KEY}
CE_ABLATION_DELTA_KEYS = {"in": IN_CE_ABLATION_DELTA_KEY, "out": OUT_CE_ABLATION_DELTA_KEY}
CE_SCORE_REFUSED_KEYS = {"in": IN_CE_SCORE_REFUSED_KEY, "out": OUT_CE_SCORE_REFUSED_KEY}


def refused_sides(r: PairResult | None) -> list[str]:
    """The SAE sides whose CE loss score evaluation refused (its zero-ablation delta is below evaluation's
    floor): flagged by ``{side}/ce_score_refused`` = 1, or, without the flag, a score recorded as NaN.
    A score that was never measured (key absent) is not "refused"."""
    if r is None:
        return []
    sides = []
    for side, key in CE_SCORE_KEYS.items():
        flag = r.metrics.get(CE_SCORE_REFUSED_KEYS[side])
        if flag is not None and math.isfinite(flag):
            if flag >= 0.5:
                sides.append(side)
        elif key in r.metrics and math.isnan(r.metrics[key]):
            sides.append(side)
    return sides


def ce_score_floor(r: PairResult) -> float:
    """The floor (nats/token) below which evaluation refused the CE loss score; NaN when not recorded."""
    v = r.settings.get("ce_score_min_ablation_nats")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


@dataclass
class PretrainRecord:
    """What a summary's verdicts were made on: one pretrained model's ``pretrain.json`` (jsae.data.pretrain)."""

    model: str
    steps: int
    max_steps: int | None
    stopped_by: str
    minutes: float
    allow_time_cap: bool
    final_validation_loss: float  # nats/token on the held-out contexts
    unigram_baseline_loss: float = float("nan")  # nats/token

    @property
    def stopped_early(self) -> bool:
        """A step budget was set and the time cap ended the run before it (only possible when allowed)."""
        return self.max_steps is not None and self.stopped_by == "time_budget"


def load_pretrain(path: str | Path) -> PretrainRecord:
    """Read ``results/models/<model>/pretrain.json``; the directory names the model, as in the result layout."""
    p = Path(path)
    doc = read_json(p)
    cfg = doc.get("config") if isinstance(doc, dict) else None
    missing = [k for k in ("steps", "stopped_by", "final_validation_loss") if not isinstance(doc, dict) or k not in doc]
    if missing or not isinstance(cfg, dict) or "minutes" not in cfg:
        what = ", ".join(missing) if missing else "config.minutes"
        raise ValueError(f"{p} lacks {what}; expected a pretrain.json written by `python -m jsae pretrain`")
    max_steps = cfg.get("max_steps")
    return PretrainRecord(
        model=p.parent.name, steps=int(doc["steps"]), max_steps=None if max_steps is None else int(max_steps),
        stopped_by=str(doc["stopped_by"]), minutes=float(cfg["minutes"]),
        allow_time_cap=bool(cfg.get("allow_time_cap", False)),
        final_validation_loss=float(doc["final_validation_loss"]),
        unigram_baseline_loss=float(doc.get("unigram_baseline_loss", float("nan"))),
    )
