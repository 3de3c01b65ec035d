"""Qualitative tables: selection and max-activating windows against brute force, rendering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_evaluate import FakeCache, contexts, random_pair, tiny_lm

from jsae.eval.inputs import cache_rows
from jsae.eval.metrics import GlobalJacobianAccumulator
from jsae.eval.tables import (
    MIN_COUNT,
    LatentTable,
    TablesReport,
    distinct_windows,
    jacobian_connections,
    make_tables,
    model_name,
    name_from_output,
    render_html,
    render_markdown,
    select_latents,
    top_activating_rows,
    write_tables,
)


@pytest.fixture(scope="module")
def setup():
    model = tiny_lm(7)
    pair = random_pair(model, n=24, k=4, seed=7)
    cache = FakeCache(model, contexts(8, seed=7))
    with torch.no_grad():
        out = pair(cache.x)
    return pair, cache, out


def _dense_activations(vals, idx, n):
    dense = torch.zeros(vals.shape[0], n, dtype=torch.float64)
    dense.scatter_(1, idx, vals.double())
    return dense


def test_selection_against_brute_force(setup):
    pair, cache, out = setup
    glob = jacobian_connections(pair, cache_rows(cache, None, 13), progress=False)
    chosen = select_latents(glob, n_output_latents=3, n_inputs=4, min_active=2, min_count=2)
    # brute force: mean of the non-zero |J| of each output latent over tokens where it is active
    J, n = out.jacobian.abs().double(), pair.sae_out.n_latents
    sums, counts, active = np.zeros(n), np.zeros(n), np.zeros(n)
    pair_sum = {}
    for t in range(J.shape[0]):
        for a in range(J.shape[1]):
            if out.out_vals[t, a] <= 0:
                continue
            i = int(out.out_idx[t, a])
            active[i] += 1
            for c in range(J.shape[2]):
                v = float(J[t, a, c])
                if v > 0:
                    sums[i] += v
                    counts[i] += 1
                    key = (i, int(out.in_idx[t, c]))
                    pair_sum[key] = pair_sum.get(key, []) + [v]
    mean = np.where((counts > 0) & (active >= 2), sums / np.maximum(counts, 1), -1)
    expected = list(np.argsort(-mean, kind="stable")[:3])
    assert [c[0] for c in chosen] == expected
    i = expected[0]
    ins = sorted(((np.mean(v), j, len(v), np.std(v)) for (o, j), v in pair_sum.items() if o == i and len(v) >= 2),
                 reverse=True)[:4]
    assert chosen[0][4]["in_latent"].tolist() == [j for _, j, _, _ in ins]
    assert chosen[0][4]["count"].tolist() == [c for _, _, c, _ in ins]
    np.testing.assert_allclose(chosen[0][4]["std"], [s for _, _, _, s in ins], atol=1e-9)
    with pytest.raises(ValueError, match="n_output_latents"):
        select_latents(glob, n_output_latents=0)


def _hand_built_connections() -> GlobalJacobianAccumulator:
    """Output latent 0 with four inputs: (input, tokens with J non-zero, |J| on each)."""
    glob = GlobalJacobianAccumulator(2, 4, max_entries=None)
    for j, n, value in ((1, 1, 0.9), (0, 4, 0.7), (3, 5, 0.5), (2, 6, 0.3)):
        J = torch.full((n, 1, 1), value, dtype=torch.float64)
        glob.update(J, torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), j), torch.ones(n, 1))
    return glob


def test_inputs_seen_on_too_few_tokens_are_not_ranked():
    glob = _hand_built_connections()
    # input 1 has the largest mean but on one token (std 0): not a ranking at the default minimum of 5
    (_, _, _, _, inputs), = select_latents(glob, n_output_latents=1, n_inputs=10, min_active=1)
    assert MIN_COUNT == 5 and inputs["in_latent"].tolist() == [3, 2] and inputs["count"].tolist() == [5, 6]
    (_, _, _, _, inputs), = select_latents(glob, n_output_latents=1, n_inputs=10, min_active=1, min_count=1)
    assert inputs["in_latent"].tolist() == [1, 0, 3, 2]
    assert inputs["mean"].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.3])
    (_, _, _, _, inputs), = select_latents(glob, n_output_latents=1, n_inputs=1, min_active=1, min_count=4)
    assert inputs["in_latent"].tolist() == [0]
    with pytest.raises(ValueError, match="min_count"):
        select_latents(glob, min_count=0)


def test_top_activating_rows_against_brute_force(setup):
    pair, cache, out = setup
    outs, ins = [0, 5, 11], [2, 3]
    tops = top_activating_rows(pair, cache_rows(cache, None, 9), outs, ins, n_candidates=5, progress=False)
    dense_out = _dense_activations(out.out_vals, out.out_idx, pair.sae_out.n_latents)
    dense_in = _dense_activations(out.in_vals, out.in_idx, pair.sae_in.n_latents)
    for side, lats, dense in (("out", outs, dense_out), ("in", ins, dense_in)):
        for latent in lats:
            col = dense[:, latent]
            want = sorted([float(v) for v in col if v > 0], reverse=True)[:5]
            got = [v for v, _ in tops[(side, latent)]]
            assert got == pytest.approx(want)
            for v, r in tops[(side, latent)]:
                assert float(col[r]) == pytest.approx(v)


def test_distinct_windows():
    ctx = np.array([0, 0, 0, 1, 1])
    pos = np.array([3, 10, 30, 5, 40])
    cands = [(5.0, 0), (4.0, 1), (3.0, 2), (2.0, 3), (1.0, 4)]
    assert distinct_windows(cands, ctx, pos, n_examples=10) == [(5.0, 0), (3.0, 2), (2.0, 3), (1.0, 4)]
    assert distinct_windows(cands, ctx, pos, n_examples=2) == [(5.0, 0), (3.0, 2)]


def test_make_tables_windows_and_rendering(setup, tmp_path):
    pair, cache, out = setup
    names = {t: f"tok{t}" for t in range(50)}
    names[3] = "<b>&|"  # must be escaped in HTML and markdown
    report = make_tables(pair, cache, lambda t: names[t], batch_size=17, n_output_latents=2, n_inputs=3,
                         n_examples=3, min_active=2, min_count=1, progress=False,
                         identity={"model": "results/models/tiny", "layer": 1, "lam": 1.0, "control": "trained"})
    assert len(report.entries) == 2 and all(len(e.inputs) == 3 for e in report.entries)
    dense_out = _dense_activations(out.out_vals, out.out_idx, pair.sae_out.n_latents)
    ctxs = cache.contexts()
    e = report.entries[0]
    assert e.table.examples, "the top output latent has activating examples"
    top = e.table.examples[0]
    assert top.max_activation == pytest.approx(float(dense_out[:, e.latent].max()))
    # the window ends at the peak token: tokens are the context's ids, activations the latent's per row
    # (the BOS at position 0 is left out, as appendix C does)
    for t in [e.table, *e.inputs]:
        dense = dense_out if t.side == "out" else _dense_activations(out.in_vals, out.in_idx, pair.sae_in.n_latents)
        for ex in t.examples:
            first = ex.position - len(ex.tokens) + 1
            assert len(ex.tokens) == min(16, ex.position) and first >= 1
            assert ex.tokens == [names[int(tok)] for tok in ctxs[ex.context, first : ex.position + 1]]
            for q, a in zip(range(first, ex.position + 1), ex.activations):
                row = int(np.nonzero((cache.context_index == ex.context) & (cache.position == q))[0][0])
                assert a == pytest.approx(float(dense[row, t.latent]), abs=1e-6)
    html_text = render_html(report)
    assert "<script" not in html_text and "http" not in html_text
    assert f"output latent {e.latent}" in html_text
    if any("<b>&|" in ex.tokens for t in [e.table, *e.inputs] for ex in t.examples):
        assert "&lt;b&gt;&amp;|" in html_text
    md = render_markdown(report)
    assert "| rank | input latent | count | mean | std |" in md and "<b>" not in md
    # titled with the model's name, not its path; the minimum counts are stated
    assert md.startswith("# JSAE qualitative tables: tiny layer 1 (trained LM, λ = 1)\n")
    assert "<h1>JSAE qualitative tables: tiny layer 1 (trained LM, λ = 1)</h1>" in html_text
    assert "results/models" not in md.split("\n")[0] and "results/models" not in html_text
    for text in (md, html_text):
        assert "active on ≥ 2 evaluation tokens" in text and "non-zero on ≥ 1 tokens" in text
    path = write_tables(tmp_path / "tables.html", report)
    assert path.name == "tables.md" and (tmp_path / "tables.html").read_text().startswith("<!DOCTYPE html>")


def test_model_name_for_titles(tmp_path):
    assert name_from_output("results/eval/tiny-neox/L2/reinit/lam1/tables.html") == "tiny-neox"
    assert name_from_output(tmp_path / "tables.html") is None
    assert model_name({"model": "results/models/tiny-neox-reinit"}) == "tiny-neox-reinit"
    assert model_name({"model": "EleutherAI/pythia-70m", "name": "pythia-70m"}) == "pythia-70m"
    assert model_name({"model": "EleutherAI/pythia-70m"}) == "pythia-70m"


def test_render_empty_report():
    report = TablesReport([], {"model": "m", "layer": 0}, 0)
    assert "No output latent" in render_html(report)
    assert render_markdown(report).startswith("# JSAE")
    assert LatentTable("in", 3).examples == []


def test_bad_input(setup):
    pair, cache, _ = setup
    with pytest.raises(ValueError, match="n_examples"):
        make_tables(pair, cache, str, n_examples=0, progress=False)
    with pytest.raises(ValueError, match="n_tokens=0 is invalid"):
        make_tables(pair, cache, str, n_tokens=0, progress=False)
