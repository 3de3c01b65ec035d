"""TopK transcoders and skip transcoders (jsae.nn.transcoder) against EleutherAI's sparsify as the oracle: given
identical weights our forward (and its gradients) equal ``sparsify.SparseCoder`` with ``transcode=True`` (and
``skip_connection=True``); sparsify loads what we save and computes the same outputs; our initialisation is
sparsify's; and at equal width, k, tokens and data our trained transcoder's FVU is not worse than sparsify's."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from jsae.eval.metrics import explained_variance
from jsae.nn.transcoder import TRANSCODER_METHODS, TopKTranscoder, check_method

HAS_SPARSIFY = importlib.util.find_spec("sparsify") is not None
needs_sparsify = pytest.mark.skipif(not HAS_SPARSIFY, reason="eai-sparsify is not installed "
                                    "(pip install eai-sparsify==1.3.3)")
D, N, K = 12, 48, 4


def random_transcoder(skip: bool, *, d_out: int = D, dtype=torch.float64, seed: int = 0) -> TopKTranscoder:
    """A transcoder with every parameter random (non-zero decoder, biases and skip path)."""
    tc = TopKTranscoder(D, d_out, N, K, skip=skip, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)
    return tc


def sparsify_coder(tc: TopKTranscoder):
    """sparsify's SparseCoder with our transcoder's weights (its transcoder encoder does not subtract b_dec)."""
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(k=tc.k, num_latents=tc.n_latents, transcode=True, skip_connection=tc.skip)
    sc = SparseCoder(tc.d_in, cfg, "cpu", dtype=tc.W_enc.dtype)
    with torch.no_grad():
        sc.encoder.weight.copy_(tc.W_enc)
        sc.encoder.bias.copy_(tc.b_enc)
        sc.W_dec.copy_(tc.W_dec)
        sc.b_dec.copy_(tc.b_dec)
        if tc.skip:
            sc.W_skip.copy_(tc.W_skip)
    return sc


def active_codes(vals: torch.Tensor, idx: torch.Tensor) -> list[dict[int, float]]:
    """Per token, {latent: value} of the latents with a positive value (ties at 0 may pick different latents)."""
    return [{int(i): float(v) for v, i in zip(vr, ir) if v > 0} for vr, ir in zip(vals.detach(), idx)]


# --------------------------------------------------------------------------------------------------
# Same weights, same function: sparsify's SparseCoder as the oracle
# --------------------------------------------------------------------------------------------------


@needs_sparsify
@pytest.mark.parametrize("method", list(TRANSCODER_METHODS))
def test_forward_equals_sparsify_given_identical_weights(method):
    tc = random_transcoder(TRANSCODER_METHODS[method])
    sc = sparsify_coder(tc)
    x = torch.randn(200, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    y = torch.randn(200, D, dtype=torch.float64)
    theirs = sc(x, y)
    vals, idx = tc.encode(x)
    torch.testing.assert_close(tc.decode(vals, idx, x), theirs.sae_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tc(x), theirs.sae_out, rtol=1e-12, atol=1e-12)
    ours_codes, their_codes = active_codes(vals, idx), active_codes(theirs.latent_acts, theirs.latent_indices)
    assert len(ours_codes) == 200 and all(len(c) > 0 for c in ours_codes)
    for a, b in zip(ours_codes, their_codes):
        assert a.keys() == b.keys() and all(math.isclose(a[i], b[i], rel_tol=1e-12) for i in a)
    # sparsify's FVU is the loss of our MSE on the same batch, rescaled by the batch's total variance
    fvu = float(((y - tc(x)) ** 2).sum().detach() / ((y - y.mean(0)) ** 2).sum())
    assert float(theirs.fvu.detach()) == pytest.approx(fvu, rel=1e-10)


@needs_sparsify
@pytest.mark.parametrize("method", list(TRANSCODER_METHODS))
def test_gradients_equal_sparsify_given_identical_weights(method):
    """Our TopK backward (only the k selected latents) against sparsify's FusedEncoder backward, every parameter."""
    tc = random_transcoder(TRANSCODER_METHODS[method], seed=3)
    sc = sparsify_coder(tc)
    x = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ((tc(x) - y) ** 2).sum().backward()
    ((sc(x, y).sae_out - y) ** 2).sum().backward()
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec", "W_skip": "W_skip"}
    theirs = dict(sc.named_parameters())
    for ours_name, p in tc.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), ours_name
        torch.testing.assert_close(p.grad, theirs[names[ours_name]].grad, rtol=1e-10, atol=1e-12, msg=ours_name)


@needs_sparsify
def test_initialisation_is_sparsifys():
    """W_dec, W_skip and the biases start at 0 and W_enc in nn.Linear's range; the first-batch bias
    initialisation of sparsify's trainer (b_enc = -mean(x) W_enc^T, b_dec = mean(y)) is init_biases_."""
    from sparsify import SparseCoder, SparseCoderConfig

    sc = SparseCoder(D, SparseCoderConfig(k=K, num_latents=N, transcode=True, skip_connection=True), "cpu")
    tc = TopKTranscoder(D, D, N, K, skip=True, seed=0)
    for ours, theirs in ((tc.W_dec, sc.W_dec), (tc.W_skip, sc.W_skip), (tc.b_dec, sc.b_dec),
                         (tc.b_enc, sc.encoder.bias)):
        assert ours.shape == theirs.shape and not ours.any() and not theirs.any()
    bound = 1 / math.sqrt(D)
    for W in (tc.W_enc, sc.encoder.weight):
        assert float(W.abs().max()) <= bound and float(W.abs().max()) > 0.9 * bound
        assert float(W.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)  # uniform on [-bound, bound]
    x, y = torch.randn(300, D) + 1.0, torch.randn(300, D) - 2.0
    tc.init_biases_(x.double().mean(0), y.double().mean(0))
    torch.testing.assert_close(tc.b_enc, -x.mean(0) @ tc.W_enc.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tc.b_dec, y.mean(0), rtol=1e-6, atol=1e-6)
    # seeded: the same seed, the same encoder; another seed, another
    assert torch.equal(TopKTranscoder(D, D, N, K, seed=5).W_enc, TopKTranscoder(D, D, N, K, seed=5).W_enc)
    assert not torch.equal(TopKTranscoder(D, D, N, K, seed=5).W_enc, TopKTranscoder(D, D, N, K, seed=6).W_enc)


@needs_sparsify
@pytest.mark.parametrize("method", list(TRANSCODER_METHODS))
def test_sparsify_loads_what_we_save(tmp_path, method):
    from sparsify import SparseCoder

    from jsae.train.baseline import load_transcoder, save_transcoder

    tc = random_transcoder(TRANSCODER_METHODS[method], dtype=torch.float32, seed=7)
    save_transcoder(tc, tmp_path / "transcoder", {"hook_name": "gpt_neox.layers.1.mlp"})
    sc = SparseCoder.load_from_disk(tmp_path / "transcoder")
    assert sc.cfg.transcode and sc.cfg.skip_connection == tc.skip and sc.cfg.k == K and sc.num_latents == N
    x = torch.randn(100, D)
    torch.testing.assert_close(sc(x).sae_out, tc(x), rtol=1e-5, atol=1e-6)  # float32: summation order only
    back = load_transcoder(tmp_path / "transcoder")
    assert back.skip == tc.skip and back.method == method
    for name, p in tc.named_parameters():
        assert torch.equal(p, getattr(back, name)), name


# --------------------------------------------------------------------------------------------------
# Our own contracts
# --------------------------------------------------------------------------------------------------


def test_skip_path_and_shapes():
    tc = random_transcoder(True, d_out=7)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    vals, idx = tc.encode(x)
    assert vals.shape == idx.shape == (3, 5, K) and tc(x).shape == (3, 5, 7)
    plain = tc.decode(vals, idx, x) - x @ tc.W_skip.T
    dense = (torch.nn.functional.one_hot(idx.reshape(-1, K), N).double() * vals.reshape(-1, K, 1)).sum(1)
    ref = (dense @ tc.W_dec).reshape(3, 5, 7) + tc.b_dec
    torch.testing.assert_close(plain, ref)
    with pytest.raises(ValueError, match="decodes with its input"):
        tc.decode(vals, idx)


@pytest.mark.parametrize("skip", [False, True])
def test_fold_scales_gives_the_raw_space_function(skip):
    """Trained on (a x -> b y): after folding, T(x) = T_scaled(a x) / b with the same latents."""
    tc = random_transcoder(skip)
    a, b = 3.5, 0.25
    x = torch.randn(50, D, dtype=torch.float64)
    before, codes = tc(a * x) / b, tc.encode(a * x)
    tc.fold_scales_(a, b)
    torch.testing.assert_close(tc(x), before)
    assert torch.equal(tc.encode(x)[1], codes[1])
    with pytest.raises(ValueError, match="input_scale=0"):
        tc.fold_scales_(0, 1)


def test_bad_arguments_are_one_line_errors():
    for kwargs, message in ((dict(k=0), "k=0 is invalid"), (dict(k=N + 1), f"k={N + 1} is invalid"),
                            (dict(n_latents=0), "n_latents=0 is invalid")):
        args = {"d_in": D, "d_out": D, "n_latents": N, "k": K, **kwargs}
        with pytest.raises(ValueError, match=message):
            TopKTranscoder(**args)
    with pytest.raises(ValueError, match="method='crosscoder' is invalid; expected one of transcoder, skip_transcoder"):
        check_method("crosscoder")
    with pytest.raises(ValueError, match=r"has shape \(4, 3\); expected \[..., 12\]"):
        TopKTranscoder(D, D, N, K).encode(torch.zeros(4, 3))


# --------------------------------------------------------------------------------------------------
# Training quality at equal width, k, tokens and data
# --------------------------------------------------------------------------------------------------


class SparsifyTranscoderStep:
    """sparsify's ``SparseCoder(transcode=True[, skip_connection])`` stepped as ``sparsify.trainer.Trainer.fit`` steps
    a transcoder with ``loss_fn="fvu"``: on the first batch ``encoder.bias = -mean(x) W^T`` and ``b_dec = mean(y)``;
    no decoder renormalisation or gradient projection (it does neither for transcoders); FVU against the batch's
    total variance; its default optimiser (schedule-free SignSGD, LR ``5e-3 / sqrt(n / 2**14)``) or, ``recipe="ours"``,
    our trainer's (fused Adam on ``lr_at`` with the same activation scales)."""

    def __init__(self, n: int, k: int, *, skip: bool, n_steps: int, seed: int, recipe: str, lr: float,
                 scales: tuple[float, float]) -> None:
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(seed)  # as its trainer, before building each coder
        self.sae = SparseCoder(D, SparseCoderConfig(k=k, num_latents=n, transcode=True, skip_connection=skip), "cpu")
        self.recipe, self.lr, self.n_steps, self.step = recipe, lr, n_steps, 0
        if recipe == "sparsify":
            from schedulefree import ScheduleFreeWrapper
            from sparsify.sign_sgd import SignSGD

            self.opt = ScheduleFreeWrapper(SignSGD([{"params": list(self.sae.parameters()),
                                                     "lr": 5e-3 / (n / 2**14) ** 0.5}]), momentum=0.95)
            self.opt.train()
            self.scales = (1.0, 1.0)
        else:
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr, fused=True)
            self.scales = scales

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from jsae.train.schedules import lr_at

        x, y = x * self.scales[0], y * self.scales[1]
        if self.recipe == "ours":
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, self.n_steps, lr=self.lr)
        if self.step == 0:
            self.sae.encoder.bias.data = -x.mean(0) @ self.sae.encoder.weight.data.T
            self.sae.b_dec.data = y.mean(0)
        out = self.sae(x=x, y=y, total_variance=(y - y.mean(0)).pow(2).sum())
        out.fvu.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.step += 1

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.opt, "eval"):  # schedule-free: its checkpoints hold the averaged weights
            self.opt.eval()
        return self.sae(x * self.scales[0]).sae_out / self.scales[1]


def sparse_feature_data(n: int, seed: int) -> torch.Tensor:
    """MLP inputs made of sparse features in superposition (48 directions in 12 dims, ~3 active) plus noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(48, D, generator=torch.Generator().manual_seed(123))
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    s = (torch.rand(n, 48, generator=g) < 0.06) * torch.rand(n, 48, generator=g) * 3
    return s @ dirs + 0.05 * torch.randn(n, D, generator=g) + 0.5


@needs_sparsify
@pytest.mark.parametrize("method", list(TRANSCODER_METHODS))
def test_fvu_not_worse_than_sparsify_at_equal_width_k_tokens_and_data(method):
    """Ours (our trainer and recipe) against sparsify's model trained on the same batches in the same order, with
    its own default recipe and with ours: held-out FVU of the MLP output, mean over two seeds. Measured here: the
    recipes' ranking depends on the LR for so short a run (250 steps): at LR 0.003 sparsify's schedule-free SignSGD
    is 13% better than our Adam, at 0.01 (used here) ours is 20% better, and at 600 steps ours is better at both;
    ours and sparsify's model on our recipe agree within ~2% (the seed-to-seed spread). "Not worse beyond noise" =
    at most 5% above either."""
    from builders import build_hf_mlp

    from jsae.nn.mlp import mlp_from_module
    from jsae.train.baseline import TranscoderTrainer, build_transcoder, data_means
    from jsae.train.config import TrainConfig
    from jsae.train.run import estimate_activation_scales
    from jsae.train.sources import InMemorySource

    mlp = mlp_from_module(build_hf_mlp("neox-gelu")).float()
    x_train, x_val = sparse_feature_data(20_000, 1), sparse_feature_data(4_000, 2)
    with torch.no_grad():
        y_val = mlp(x_val)
    source = InMemorySource(x_train)
    n_latents, batch, steps = 64, 128, 250
    fvu: dict[str, list[float]] = {"ours": [], "sparsify": [], "sparsify_our_recipe": []}
    for seed in (0, 1):
        cfg = TrainConfig(lam=0.0, k=K, n_latents=n_latents, n_tokens=steps * batch, batch_size=batch, lr=0.01,
                          normalize_activations="expected_norm", seed=seed)
        scales = estimate_activation_scales(mlp, source, cfg)
        tc = build_transcoder(mlp, cfg, method)
        tc.init_biases_(*data_means(mlp, source, cfg, scales))
        ours = TranscoderTrainer(tc, mlp, source, cfg, scales=scales, progress=False)
        theirs = {name: SparsifyTranscoderStep(n_latents, K, skip=tc.skip, n_steps=steps, seed=seed, recipe=recipe,
                                               lr=cfg.lr, scales=scales)
                  for name, recipe in (("sparsify", "sparsify"), ("sparsify_our_recipe", "ours"))}
        batches = source.batches(batch, seed=seed)  # the data order our trainer reads
        for _ in range(steps):
            xb = next(batches)
            ours.train_step(xb)
            with torch.no_grad():
                yb = mlp(xb)
            for step in theirs.values():
                step(xb, yb)
        tc.fold_scales_(*scales)
        with torch.no_grad():
            fvu["ours"].append(1 - explained_variance(y_val, tc(x_val)))
            for name, step in theirs.items():
                fvu[name].append(1 - explained_variance(y_val, step.predict(x_val)))
    mean = {name: sum(v) / len(v) for name, v in fvu.items()}
    assert 0 < mean["ours"] < 0.5, fvu  # it learned something
    for name in ("sparsify", "sparsify_our_recipe"):
        assert mean["ours"] <= 1.05 * mean[name], fvu
