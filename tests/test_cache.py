"""The HDF5 activation cache: round trip, attributes, dtypes, kill-and-rerun, refusal, the shuffled batch reader."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from test_models import no_network, tiny_corpus, tiny_models, tiny_tokenizer  # noqa: F401  (fixtures)

import jsae.data.cache as cache_mod
from jsae.data.cache import REQUIRED_ATTRS, ActivationCache, build_cache, build_caches
from jsae.data.hooks import mlp_module
from jsae.data.models import load_model

CTX = 24
N = 500  # rows: 22 contexts of 23 rows, the last one partly used


@pytest.fixture(scope="module")
def neox(tiny_models):  # noqa: F811
    return str(tiny_models["neox"])


@pytest.fixture(scope="module")
def cache32(neox, tiny_corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("cache") / "train.h5"
    build_cache(neox, 2, tiny_corpus, "train", N, CTX, out, batch_size=5, seed=3, device="cpu", progress=False)
    return out


def test_attrs_and_row_metadata(cache32, neox, tiny_corpus):  # noqa: F811
    from jsae.data.corpus import corpus_info

    with ActivationCache.open(cache32) as c:
        assert set(REQUIRED_ATTRS) <= set(c.attrs)
        assert c.attrs["model"] == neox and c.attrs["layer"] == 2 and c.attrs["split"] == "train"
        assert c.attrs["hook"] == "gpt_neox.layers.2.mlp.input" and c.attrs["first_position"] == "excluded"
        assert c.attrs["corpus_sha256"] == corpus_info(tiny_corpus)["sha256"]
        assert (c.n_tokens, c.d_model, c.context_length, c.attrs["seed"]) == (N, 32, CTX, 3)
        ctx = c.contexts()
        assert ctx.shape == (-(-N // (CTX - 1)), CTX) and (ctx[:, 0] == c.attrs["bos_token_id"]).all()
        assert c.read().shape == (N, 32) and c.read(10, 20).dtype == torch.float32
        # every row maps back to its token: contexts[context_index, position] == token_ids, position 0 never stored
        assert (ctx[c.context_index, c.position] == c.token_ids).all()
        assert c.position.min() == 1 and c.position.max() == CTX - 1
        assert len(c.token_ids) == len(c.context_index) == len(c.position) == len(c.document) == N
        assert (c.document >= -1).all()


def test_expect_refuses_another_model_layer_or_corpus(cache32, neox):  # noqa: F811
    ActivationCache.open(cache32, expect={"model": neox, "layer": 2, "split": "train", "context_length": CTX}).close()
    for bad in ({"layer": 1}, {"model": "other/model"}, {"corpus_sha256": "0" * 64}, {"split": "validation"}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=f"belongs to {key}=.*expected {key}="):
            ActivationCache.open(cache32, expect=bad)
    with pytest.raises(ValueError, match="no attribute 'colour'"):
        ActivationCache.open(cache32, expect={"colour": "red"})


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_low_precision_storage(dtype, tol, cache32, neox, tiny_corpus, tmp_path):  # noqa: F811
    out = tmp_path / f"{dtype}.h5"
    build_cache(
        neox, 2, tiny_corpus, "train", N, CTX, out, dtype=dtype, batch_size=8, seed=3, device="cpu", progress=False
    )
    with ActivationCache.open(out, expect={"dtype": dtype}) as lo, ActivationCache.open(cache32) as hi:
        x, ref = lo.read(), hi.read()
        expected = ref.to(getattr(torch, dtype)).float()
        assert torch.equal(x, expected)  # exactly the rounded float32 value
        assert (x - ref).abs().max() <= tol * ref.abs().max()


def test_kill_and_rerun_resumes_to_the_same_file(cache32, neox, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "killed.h5"
    real = cache_mod.capture_mlp_inputs
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "capture_mlp_inputs", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(neox, 2, tiny_corpus, "train", N, CTX, out, batch_size=5, seed=3, device="cpu", progress=False)
    assert not out.exists()  # nothing that looks complete
    assert cache_mod._partial_path(out).exists()
    with pytest.raises(FileNotFoundError, match="partial"):
        ActivationCache.open(out)

    calls["n"] = -100  # never dies again
    build_cache(neox, 2, tiny_corpus, "train", N, CTX, out, batch_size=5, seed=3, device="cpu", progress=False)
    assert calls["n"] == -100 + 3  # resumed: only the 3 remaining batches of 5 contexts (22 contexts, 2 done)
    assert not cache_mod._partial_path(out).exists()
    with ActivationCache.open(out) as a, ActivationCache.open(cache32) as b:
        assert torch.equal(a.read(), b.read())
        assert (a.token_ids == b.token_ids).all() and (a.contexts() == b.contexts()).all()


def test_stale_partial_of_another_request_is_discarded(neox, tiny_corpus, tmp_path, cache32):  # noqa: F811
    out = tmp_path / "c.h5"
    partial = cache_mod._partial_path(out)
    partial.write_bytes(b"garbage, not hdf5")
    build_cache(neox, 2, tiny_corpus, "train", N, CTX, out, batch_size=5, seed=3, device="cpu", progress=False)
    with ActivationCache.open(out) as a, ActivationCache.open(cache32) as b:
        assert torch.equal(a.read(), b.read())


def test_corrupt_and_incomplete_files_are_refused(tmp_path, cache32):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(cache32.read_bytes()[:2000])
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        ActivationCache.open(bad)
    import h5py

    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.attrs["model"] = "x"
    with pytest.raises(ValueError, match="lacks"):
        ActivationCache.open(tmp_path / "empty.h5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationCache.open(tmp_path / "missing.h5")


def _stream(c, bs, seed, n, **kw):
    return torch.cat(list(itertools.islice(c.batches(bs, seed=seed, **kw), n)))


@pytest.fixture(scope="module")
def row_id_cache(cache32, tmp_path_factory):
    """A copy of the cache whose row i holds the value i everywhere, so a stream of rows can be checked exactly."""
    import shutil

    import h5py

    path = tmp_path_factory.mktemp("ids") / "ids.h5"
    shutil.copy(cache32, path)
    with h5py.File(path, "r+") as f:
        f["x"][...] = np.repeat(np.arange(N, dtype=np.float32)[:, None], f["x"].shape[1], axis=1)
    cache_mod.refresh_checksums(path)  # rewritten on purpose: its checksums follow
    return path


def test_batches_shuffle_deterministically_and_cover_every_row(cache32, row_id_cache):
    with ActivationCache.open(cache32) as c, ActivationCache.open(row_id_cache) as ids:
        c.chunk_rows = 16  # small chunks so that several buffers make one pass
        bs, buffer, n = 7, 64, 3 * N // 7 + 1
        real = _stream(c, bs, 0, n, buffer_rows=buffer)
        assert torch.equal(real, _stream(c, bs, 0, n, buffer_rows=buffer, prefetch=False))
        assert not torch.equal(real, _stream(c, bs, 1, n, buffer_rows=buffer))
        ids.chunk_rows = 16
        s = _stream(ids, bs, 0, n, buffer_rows=buffer)[:, 0].long()
        x = c.read()
        assert torch.equal(real, x[s])  # rows are real rows
        passes = [s[p * N : (p + 1) * N].tolist() for p in range(3)]
        for p in passes:
            assert sorted(p) == list(range(N))  # each pass yields every row exactly once
        assert passes[0] != passes[1] != passes[2]  # a new permutation per pass
        assert passes[0][:50] != list(range(50))  # shuffled, not sequential
        # the buffer mixes chunks: the first batch of a pass draws from several chunks of 16 rows
        assert len({r // 16 for r in passes[1][:bs]}) > 2


@pytest.mark.parametrize("start", [0, 1, 9, 71, 72, 150, 1000])
def test_batches_resume_exactly(row_id_cache, start):
    with ActivationCache.open(row_id_cache) as c:
        c.chunk_rows = 16
        bs = 7
        full = list(itertools.islice(c.batches(bs, seed=5, buffer_rows=48), start + 3))
        resumed = list(itertools.islice(c.batches(bs, seed=5, buffer_rows=48, start_batch=start), 3))
        for a, b in zip(full[start:], resumed, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0, "seed": 0}, "batch_size"),
        ({"batch_size": 4, "seed": 0, "start_batch": -1}, "start_batch"),
    ],
)
def test_bad_batches_arguments(cache32, kwargs, match):
    with ActivationCache.open(cache32) as c, pytest.raises(ValueError, match=match):
        next(c.batches(**kwargs))


def test_the_mlp_input_seen_by_hooks_equals_the_cache(cache32, neox):  # noqa: F811
    """The cache and later stages share jsae.data.hooks: re-capturing a cached context gives the cached rows."""
    from jsae.data.hooks import capture_mlp_input

    model, _ = load_model(neox)
    with ActivationCache.open(cache32) as c:
        ids = torch.from_numpy(c.contexts()[:2].astype(np.int64))
        x = capture_mlp_input(model, 2, ids)[:, 1:].reshape(-1, c.d_model)
        torch.testing.assert_close(c.read(0, len(x)), x, rtol=1e-5, atol=1e-6)
    assert mlp_module(model, 2) is model.gpt_neox.layers[2].mlp


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"layer": 3}, ValueError, r"layer=3 is out of range.*\[0, 2\]"),
        ({"layer": -1}, ValueError, "out of range"),
        ({"context_length": 65}, ValueError, "context_length=65 exceeds the model's maximum of 64"),
        ({"context_length": 1}, ValueError, "context_length=1"),
        ({"n_tokens": 10**7}, ValueError, "n_tokens=10000000 needs"),
        ({"n_tokens": 0}, ValueError, "n_tokens=0"),
        ({"split": "test"}, ValueError, "split='test'"),
        ({"dtype": "int8"}, ValueError, "dtype='int8'"),
        ({"out": "x.txt"}, ValueError, "expected a path ending in .h5"),
        ({"model": "no-such-model"}, ValueError, "unknown"),
    ],
)
def test_bad_input_is_refused_before_heavy_compute(change, error, match, neox, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    args = {
        "model": neox,
        "layer": 2,
        "corpus": tiny_corpus,
        "split": "train",
        "n_tokens": N,
        "context_length": CTX,
        "out": tmp_path / "c.h5",
    }
    args.update(change)
    if "n_tokens" not in change:  # everything except the corpus-size check happens before tokenising
        monkeypatch.setattr(cache_mod, "tokenize_split", lambda *a, **k: pytest.fail("tokenised before the checks"))
    monkeypatch.setattr(cache_mod, "capture_mlp_inputs", lambda *a, **k: pytest.fail("forward before the checks"))
    with pytest.raises(error, match=match):
        build_cache(**args, device="cpu", progress=False)
    assert not (tmp_path / "c.h5").exists()


def test_missing_or_empty_corpus(neox, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_cache(neox, 0, tmp_path / "nope", "train", 10, CTX, tmp_path / "c.h5", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    (empty / "validation.jsonl").write_text("")
    (empty / "corpus.json").write_text(
        json.dumps({"sha256": "0", "splits": {"train": {"documents": 0}, "validation": {"documents": 0}}})
    )
    with pytest.raises(ValueError, match="is empty"):
        build_cache(neox, 0, empty, "train", 10, CTX, tmp_path / "c.h5", device="cpu")


def test_unsupported_mlp_type_is_refused(neox, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    model, tok = load_model(neox)
    model.gpt_neox.layers[1].mlp = torch.nn.Sequential(torch.nn.Linear(32, 32))
    monkeypatch.setattr("jsae.data.models.load_model", lambda *a, **k: (model, tok))
    with pytest.raises(TypeError, match="unsupported MLP module type Sequential"):
        build_cache(neox, 1, tiny_corpus, "train", N, CTX, tmp_path / "c.h5", device="cpu", progress=False)


def test_cli_writes_a_cache(neox, tiny_corpus, tmp_path, no_network):  # noqa: F811
    out = tmp_path / "cli.h5"
    threads = torch.get_num_threads()
    assert (
        cache_mod.cli(
            [
                "--model",
                neox,
                "--layer",
                "0",
                "--corpus",
                str(tiny_corpus),
                "--split",
                "validation",
                "--n-tokens",
                "50",
                "--context-length",
                str(CTX),
                "--out",
                str(out),
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    torch.set_num_threads(threads)  # the CLI sets the process' thread count
    with ActivationCache.open(out, expect={"layer": 0, "split": "validation", "dtype": "bfloat16"}) as c:
        assert c.n_tokens == 50 and torch.isfinite(c.read()).all()


# --------------------------------------------------------------------------------------------------
# Several layers from one forward
# --------------------------------------------------------------------------------------------------


def test_several_layers_from_one_forward_equal_their_own_caches(neox, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    """Layers 0 and 1 cached together: layer 1 is bit for bit its single-layer cache; layer 0 is what a full
    forward (no early stop) hands block 0's MLP; and no block after the deepest cached one runs."""
    from jsae.data.hooks import capture_mlp_input

    alone = tmp_path / "alone.h5"
    build_cache(neox, 1, tiny_corpus, "train", N, CTX, alone, batch_size=5, seed=3, device="cpu", progress=False)
    lm, tok = load_model(neox)
    ran = []
    handle = mlp_module(lm, 2).register_forward_pre_hook(lambda *a: ran.append(2))
    monkeypatch.setattr("jsae.data.models.load_model", lambda *a, **k: (lm, tok))
    outs = [tmp_path / "L0.h5", tmp_path / "L1.h5"]
    attrs = build_caches(neox, [0, 1], tiny_corpus, "train", N, CTX, outs, batch_size=5, seed=3, device="cpu",
                         progress=False)
    handle.remove()
    assert not ran  # the forward ended at block 1's MLP
    assert [a["layer"] for a in attrs] == [0, 1] and attrs[0]["forward_dtype"] == "float32"
    with ActivationCache.open(outs[1]) as both, ActivationCache.open(alone) as one:
        assert torch.equal(both.read(), one.read()) and (both.token_ids == one.token_ids).all()
    with ActivationCache.open(outs[0], expect={"layer": 0}) as c0:
        ctx = torch.from_numpy(c0.contexts()[:4].astype(np.int64))
        full = capture_mlp_input(lm, 0, ctx, stop=False)[:, 1:].reshape(-1, c0.read(0, 1).shape[1])
        assert torch.allclose(c0.read(0, len(full)), full, atol=1e-6)


def test_several_layers_resume_together_after_a_kill(cache32, neox, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    real = cache_mod.capture_mlp_inputs
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "capture_mlp_inputs", dying)
    outs = [tmp_path / "a.h5", tmp_path / "b.h5"]
    kw = dict(batch_size=5, seed=3, device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_caches(neox, [1, 2], tiny_corpus, "train", N, CTX, outs, **kw)
    assert not any(o.exists() for o in outs) and all(cache_mod._partial_path(o).exists() for o in outs)
    calls["n"] = -100
    build_caches(neox, [1, 2], tiny_corpus, "train", N, CTX, outs, **kw)
    assert calls["n"] == -100 + 4  # resumed after the first batch: 4 of 5 batches left
    with ActivationCache.open(outs[1]) as a, ActivationCache.open(cache32) as b:
        assert torch.equal(a.read(), b.read())


def test_bfloat16_forwards_stay_close_to_float32(cache32, neox, tiny_corpus, tmp_path):  # noqa: F811
    out = tmp_path / "bf16.h5"
    build_cache(neox, 2, tiny_corpus, "train", N, CTX, out, batch_size=5, seed=3, device="cpu", progress=False,
                forward_dtype="bfloat16")
    with ActivationCache.open(out, expect={"forward_dtype": "bfloat16", "dtype": "float32"}) as a, \
            ActivationCache.open(cache32) as b:
        x, ref = a.read(), b.read()
    rel = (x - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert 0 < rel.median() < 0.05, rel.median()


@pytest.mark.parametrize("layers, outs, match", [
    ([0, 2], ["a.h5"], "2 layers and 1 output files; expected one output per layer"),
    ([2, 2], ["a.h5", "b.h5"], "repeat; expected distinct values"),
    ([0, 2], ["a.h5", "a.h5"], "repeat; expected distinct values"),
])
def test_several_layers_bad_arguments(layers, outs, match, neox, tiny_corpus, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        build_caches(neox, layers, tiny_corpus, "train", N, CTX, [tmp_path / o for o in outs], device="cpu")


def test_cli_caches_two_layers(neox, tiny_corpus, tmp_path, no_network):  # noqa: F811
    outs = [tmp_path / "L0.h5", tmp_path / "L1.h5"]
    threads = torch.get_num_threads()
    args = ["--model", neox, "--layer", "0", "1", "--corpus", str(tiny_corpus), "--split", "validation",
            "--n-tokens", "50", "--context-length", str(CTX), "--out", *map(str, outs), "--forward-dtype",
            "bfloat16"]
    assert cache_mod.cli(args) == 0
    torch.set_num_threads(threads)
    for layer, out in enumerate(outs):
        with ActivationCache.open(out, expect={"layer": layer, "forward_dtype": "bfloat16"}) as c:
            assert c.n_tokens == 50
