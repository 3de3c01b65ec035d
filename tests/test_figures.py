"""Figures from synthetic evaluation / probe outputs laid out exactly as the workflow writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jsae.report import figures
from jsae.report.results import (
    PairResult,
    ce_score_floor,
    ce_score_mean,
    default_jsae_lam,
    load_results,
    refused_sides,
    sites_of,
)

LAMS = (0.0, 0.1, 0.3, 1.0, 3.0)
REINIT_LAMS = (0.0, 1.0)
THRESHOLDS = (0.005, 0.01, 0.015, 0.02, 0.04)


def _fmt(lam: float) -> str:
    return f"{lam:g}"


def synthetic_metrics(lam: float, control: str) -> dict[str, float]:
    """Plausible numbers: J sparser and reconstruction slightly worse as lambda grows; re-init denser."""
    density = (0.6 if control == "trained" else 0.85) / (1 + 3 * lam)
    m: dict[str, float] = {}
    for i, t in enumerate(THRESHOLDS):
        m[f"jac/frac_above_{t:g}"] = density * (0.8 ** i)
        m[f"jac/global_frac_above_{t:g}"] = density * 1e-3 * (0.7 ** i)
    for side, drop in (("in", 0.01), ("out", 0.05)):
        m[f"{side}/explained_variance"] = 0.9 - drop * lam
        m[f"{side}/cosine"] = 0.95 - drop * lam / 2
        m[f"{side}/mse"] = 0.1 + drop * lam
        m[f"{side}/ce_loss_score"] = 0.95 - drop * lam
        m[f"{side}/ce_loss_delta"] = 0.1 + drop * lam  # CE_recon - CE_clean, nats
        m[f"{side}/ce_ablation_delta"] = 2.0 if side == "in" else 1.5  # CE_zero - CE_clean, nats
        m[f"{side}/kl_score"] = 0.93 - drop * lam
        m[f"{side}/dead_fraction"] = 0.01 * (1 + lam)
        m[f"{side}/rare_fraction"] = 0.02 * (1 + lam)
    m.update({"jac/l1": 40 / (1 + 3 * lam), "jac/l2": 6 / (1 + 2 * lam), "jac/l4": 2 / (1 + 0.5 * lam),
              "jac/linf": 1.2 / (1 + 0.3 * lam), "jac/mean_abs": 0.04 / (1 + 3 * lam),
              "ce/clean": 3.0, "ce/zero_in": 5.0, "ce/recon_in": 3.1 + 0.05 * lam, "ce/zero_out": 4.5,
              "ce/recon_out": 3.1 + 0.1 * lam})
    return m


def synthetic_probes(lam: float) -> dict[str, float]:
    lin = min(0.8 + 0.05 * lam, 0.95)
    return {"probe/linear_frac": lin, "probe/jumprelu_frac": (1 - lin) * 0.8, "probe/other_frac": (1 - lin) * 0.2,
            "probe/on_line_frac": 0.96, "probe/cluster_frac": 0.03, "probe/outlier_frac": 0.01,
            "probe/n_samples": 500.0}


N_TOKENS, K = 400, 6  # per-token arrays of a synthetic pair: tokens, k (J is k x k)


def synthetic_jacobian(layer: int, control: str, lam: float, n_tokens: int = N_TOKENS, k: int = K, *,
                       seed: int = 0, lam_gain: float = 1.0) -> np.ndarray:
    """J ``[T, k, k]`` of one pair, the same random draw whatever the scale it is later multiplied by: the
    trained model's J grows sparser and smaller with lambda; the re-init's is denser and gains less.
    ``seed``: another training seed (another draw); ``lam_gain`` scales how much lambda sparsifies it."""
    draw = 1000 * layer + (500 if control == "reinit" else 0) + int(round(100 * lam)) + 7919 * seed
    rng = np.random.default_rng(draw)
    lam = lam * lam_gain
    p_large = (0.5 / (1 + 2 * lam)) if control == "trained" else (0.8 / (1 + 0.3 * lam))
    large = rng.random((n_tokens, k, k)) < p_large
    mag = np.where(large, np.exp(rng.normal(np.log(0.1), 0.5, large.shape)),
                   np.exp(rng.normal(np.log(0.004), 0.7, large.shape)))
    J = np.sign(rng.normal(size=mag.shape)) * mag / (1 + lam)
    J[rng.random(n_tokens) < 0.2, rng.integers(0, k)] = 0.0  # an output latent switched off on some tokens
    return J.astype(np.float32)


def synthetic_ce(control: str, lam: float, n: int = 300) -> dict[str, np.ndarray]:
    """Per-token CE (nats) of one pair: the clean run is the model's (the same for every pair of a model)."""
    rng = np.random.default_rng(7 if control == "trained" else 8)
    clean = rng.gamma(4.0, 0.75, n)
    noise = np.random.default_rng(int(round(100 * lam)) + (50 if control == "reinit" else 0))
    out = {"clean": clean}
    for side, cost in (("in", 2.0), ("out", 1.5)):
        out[f"zero_{side}"] = clean + rng.gamma(2.0, cost / 2, n)
        out[f"recon_{side}"] = clean + (0.1 + 0.03 * lam) * rng.gamma(2.0, 0.5, n) + noise.normal(0, 0.01, n)
    return {f"ce_token_{k}": v.astype(np.float32) for k, v in out.items()}


def jacobian_outputs(J: np.ndarray, ce: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and arrays as evaluation writes them, from J and the per-token CE (jsae's own accumulator)."""
    import torch

    from jsae.eval.metrics import JacobianAccumulator, ce_splice_metrics

    acc = JacobianAccumulator(token_stats=len(J))
    acc.update(torch.as_tensor(J))
    metrics, arrays = acc.metrics(), acc.arrays()
    mean = {k.removeprefix("ce_token_"): float(v.astype(np.float64).mean()) for k, v in ce.items()}
    for side in ("in", "out"):
        metrics.update(ce_splice_metrics(side, mean["clean"], mean[f"recon_{side}"], mean[f"zero_{side}"]))
    metrics.update({f"ce/{k}": v for k, v in mean.items()})
    arrays.update(ce)
    arrays["token_id"] = (np.arange(len(J)) * 31) % 4096  # the validation tokens every pair of a site shares
    return metrics, arrays


def _probe_arrays(rng: np.random.Generator, probes: dict[str, float], n: int = 300) -> dict[str, np.ndarray]:
    """Per-function labels drawn with the probes.json shares, grouped in sweeps of 1-3 functions."""
    lin, jr = probes["probe/linear_frac"], probes["probe/jumprelu_frac"]
    label = rng.choice(3, n, p=[lin, jr, 1 - lin - jr])
    on, cl = probes["probe/on_line_frac"], probes["probe/cluster_frac"]
    split = rng.choice(3, n, p=[on, cl, 1 - on - cl])
    sweep = np.sort(rng.integers(0, n // 2, n))
    return {"label": label, "split": split, "token_row": sweep // 4, "in_latent": sweep % 4}


def write_synthetic_study(root: Path, *, model: str = "tiny-neox", layers: tuple[int, ...] = (2,),
                          lams: tuple[float, ...] = LAMS, reinit_lams: tuple[float, ...] = REINIT_LAMS,
                          probes: bool = True, jacobians: bool = False,
                          scale: dict[str, float] | float = 1.0, seed: int | None = None,
                          lam_gain: float = 1.0) -> list[Path]:
    """Write results/eval/<model>/L<layer>/<control>/lam<lam>/{evaluation,probes}.json + npz; return the JSONs.

    ``seed``: write under .../lam<lam>/seed<seed>/ with that training seed in the pair record (None: the
    older layout without a seed level); with ``jacobians``, another seed is another draw of J, and
    ``lam_gain`` scales how strongly lambda sparsifies it (:func:`synthetic_jacobian`).

    ``jacobians``: the Jacobian metrics, the per-token arrays and the CE numbers are computed by jsae's own
    accumulators from :func:`synthetic_jacobian` and :func:`synthetic_ce`, with every J multiplied by
    ``scale`` (one constant, or one per control) — what evaluation writes for a model in other units.
    Otherwise the metrics are :func:`synthetic_metrics` and the npz has no per-token arrays (an older
    evaluation).
    """
    rng = np.random.default_rng(0)
    files: list[Path] = []
    for layer in layers:
        for control, lam_set in (("trained", lams), ("reinit", reinit_lams)):
            for lam in lam_set:
                d = root / "eval" / model / f"L{layer}" / control / f"lam{_fmt(lam)}"
                if seed is not None:
                    d = d / f"seed{seed}"
                d.mkdir(parents=True, exist_ok=True)
                pair = {"model": f"results/models/{model}", "layer": layer, "control": control, "lam": lam,
                        "k": 16, "n_latents": 1024, **({"seed": seed} if seed is not None else {})}
                metrics = synthetic_metrics(lam, control)
                c = scale[control] if isinstance(scale, dict) else scale
                if jacobians:
                    J = synthetic_jacobian(layer, control, lam, seed=seed or 0, lam_gain=lam_gain) * np.float32(c)
                    jm, arrays = jacobian_outputs(J, synthetic_ce(control, lam))
                    metrics.update(jm)
                    absj = np.abs(J).reshape(-1)
                else:
                    arrays = {}
                    absj = np.abs(rng.normal(0, 0.05 / (1 + 3 * lam), 4000))
                edges = np.linspace(0, 1.5, 1501)  # evaluation's default bins
                counts, _ = np.histogram(absj, edges)
                overflow = int((absj > edges[-1]).sum())
                # latents 0..n_alive-1 fired (more die as lambda grows); global entries only between them
                n_alive_out, n_alive_in = int(600 / (1 + lam)), int(700 / (1 + lam))
                fired_out = np.where(np.arange(1024) < n_alive_out, 5, 0)
                fired_in = np.where(np.arange(1024) < n_alive_in, 7, 0)
                scale_g = 0.05 / (1 + 3 * lam)
                arrays.update(hist_edges=edges, hist_counts=counts, hist_overflow=np.array(overflow),
                              cdf=np.cumsum(counts) / (counts.sum() + overflow), thresholds=np.array(THRESHOLDS),
                              global_mean_abs=np.abs(rng.normal(0, scale_g, 3000)),
                              global_out_latent=rng.integers(0, n_alive_out, 3000),
                              global_in_latent=rng.integers(0, n_alive_in, 3000),
                              global_shape=np.array([1024, 1024]), out_fired_count=fired_out,
                              in_fired_count=fired_in)
                np.savez(d / "jacobian_stats.npz", **arrays)
                (d / "evaluation.json").write_text(json.dumps(
                    {"metrics": metrics, "pair": pair, "arrays": "jacobian_stats.npz"}))
                files.append(d / "evaluation.json")
                if probes:
                    n, pts = 300, 100
                    pm = synthetic_probes(lam)
                    curves = _probe_arrays(rng, pm, n)
                    label = curves["label"]
                    xs = np.tile(np.linspace(0, 5, pts), (30, 1))
                    ys = np.where(label[:30, None] == 1, np.maximum(xs - 2, 0), 0.5 * xs)
                    jac = rng.normal(0, 0.3, n)
                    np.savez(d / "probe_curves.npz", **curves, jac=jac, delta=jac + rng.normal(0, 0.01, n),
                             curve_index=np.arange(30), curve_xs=xs, curve_ys=ys)
                    (d / "probes.json").write_text(json.dumps(
                        {"metrics": pm, "pair": pair, "arrays": "probe_curves.npz"}))
                    files.append(d / "probes.json")
    return files


def test_load_results_merges_evaluation_and_probes(tmp_path):
    files = write_synthetic_study(tmp_path)
    results = load_results(files)
    assert len(results) == len(LAMS) + len(REINIT_LAMS)
    r = next(r for r in results if r.control == "trained" and r.lam == 1.0)
    assert r.model == "tiny-neox" and r.layer == 2  # the model name comes from the path, not the spec
    assert r.metrics["jac/frac_above_0.01"] == pytest.approx(synthetic_metrics(1.0, "trained")["jac/frac_above_0.01"])
    assert r.probes["probe/linear_frac"] == pytest.approx(synthetic_probes(1.0)["probe/linear_frac"])
    assert r.stats()["hist_counts"].sum() > 0
    assert default_jsae_lam(results) == 1.0


def test_every_figure_renders_pdf_and_png(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    written = figures.render(list(figures.FIGURES), results, tmp_path / "fig", jsae_lam=1.0)
    assert [p.name for p in written] == [f"{n}.{ext}" for n in figures.FIGURES for ext in ("pdf", "png")]
    for pdf, png in zip(written[::2], written[1::2]):
        assert pdf.read_bytes()[:4] == b"%PDF"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a real plot, not an empty canvas


@pytest.fixture
def captured_figures(monkeypatch):
    """Keep the matplotlib figures instead of writing them (structure checks, fast)."""
    import matplotlib.pyplot as plt

    kept: dict[str, object] = {}
    monkeypatch.setattr(figures, "_save", lambda fig, out_dir, name: kept.setdefault(name, fig) and [])
    yield kept
    plt.close("all")


def test_two_sites_get_one_panel_each(tmp_path, captured_figures):
    results = load_results(write_synthetic_study(tmp_path, layers=(1, 3)))
    assert sites_of(results) == [("tiny-neox", 1), ("tiny-neox", 3)]
    figures.render(["fig2", "fig8", "fig36"], results, tmp_path, jsae_lam=0.3)
    assert [ax.get_title() for ax in captured_figures["fig2"].axes] == ["tiny-neox, layer 1", "tiny-neox, layer 3"]
    assert len(captured_figures["fig8"].axes) == 6  # a row of three panels per site
    assert len(captured_figures["fig36"].axes) == 4


def test_fig5_labels_every_lambda(tmp_path, captured_figures):
    results = load_results(write_synthetic_study(tmp_path))
    figures.fig5(results, tmp_path)
    ax = captured_figures["fig5"].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"λ={lam:g}" for lam in LAMS)
    assert "%" in ax.get_xlabel() and "CE loss score" in ax.get_ylabel()
    # points sit at (share of |J| > 0.01 in %, mean CE loss score)
    offsets = ax.collections[0].get_offsets()
    first = synthetic_metrics(0.0, "trained")
    assert offsets[0][0] == pytest.approx(100 * first["jac/frac_above_0.01"])
    assert offsets[0][1] == pytest.approx((first["in/ce_loss_score"] + first["out/ce_loss_score"]) / 2)


def _stats_pair(tmp_path: Path, **arrays) -> PairResult:
    """A pair whose jacobian_stats.npz holds exactly ``arrays`` (hand-built cases)."""
    np.savez(tmp_path / "jacobian_stats.npz", **arrays)
    return PairResult("m", 0, "trained", 0.0, stats_path=tmp_path / "jacobian_stats.npz")


def test_global_shares_divide_by_alive_latents(tmp_path):
    # 4 output latents, 5 input latents; alive (fired >= 1 token): outputs {0, 2}, inputs {0, 1, 3} -> 2 x 3 = 6
    r = _stats_pair(tmp_path, out_fired_count=np.array([3, 0, 1, 0]), in_fired_count=np.array([1, 4, 0, 2, 0]),
                    global_out_latent=np.array([0, 0, 2, 2, 1]), global_in_latent=np.array([0, 1, 3, 0, 2]),
                    global_mean_abs=np.array([0.5, 0.02, 0.008, 0.2, 0.9]),  # (1, 2): a dead pair, never counted
                    global_shape=np.array([4, 5]))
    # above 0.01: (0,0), (0,1), (2,0) -> 3/6; above 0.1: (0,0), (2,0) -> 2/6; above 0.6: none
    assert figures.global_shares(r, (0.01, 0.1, 0.6)).tolist() == pytest.approx([50.0, 100 / 3, 0.0])
    (tmp_path / "old").mkdir()
    dead = _stats_pair(tmp_path / "old", global_mean_abs=np.array([0.5]), global_shape=np.array([1, 1]))
    with pytest.raises(ValueError, match="has no out_fired_count / in_fired_count"):
        figures.global_shares(dead)


def test_fig36_says_what_100_percent_is(tmp_path, captured_figures):
    results = load_results(write_synthetic_study(tmp_path))
    figures.fig36(results, 1.0, tmp_path)
    fig = captured_figures["fig36"]
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "100% = alive output latents × alive input latents" in caption
    # the synthetic study's alive counts: int(600 / (1 + lam)) outputs, int(700 / (1 + lam)) inputs
    assert "600 of 1024 output × 700 of 1024 input" in caption and "300 of 1024 output × 350 of 1024 input" in caption
    assert "alive" in fig.axes[0].get_ylabel()


def test_fig32_cdf_axis_covers_only_the_measured_range(tmp_path, captured_figures):
    results = load_results(write_synthetic_study(tmp_path))
    figures.fig32(results, 1.0, tmp_path)
    ax = captured_figures["fig32"].axes[1]
    lo, hi = ax.get_xlim()
    assert ax.get_xscale() == "log" and lo == pytest.approx(0.001)  # the first bin edge: no |J| < 0 on the axis
    for line in ax.get_lines():
        x = np.asarray(line.get_xdata(), dtype=float)
        assert x.min() >= lo and np.isfinite(x).all()


def test_fig32_cdf_from_the_log_grid_marks_the_headline_tau(tmp_path, captured_figures):
    """With per-token arrays the CDF spans the log grid (any units) and marks tau* and the paper's tau."""
    results = load_results(write_synthetic_study(tmp_path, jacobians=True, scale=100.0))  # beyond the 1.5 histogram
    figures.fig32(results, 1.0, tmp_path)
    ax = captured_figures["fig32"].axes[1]
    labels = [ln.get_label() for ln in ax.get_lines()]
    tau_star = float(np.median(np.abs(synthetic_jacobian(2, "trained", 0.0))[synthetic_jacobian(2, "trained", 0.0)
                                                                               != 0]) * 100)
    star = next(ln for ln in ax.get_lines() if ln.get_label().startswith("headline τ*"))
    assert float(star.get_xdata()[0]) == pytest.approx(tau_star, rel=0.075)  # within one grid step
    assert any(lab.startswith("paper's τ = 0.01") for lab in labels)
    cdf = next(ln for ln in ax.get_lines() if ln.get_label() == "traditional SAEs (λ = 0)")
    y = np.asarray(cdf.get_ydata())
    assert np.all(np.diff(y) >= 0) and y[-1] == pytest.approx(1.0) and y[0] < 0.3  # the whole range is drawn


def test_refused_scores_are_skipped_and_named_in_the_caption(tmp_path, captured_figures):
    results = load_results(write_synthetic_study(tmp_path))
    refused = next(r for r in results if r.control == "trained" and r.lam == 3.0)
    refused.metrics["out/ce_loss_score"] = float("nan")  # what evaluation writes below its floor
    refused.metrics["out/ce_ablation_delta"] = 0.001
    figures.fig5(results, tmp_path)
    figures.fig4(results, tmp_path)
    ax = captured_figures["fig5"].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"λ={lam:g}" for lam in LAMS if lam != 3.0)
    assert len(ax.collections[0].get_offsets()) == len(LAMS) - 1
    caption5 = " ".join(t.get_text() for t in captured_figures["fig5"].texts)
    assert "λ = 3 not drawn (score refused" in caption5
    fig4 = captured_figures["fig4"]
    ce_panel = fig4.axes[2]
    out_line = [ln for ln in ce_panel.get_lines() if ln.get_label() == "output SAE"][0]
    assert 3.0 not in out_line.get_xdata() and len(out_line.get_xdata()) == len(LAMS) - 1
    assert "CE loss score, output SAE: λ = 3 not drawn (score refused" in " ".join(t.get_text() for t in fig4.texts)


def test_null_and_nan_scores_load_as_nan(tmp_path):
    files = write_synthetic_study(tmp_path, probes=False)
    path = next(f for f in files if "trained/lam1/" in f.as_posix())
    doc = json.loads(path.read_text())
    doc["metrics"].update({"in/ce_loss_score": None, "out/ce_loss_score": float("nan")})
    path.write_text(json.dumps(doc))  # NaN as Python's json writes it
    r = next(r for r in load_results(files) if r.control == "trained" and r.lam == 1.0)
    assert np.isnan(r.metrics["in/ce_loss_score"]) and np.isnan(r.metrics["out/ce_loss_score"])
    assert refused_sides(r) == ["in", "out"] and np.isnan(ce_score_mean(r))
    # evaluation's refusal flag decides where it is written; the floor comes from its settings
    doc["metrics"].update({"in/ce_score_refused": 0.0, "out/ce_score_refused": 1.0})
    doc["settings"] = {"ce_score_min_ablation_nats": 0.01}
    path.write_text(json.dumps(doc))
    r = next(r for r in load_results(files) if r.control == "trained" and r.lam == 1.0)
    assert refused_sides(r) == ["out"] and ce_score_floor(r) == 0.01
    other = next(r for r in load_results(files) if r.control == "trained" and r.lam == 0.0)
    del other.metrics["in/ce_loss_score"]
    assert refused_sides(other) == []  # absent = not measured, not refused


def test_missing_pair_is_a_clear_error(tmp_path):
    results = load_results(write_synthetic_study(tmp_path, reinit_lams=(0.0,)))
    with pytest.raises(ValueError, match=r"fig7 needs the re-init, λ = 1 pair"):
        figures.render(["fig7"], results, tmp_path / "fig", jsae_lam=1.0)
    with pytest.raises(ValueError, match="unknown figure 'fig99'"):
        figures.render(["fig99"], results, tmp_path / "fig")
    with pytest.raises(ValueError, match="fig8 needs probes.json"):
        figures.render(["fig8"], load_results(write_synthetic_study(tmp_path / "np", probes=False)), tmp_path)


def test_bad_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "evaluation.json"
    bad.write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="has no 'metrics' object"):
        load_results([bad])


def test_cli_writes_the_requested_figure_only(tmp_path):
    write_synthetic_study(tmp_path)
    out = tmp_path / "figs"
    assert figures.cli(["--eval-root", str(tmp_path / "eval"), "--out-dir", str(out), "--only", "fig5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fig5.pdf", "fig5.png"]


def test_fig4_and_fig5_draw_the_headline_share(tmp_path, captured_figures):
    """With per-token arrays the sparsity axis is the share above tau*; without, the paper's tau, labelled."""
    from jsae.report.claims import headline_columns

    results = load_results(write_synthetic_study(tmp_path / "new", jacobians=True, probes=False))
    figures.fig5(results, tmp_path)
    ax = captured_figures["fig5"].axes[0]
    assert "τ*" in ax.get_xlabel()
    expected = sorted(100 * v["jac/frac_above_headline_tau"] for k, v in headline_columns(results).items()
                      if k[2] == "trained")
    assert sorted(ax.collections[0].get_offsets()[:, 0].tolist()) == pytest.approx(expected)
    figures.fig4(results, tmp_path)
    labels = [ln.get_label() for ln in captured_figures["fig4"].axes[5].get_lines()]
    assert any(lab.startswith("|J| > τ*") for lab in labels) and any("paper's τ" in lab for lab in labels)
    captured_figures.clear()
    old = load_results(write_synthetic_study(tmp_path / "old", probes=False))
    figures.fig5(old, tmp_path)
    assert "paper's absolute τ" in captured_figures["fig5"].axes[0].get_xlabel()
