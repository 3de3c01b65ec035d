"""Figures from synthetic evaluation / probe outputs laid out exactly as the workflow writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jsae.report import figures
from jsae.report.results import default_jsae_lam, load_results, sites_of

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


def write_synthetic_study(root: Path, *, model: str = "tiny-neox", layers: tuple[int, ...] = (2,),
                          lams: tuple[float, ...] = LAMS, reinit_lams: tuple[float, ...] = REINIT_LAMS,
                          probes: bool = True) -> list[Path]:
    """Write results/eval/<model>/L<layer>/<control>/lam<lam>/{evaluation,probes}.json + npz; return the JSONs."""
    rng = np.random.default_rng(0)
    files: list[Path] = []
    for layer in layers:
        for control, lam_set in (("trained", lams), ("reinit", reinit_lams)):
            for lam in lam_set:
                d = root / "eval" / model / f"L{layer}" / control / f"lam{_fmt(lam)}"
                d.mkdir(parents=True, exist_ok=True)
                pair = {"model": f"results/models/{model}", "layer": layer, "control": control, "lam": lam,
                        "k": 16, "n_latents": 1024}
                scale = 0.05 / (1 + 3 * lam)
                absj = np.abs(rng.normal(0, scale, 4000))
                edges = np.linspace(0, 0.5, 101)
                counts, _ = np.histogram(absj, edges)
                overflow = int((absj > edges[-1]).sum())
                np.savez(d / "jacobian_stats.npz", hist_edges=edges, hist_counts=counts,
                         hist_overflow=np.array(overflow), cdf=np.cumsum(counts) / (counts.sum() + overflow),
                         thresholds=np.array(THRESHOLDS), global_mean_abs=np.abs(rng.normal(0, scale, 3000)),
                         global_shape=np.array([1024, 1024]))
                (d / "evaluation.json").write_text(json.dumps(
                    {"metrics": synthetic_metrics(lam, control), "pair": pair, "arrays": "jacobian_stats.npz"}))
                files.append(d / "evaluation.json")
                if probes:
                    n, pts = 300, 100
                    label = rng.integers(0, 3, n)
                    xs = np.tile(np.linspace(0, 5, pts), (30, 1))
                    ys = np.where(label[:30, None] == 1, np.maximum(xs - 2, 0), 0.5 * xs)
                    jac = rng.normal(0, 0.3, n)
                    np.savez(d / "probe_curves.npz", label=label, split=rng.integers(0, 3, n), jac=jac,
                             delta=jac + rng.normal(0, 0.01, n), curve_index=np.arange(30), curve_xs=xs, curve_ys=ys)
                    (d / "probes.json").write_text(json.dumps(
                        {"metrics": synthetic_probes(lam), "pair": pair, "arrays": "probe_curves.npz"}))
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


def test_global_shares_fall_back_to_the_matrix(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    r = next(r for r in results if r.lam == 0.0 and r.control == "trained")
    for key in [k for k in r.metrics if k.startswith("jac/global_frac_above_")]:
        del r.metrics[key]
    st = r.stats()
    expected = (st["global_mean_abs"] > 0.01).sum() / (1024 * 1024) * 100
    assert figures.global_shares(r)[1] == pytest.approx(expected)


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
