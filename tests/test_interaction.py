"""SCALAR-style interaction sparsity (jsae.eval.interaction) against independent oracles: hand-built pairs whose
Jacobian is exactly sparse (the curve is full exactly at the known number of edges), the planted model's ground
truth (the edges each token needs, from its edge list), brute force (autograd J, Python sorting, explicit loops,
and a module swap in a real LM for the KL curve) and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from jsae.__main__ import main
from jsae.data.hooks import decoder_layers, mlp_module
from jsae.data.planted import PLANTED_HOOK, PlantedConfig, build_planted, oracle_pair, save_planted
from jsae.eval import interaction as I
from jsae.nn.mlp import PlainMLP, activation_from
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE

F64 = torch.float64


def pm_sae(Q: torch.Tensor) -> TopKSAE:
    """Latents +q_f and -q_f for the orthonormal rows q_f of Q, k = all of them: x_hat = x exactly (ReLU(<q, x>) q -
    ReLU(-<q, x>) q summed over an orthonormal basis)."""
    d = Q.shape[0]
    sae = TopKSAE(d, 2 * d, 2 * d, dtype=F64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([Q, -Q]))
        sae.W_dec.copy_(torch.cat([Q, -Q]))
    return sae


def linear_mlp(M: torch.Tensor) -> PlainMLP:
    """A real ReLU MLP computing y = M x exactly: ReLU(x) - ReLU(-x) = x, then M."""
    eye = torch.eye(M.shape[1], dtype=M.dtype)
    return PlainMLP(torch.cat([eye, -eye]), None, torch.cat([M, -M], 1), None, activation_from("relu"))


def rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# (1) Hand-built pairs whose J is exactly sparse: full recovery exactly at the known number of edges
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_output", [1, 2])
def test_exactly_sparse_pair_is_recovered_exactly_at_its_edge_count(per_output):
    """y = M x with M a permutation (1 input per output) or 2 x 2 blocks of ones (2), both SAEs the exact ±basis:
    every token has d active inputs and d active outputs, and J between them has exactly d * per_output non-zero
    entries. The loss is 0 from that budget on, and > 0 at every smaller one (each missing edge drops a term)."""
    d = 6
    g = torch.Generator().manual_seed(0)
    M = (torch.eye(d, dtype=F64)[torch.randperm(d, generator=g)] if per_output == 1
         else torch.block_diag(*[torch.ones(2, 2, dtype=F64)] * (d // 2)))
    eye = torch.eye(d, dtype=F64)
    pair = JSAEPair(pm_sae(eye), pm_sae(eye), linear_mlp(M))
    x = rows(300, d, 1)
    needed = d * per_output
    curve = I.variance_curve(pair, [x[:100], x[100:]], list(range(needed + 3)))
    loss = np.asarray(curve.loss)
    assert curve.edges[-1] == curve.total == (2 * d) ** 2 and curve.edges[0] == 0
    assert curve.active_in == curve.active_out == d
    assert loss[0] > 1 and np.all(loss[:needed] > 1e-3)
    np.testing.assert_allclose(loss[needed:], 0.0, atol=1e-24)
    assert curve.live[: needed + 1] == tuple(float(m) for m in range(needed + 1))  # the first edges are the live ones
    m = I.curve_metrics(curve)
    assert m["interaction/recovered_full"] == 1.0 and m["interaction/loss_ref"] == 1.0
    assert m["interaction/edges_for_0.99"] <= needed and np.all(curve.circuit_recovered[:needed] < 1)
    assert curve.circuit_recovered[needed] == 1.0


D, LAYER, VOCAB, CTX = 8, 1, 40, 7


def tiny_lm(seed: int = 0, act: str = "gelu", mlp_width: int = 4 * D) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(hidden_size=D, intermediate_size=mlp_width, num_attention_heads=2, num_hidden_layers=2,
                        vocab_size=VOCAB, max_position_embeddings=32, hidden_act=act)
    model = GPTNeoXForCausalLM(cfg).eval().double()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # sharp logits: the layer's MLP output matters
    return model


def contexts(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, CTX), generator=torch.Generator().manual_seed(seed))


def test_kl_curve_of_an_exactly_sparse_pair_in_a_language_model():
    """The layer-1 MLP of a real LM made y = P x (a permutation), the ±basis SAEs: KL(clean || pruned) is 0 from
    d edges per token on and > 0 with d - 1; the zero-ablated MLP's KL is the reference."""
    model = tiny_lm(act="relu", mlp_width=2 * D)
    module = mlp_module(model, LAYER)
    P = torch.eye(D, dtype=F64)[torch.randperm(D, generator=torch.Generator().manual_seed(3))]
    eye = torch.eye(D, dtype=F64)
    with torch.no_grad():
        module.dense_h_to_4h.weight.copy_(torch.cat([eye, -eye]))
        module.dense_4h_to_h.weight.copy_(torch.cat([P, -P], 1))
        module.dense_h_to_4h.bias.zero_()
        module.dense_4h_to_h.bias.zero_()
    pair = JSAEPair(pm_sae(eye), pm_sae(eye), module)
    curve = I.kl_curve(model, LAYER, pair, contexts(3, 0), [D - 1, D, D + 1], batch_size=2)
    kl = dict(zip(curve.edges, curve.loss))
    assert curve.loss_kind == "kl" and curve.n_tokens == 3 * CTX
    assert kl[D] < 1e-12 and kl[D + 1] < 1e-12 and kl[curve.total] < 1e-12
    assert kl[D - 1] > 1e-6 and kl[0] > kl[D - 1]
    assert curve.loss_ref > 1e-3
    assert I.curve_metrics(curve)["interaction/recovered_full"] == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# (2) The planted model: its true dictionaries need the planted edges; a random basis needs many more
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """No superposition (n_x = n_y = d), ReLU units: the true-dictionary circuit is exact and J is zero off the
    planted edges, so each token needs exactly the planted edges whose input clears its threshold."""
    P = build_planted(PlantedConfig(d=16, n_x=16, n_y=16, p=0.15, fan_in=2, activation="relu"))
    s_x, x = P.sample(1024, torch.Generator().manual_seed(1))
    return P, s_x, x


def test_true_dictionaries_need_exactly_the_planted_edges(planted):
    """Per token, the edges needed are the planted edges j -> i whose input clears the edge's threshold (from the
    edge list, not from the pair): the curve reaches loss 0 at the largest such count and not before, and needs
    at most fan_in edges per active output feature. Measured: 4.71 edges needed per token on average, at most 16
    (of 8 x 13 edge slots), 1.08 per active output feature (p = 0.15: an output's second input is rarely on)."""
    P, s_x, x = planted
    k_in, k_out = int((s_x > 0).sum(1).max()), int((P.ideal_s_y(s_x) > 0).sum(1).max())
    pair = oracle_pair(P, k_in=k_in, k_out=k_out)
    e = P.edges
    needed = (s_x[:, e.in_feature] > e.threshold).sum(1)  # [T]: edges carrying a non-zero f(a_j)
    active_out = (P.ideal_s_y(s_x) > 0).sum(1)
    top = int(needed.max())
    curve = I.variance_curve(pair, [x[:512], x[512:]], list(range(top + 2)))
    loss = np.asarray(curve.loss)
    assert curve.loss[-1] < 1e-20 and I.curve_metrics(curve)["interaction/recovered_full"] == pytest.approx(1.0)
    assert loss[top] < 1e-20 and loss[top - 1] > 1e-6
    # per token: with budget m, exactly the tokens needing more than m edges are wrong
    circ, y = I.circuit(pair, x), pair.mlp(x)
    ranks = I.slot_ranks(circ)
    for m in range(top + 1):
        err = ((I.pruned_y_hat(pair, circ, ranks < m) - y) ** 2).sum(1)
        assert torch.equal(err > 1e-20, needed > m), m
    per_output = float(needed.sum()) / float(active_out.sum())
    assert 1.0 <= per_output <= P.config.fan_in
    m = I.curve_metrics(curve)
    assert m["interaction/live_edges_for_0.99"] / m["interaction/active_out"] <= P.config.fan_in


def test_a_random_basis_needs_many_more_edges_and_has_a_worse_area(planted):
    """The same exact reconstruction in a random orthonormal basis (±latents, k = 2d, for both pairs: equal edge
    totals) spreads every output over every input. Measured (1024 tokens, budgets 0, 1, 2, 4, ..., 1024 per token):
    90% of the circuit's effect from 8 edges per token with the true basis, 128 with the random one; circuit area
    0.9975 vs 0.974 (the linear share axis is dominated by the large budgets), log-share area 0.894 vs 0.656."""
    P, _, x = planted
    true = JSAEPair(pm_sae(P.D_x.T.contiguous()), pm_sae(P.D_y.T.contiguous()), P.mlp)
    Q_in, Q_out = (torch.linalg.qr(torch.randn(16, 16, dtype=F64, generator=torch.Generator().manual_seed(s)))[0]
                   for s in (5, 6))
    rand = JSAEPair(pm_sae(Q_in), pm_sae(Q_out), P.mlp)
    curves = {name: I.variance_curve(pair, [x], None) for name, pair in (("true", true), ("random", rand))}
    m = {name: I.curve_metrics(c) for name, c in curves.items()}
    for name in m:  # both circuits are exact: only the interaction differs
        assert m[name]["interaction/recovered_full"] == pytest.approx(1.0, abs=1e-9)
    assert curves["true"].edges == curves["random"].edges and curves["true"].total == 32 * 32
    assert m["true"]["interaction/edges_for_0.9"] <= 8 and m["random"]["interaction/edges_for_0.9"] >= 64
    assert m["true"]["interaction/edges_for_0.5"] <= 2 and m["random"]["interaction/edges_for_0.5"] >= 8
    assert m["true"]["interaction/circuit_area"] > m["random"]["interaction/circuit_area"] + 0.015
    assert m["true"]["interaction/log_circuit_area"] > m["random"]["interaction/log_circuit_area"] + 0.15
    assert m["true"]["interaction/loss_area"] < m["random"]["interaction/loss_area"]


# --------------------------------------------------------------------------------------------------
# (3) Brute force: autograd J, Python sorting, one token and one output latent at a time
# --------------------------------------------------------------------------------------------------


def random_pair(d: int, n_in: int, n_out: int, k: int, seed: int, mlp: nn.Module | None = None) -> JSAEPair:
    g = torch.Generator().manual_seed(seed)
    saes = []
    for n in (n_in, n_out):
        sae = TopKSAE(d, n, k, dtype=F64, seed=seed)
        with torch.no_grad():
            sae.W_enc.add_(0.3 * torch.randn(n, d, dtype=F64, generator=g))
            sae.b_enc.normal_(0.1, 0.3, generator=g)
            sae.b_dec.normal_(0.0, 0.2, generator=g)
        saes.append(sae)
    if mlp is None:
        h = 9
        mlp = PlainMLP(torch.randn(h, d, dtype=F64, generator=g), 0.3 * torch.randn(h, dtype=F64, generator=g),
                       torch.randn(d, h, dtype=F64, generator=g), 0.3 * torch.randn(d, dtype=F64, generator=g),
                       activation_from("gelu"))
    return JSAEPair(*saes, mlp)


def brute_tokens(pair: JSAEPair, x: torch.Tensor) -> list[dict]:
    """Per token: the codes, a function giving the output latents' pre-activations from input latent values, and
    the attributions |J s_x| with J by autograd of that function."""
    si, so, mlp, cin, cout = pair.sae_in, pair.sae_out, pair.mlp, pair.input_scale, pair.output_scale
    out = []
    for t in range(x.shape[0]):
        with torch.no_grad():
            vals, idx = (v[0] for v in si.encode(x[t:t + 1] * cin))

        def x_of(s, idx=idx):
            acc = si.b_dec.detach().clone()
            for c in range(len(idx)):
                acc = acc + s[c] * si.W_dec[idx[c]].detach()
            return acc / cin

        with torch.no_grad():
            ovals, oidx = (v[0] for v in so.encode(mlp(x_of(vals)[None]) * cout))

        def pre(s, oidx=oidx, x_of=x_of):
            yy = mlp(x_of(s)[None])[0] * cout
            return torch.stack([so.W_enc[o].detach() @ yy + so.b_enc[o].detach() for o in oidx])

        J = torch.autograd.functional.jacobian(pre, vals.clone())
        A = [[abs(float(J[a, c] * vals[c])) if ovals[a] > 0 else 0.0 for c in range(len(idx))]
             for a in range(len(oidx))]
        out.append({"vals": vals, "idx": idx.tolist(), "ovals": ovals, "oidx": oidx.tolist(), "pre": pre, "A": A})
    return out


def brute_y_hat(pair: JSAEPair, tok: dict, kept: set[tuple[int, int]]) -> torch.Tensor:
    """The pruned reconstruction of one token, one output latent at a time."""
    so = pair.sae_out
    y = so.b_dec.detach().clone()
    for a, o in enumerate(tok["oidx"]):
        into = [c for c in range(len(tok["idx"])) if (a, c) in kept]
        if tok["ovals"][a] <= 0 or not into:
            continue
        s = torch.stack([tok["vals"][c] if c in into else torch.zeros((), dtype=F64) for c in range(len(tok["idx"]))])
        with torch.no_grad():
            y = y + torch.relu(tok["pre"](s)[a]) * so.W_dec[o].detach()
    return y / pair.output_scale


def token_kept(tok: dict, m: int) -> set[tuple[int, int]]:
    k_out, k_in = len(tok["oidx"]), len(tok["idx"])
    order = sorted(range(k_out * k_in), key=lambda e: (-tok["A"][e // k_in][e % k_in], e))
    return {(e // k_in, e % k_in) for e in order[:m]}


def global_kept(toks: list[dict], n_out: int, n_in: int, M: int):
    score = np.zeros((n_out, n_in))
    for tok in toks:
        for a, o in enumerate(tok["oidx"]):
            for c, i in enumerate(tok["idx"]):
                score[o, i] += tok["A"][a][c] ** 2
    score = np.sqrt(score)
    order = sorted(range(n_out * n_in), key=lambda f: (-score[f // n_in, f % n_in], f))
    keep = {(f // n_in, f % n_in) for f in order[:M]}
    return lambda tok: {(a, c) for a, o in enumerate(tok["oidx"]) for c, i in enumerate(tok["idx"]) if (o, i) in keep}


def brute_fvu(pair: JSAEPair, x: torch.Tensor, toks: list[dict], kept_of) -> float:
    y = pair.mlp(x)
    y_hat = torch.stack([brute_y_hat(pair, tok, kept_of(tok)) for tok in toks])
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_curves_equal_brute_force_per_token_and_global():
    """A random pair (GELU MLP with biases, SAE biases, activation scales 1.7 / 0.6) on 10 tokens: every budget of
    the token curve and a grid of the global one equal the explicit computation."""
    pair = random_pair(d=5, n_in=7, n_out=6, k=3, seed=0)
    with torch.no_grad():
        pair.sae_in.b_enc[:4] -= 1.5  # some TopK-selected input latents are 0: edges from silent inputs
    pair.set_activation_scales(1.7, 0.6)
    x = rows(10, 5, 2)
    toks = brute_tokens(pair, x)
    silent_in = sum(int((t["vals"] == 0).sum()) for t in toks)
    off_out = sum(int((t["ovals"] == 0).sum()) for t in toks)
    assert 0 < silent_in < 30 and 0 < off_out < 30  # both special cases are exercised
    assert I.variance_curve(pair, [x], None).edges == (0, 1, 2, 4, 8, 9)  # the default budgets
    curve = I.variance_curve(pair, [x[:4], x[4:]], list(range(10)))
    for m, loss in zip(curve.edges, curve.loss):
        assert loss == pytest.approx(brute_fvu(pair, x, toks, lambda tok, m=m: token_kept(tok, m)), rel=1e-10), m
    ranks = I.global_edge_ranks(pair, [x[:3], x[3:]])
    grid = [0, 1, 3, 5, 8, 13, 21, 42]
    gcurve = I.variance_curve(pair, [x], grid, edges="global", global_ranks=ranks)
    assert gcurve.total == 42 and gcurve.mode == "global"
    for M, loss in zip(gcurve.edges, gcurve.loss):
        assert loss == pytest.approx(brute_fvu(pair, x, toks, global_kept(toks, 6, 7, M)), rel=1e-10), M


class _Swap(nn.Module):
    """The oracle splice: the block's MLP replaced by a module returning ``fn(rows)`` at positions >= 1."""

    def __init__(self, mlp: nn.Module, fn):
        super().__init__()
        self.mlp, self.fn = mlp, fn

    def forward(self, x):
        y = self.mlp(x).clone()
        y[:, 1:] = self.fn(x[:, 1:].reshape(-1, x.shape[-1])).reshape(y[:, 1:].shape)
        return y


def swapped_kl(model: nn.Module, ids: torch.Tensor, fn) -> float:
    block = decoder_layers(model)[LAYER]
    original = block.mlp
    with torch.no_grad():
        clean = torch.log_softmax(model(input_ids=ids).logits, -1)
        block.mlp = _Swap(original, fn)
        try:
            lp = torch.log_softmax(model(input_ids=ids).logits, -1)
        finally:
            block.mlp = original
    return float((clean.exp() * (clean - lp)).sum(-1).mean())


def test_kl_curve_equals_a_module_swap_with_the_brute_force_pruning():
    model = tiny_lm(seed=1)
    module = mlp_module(model, LAYER)
    pair = random_pair(d=D, n_in=12, n_out=10, k=3, seed=1, mlp=module)
    ids = contexts(2, 1)
    budgets = [2, 5]
    curve = I.kl_curve(model, LAYER, pair, ids, budgets, batch_size=1)
    kl = dict(zip(curve.edges, curve.loss))

    def pruned(m):
        return lambda r: torch.stack([brute_y_hat(pair, tok, token_kept(tok, m)) for tok in brute_tokens(pair, r)])

    assert curve.loss_ref == pytest.approx(swapped_kl(model, ids, torch.zeros_like), rel=1e-9)
    for m in budgets:
        assert kl[m] == pytest.approx(swapped_kl(model, ids, pruned(m)), rel=1e-9), m


# --------------------------------------------------------------------------------------------------
# Areas and edges needed: hand-computed
# --------------------------------------------------------------------------------------------------


def test_curve_scalars_on_a_hand_made_curve():
    c = I.InteractionCurve(edges=(0, 1, 2, 4), total=4, loss=(2.0, 1.0, 0.5, 0.0), loss_ref=4.0,
                           live=(0.0, 1.0, 2.0, 3.0), active_in=2.0, active_out=2.0, loss_kind="kl", mode="token",
                           n_tokens=7)
    np.testing.assert_allclose(c.share, [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(c.recovered, [0.5, 0.75, 0.875, 1])
    np.testing.assert_allclose(c.circuit_recovered, [0, 0.5, 0.75, 1])
    m = I.curve_metrics(c)
    k = I.interaction_key
    assert m[k("area")] == pytest.approx(0.25 * (0.5 + 0.75) / 2 + 0.25 * (0.75 + 0.875) / 2 + 0.5 * (0.875 + 1) / 2)
    assert m[k("circuit_area")] == pytest.approx(0.25 * 0.25 + 0.25 * 1.25 / 2 + 0.5 * 1.75 / 2)
    assert m[k("loss_area")] == pytest.approx(0.25 * 1.5 + 0.25 * 0.75 + 0.5 * 0.25)
    assert m[k("log_circuit_area")] == pytest.approx(0.5 * (0.5 + 0.75) / 2 + 0.5 * (0.75 + 1) / 2)  # log_4 1, 2, 4
    assert (m[k("edges_for_0.5")], m[k("edges_for_0.9")], m[k("live_edges_for_0.9")]) == (1.0, 4.0, 3.0)
    flat = I.InteractionCurve((0, 1), 1, (1.0, 1.0), 1.0, (0.0, 1.0), 1.0, 1.0, "fvu", "token", 3)
    assert np.isnan(flat.circuit_recovered).all() and np.isnan(I.curve_metrics(flat)[k("edges_for_0.5")])


# --------------------------------------------------------------------------------------------------
# (4) Bad inputs are one-line errors; the command line end to end on a planted model
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors():
    pair = random_pair(d=5, n_in=7, n_out=6, k=3, seed=0)
    x = rows(4, 5, 0)
    cases = [
        (lambda: I.check_budgets([-1], 9), "budget -1 is invalid; expected an integer in 0..9"),
        (lambda: I.check_budgets([10], 9), "budget 10 is invalid; expected an integer in 0..9"),
        (lambda: I.check_budgets([1.5], 9), "budget 1.5 is invalid"),
        (lambda: I.check_budgets([True], 9), "budget True is invalid"),
        (lambda: I.total_edges(pair, "local"), "edges='local' is invalid; expected one of token, global"),
        (lambda: I.variance_curve(pair, [], [1]), "the evaluation set is empty"),
        (lambda: I.variance_curve(pair, [x], [1], edges="global"), "edges='global' needs global_ranks"),
        (lambda: I.global_edge_ranks(pair, [x[:0]]), "the edge-ranking set is empty"),
        (lambda: I.pruned_out_vals(pair, I.circuit(pair, x), torch.ones(4, 3, 2, dtype=torch.bool)),
         "keep has shape (4, 3, 2)"),
        (lambda: I.GlobalEdgeScores(1 << 14, 1 << 13), "global edges need a dense 16384 x 8192 score matrix"),
        (lambda: I.kl_curve(nn.Linear(1, 1), 0, pair, torch.zeros(3, dtype=torch.long)), "contexts has shape (3,)"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError) as err:
            fn()
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


TINY = {"d": 16, "n_x": 24, "n_y": 12, "p": 0.08, "frame_steps": 50}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A planted model directory, its validation cache (the cache command) and the true-dictionary pair saved as a
    run directory."""
    from jsae.export import save_pair
    from jsae.io import write_json

    root = tmp_path_factory.mktemp("interaction")
    P = build_planted(PlantedConfig(**TINY))
    save_planted(P, root / "model")
    assert main(["cache", "--model", str(root / "model"), "--layer", "0", "--split", "validation", "--n-tokens",
                 "600", "--out", str(root / "validation.h5")]) == 0
    run = root / "run"
    save_pair(oracle_pair(P, k_in=4, k_out=4, bias_in=0.25, bias_out=0.25), run, hook_name="planted.mlp",
              metadata={})
    write_json(run / "run.json", {"model": str(root / "model"), "layer": 0, "hook": PLANTED_HOOK, "lam": 0.0})
    return root, P


def test_cli_writes_the_curve_of_the_function(planted_run, tmp_path):
    from jsae.data.cache import ActivationCache

    root, P = planted_run
    common = ["--model", str(root / "model"), "--run", str(root / "run"), "--cache", str(root / "validation.h5"),
              "--device", "cpu", "--mlflow-uri", "none", "--no-progress"]
    assert main(["interaction", *common, "--out", str(tmp_path / "i.json"), "--budgets", "1", "2", "4",
                 "--batch-size", "256"]) == 0
    out = json.loads((tmp_path / "i.json").read_text())
    pair = oracle_pair(P, k_in=4, k_out=4, bias_in=0.25, bias_out=0.25)
    with ActivationCache.open(root / "validation.h5") as cache:
        x = cache.read()
    curve = I.variance_curve(pair, [x], [1, 2, 4])
    assert out["curve"]["edges"] == [0, 1, 2, 4, 16]
    np.testing.assert_allclose(out["curve"]["loss"], curve.loss, rtol=1e-9)
    for key, value in I.curve_metrics(curve).items():
        assert out["metrics"][key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    assert out["settings"]["loss"] == "fvu" and out["settings"]["edges"] == "token" and out["pair"]["layer"] == 0
    assert main(["interaction", *common, "--out", str(tmp_path / "g.json"), "--edges", "global", "--budgets", "8",
                 "64"]) == 0
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["curve"]["edges"] == [0, 8, 64, 24 * 12] and g["settings"]["score_tokens"] == 600
    assert g["curve"]["circuit_recovered"][-1] == pytest.approx(1.0)


def test_cli_bad_inputs_are_one_line(planted_run, tmp_path, capsys):
    root, _ = planted_run
    common = ["--model", str(root / "model"), "--cache", str(root / "validation.h5"), "--out",
              str(tmp_path / "i.json"), "--mlflow-uri", "none"]
    for extra, message in (
        (["--run", str(root / "run"), "--budgets", "17"], "budget 17 is invalid; expected an integer in 0..16"),
        (["--run", str(tmp_path / "nope")], "run directory"),
        (["--run", str(root / "run"), "--n-tokens", "601"], "n_tokens=601 is invalid"),
        (["--run", str(root / "run"), "--batch-size", "0"], "batch_size=0 is invalid"),
    ):
        assert main(["interaction", *common, *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "i.json").exists()
