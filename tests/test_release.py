"""The release (``python -m jsae export``) and ``jsae.load_pair``, checked by the tools that read them: SAELens's
loader and its pretrained_saes.yaml parser, sparsify's SparseCoder, TransformerLens's hook names, Hugging Face's
model-card parser, and the models' own forwards. Also: the release rule is an explicit Snakemake target,
the README's loaders run as written, LICENSE and CITATION.cff.

One tiny GPT-NeoX (saved with save_pretrained, no downloads) gets two pairs trained on its layer 2 by
``run_training`` (λ = 1 evaluated, λ = 0 not), laid out as a study's results/ in a temporary directory.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import jsae
from jsae.__main__ import main
from jsae.data.cache import hook_name
from jsae.data.hooks import mlp_module
from jsae.export import (
    ARCHITECTURES,
    PAIR_FILENAME,
    SAE_WEIGHTS_FILENAME,
    hook_names,
    load_sae,
    read_manifest,
    write_manifest,
)
from jsae.nn.mlp import mlp_from_module
from jsae.nn.pair import JSAEPair
from jsae.release import NEURONPEDIA_FILENAME, RELEASE_MANIFEST, SAE_LENS_DIRECTORY, base_model

REPO = Path(__file__).resolve().parents[1]
HAS_SAE_LENS = importlib.util.find_spec("sae_lens") is not None
HAS_SPARSIFY = importlib.util.find_spec("sparsify") is not None
HAS_TL = importlib.util.find_spec("transformer_lens") is not None
VOCAB, LAYER, N_CTX, CTX = 64, 2, 32, 16
PAIR = f"tiny-neox/L{LAYER}/trained/lam1/seed0"
PAIR0 = f"tiny-neox/L{LAYER}/trained/lam0/seed0"
SPEC = "results/models/tiny-neox"  # relative, as the workflow records it: the tests run in the study's root
#: Neuronpedia's upload tool's hook-point choices (its convert-saedashboard-to-neuronpedia-export script).
NEURONPEDIA_HOOK_POINTS = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_in", "hook_mlp_out",
                           "hook_attn_in", "hook_attn_out", "hook_z"}


# --------------------------------------------------------------------------------------------------
# Tiny language models of each family the export names hooks for
# --------------------------------------------------------------------------------------------------


def tiny_config(family: str):
    import transformers as t

    gated = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    configs = {
        "neox": lambda: t.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=64, bos_token_id=0,
                                        eos_token_id=0),
        "gpt2": lambda: t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0),
        "llama": lambda: t.LlamaConfig(**gated),
        "mistral": lambda: t.MistralConfig(**gated),
        "qwen2": lambda: t.Qwen2Config(**gated),
        "phi3": lambda: t.Phi3Config(**gated),
        "gemma": lambda: t.GemmaConfig(**gated, head_dim=8),
        "gemma2": lambda: t.Gemma2Config(**gated, head_dim=8, sliding_window=8),
        "gemma3": lambda: t.Gemma3TextConfig(**gated, head_dim=8, sliding_window=8),
    }
    return configs[family]()


FAMILIES = ("neox", "gpt2", "llama", "mistral", "qwen2", "phi3", "gemma", "gemma2", "gemma3")


def save_tiny_lm(family: str, out: Path, seed: int = 0):
    """A tiny causal LM with a word-level tokenizer, saved with save_pretrained; returned in eval mode."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    with torch.no_grad():  # norm weights and biases off 1 / 0 too, so a hook before a norm's affine would differ
        for p in lm.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.normal_(0.5, 0.3)
    lm.save_pretrained(out)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w0", eos_token="w0", pad_token="w0",
                            unk_token="w0").save_pretrained(out)
    return lm


def module_io(lm, module: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: ``module``'s input and output in a complete forward of ``lm``."""
    seen = {}

    def hook(_mod, args, kwargs, output):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["y"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            lm(input_ids=ids)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def dense(vals: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(vals.shape[0], n, dtype=vals.dtype).scatter_(1, idx, vals)


def clear_tokens(sae, x: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Tokens whose k-th and (k+1)-th pre-activations differ by more than ``margin``: their top k cannot change
    with float rounding (two encoders that round differently must agree on these)."""
    with torch.no_grad():
        top = sae.pre_activations(x).topk(sae.k + 1, dim=-1).values
    return (top[:, sae.k - 1] - top[:, sae.k]) > margin


@contextlib.contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------------------------------
# A study's results/: two trained pairs, one evaluated, and their release
# --------------------------------------------------------------------------------------------------


class Study:
    root: Path
    lm: torch.nn.Module
    ids: torch.Tensor
    x: torch.Tensor  # MLP inputs of layer 2 from a full forward, [tokens, d]
    y: torch.Tensor  # MLP outputs
    release: Path

    def run_dir(self, pair: str = PAIR) -> Path:
        return self.root / "results" / "runs" / pair

    def eval_json(self, pair: str = PAIR) -> Path:
        return self.root / "results" / "eval" / pair / "evaluation.json"


class _Rows:
    """The part of an ActivationCache that the activation metrics read."""

    def __init__(self, x: torch.Tensor, attrs: dict) -> None:
        self.x, self.attrs, self.n_tokens = x, attrs, x.shape[0]

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    from jsae.eval.evaluate import evaluate_pair, write_evaluation
    from jsae.eval.inputs import pair_identity
    from jsae.train import InMemorySource, TrainConfig, run_training

    s = Study()
    s.root = tmp_path_factory.mktemp("study")
    s.lm = save_tiny_lm("neox", s.root / SPEC)
    s.ids = torch.randint(1, VOCAB, (N_CTX, CTX), generator=torch.Generator().manual_seed(0))
    x, y = module_io(s.lm, mlp_module(s.lm, LAYER), s.ids)
    s.x, s.y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    attrs = {"model": SPEC, "layer": LAYER, "hook": hook_name(s.lm, LAYER), "model_class": type(s.lm).__name__,
             "d_model": s.x.shape[1], "n_tokens": s.x.shape[0], "context_length": CTX, "corpus_sha256": "test"}
    mlp = mlp_from_module(mlp_module(s.lm, LAYER))
    with cwd(s.root):
        for lam, pair in ((1.0, PAIR), (0.0, PAIR0)):
            cfg = TrainConfig(lam=lam, n_tokens=32 * 16, batch_size=32, k=4, expansion=4, lr=3e-3, seed=0,
                              normalize_activations="expected_norm")
            run_training(mlp, InMemorySource(s.x, attrs=attrs), cfg, s.run_dir(pair), model=SPEC, layer=LAYER,
                         hook_name=hook_name(s.lm, LAYER).removesuffix(".input"), progress=False, log_every=8,
                         checkpoint_every=100)
        run = json.loads((s.run_dir() / "run.json").read_text())
        pair = jsae.load_pair(s.run_dir(), mlp)
        evaluation = evaluate_pair(pair, _Rows(s.x, attrs), batch_size=128, token_stats=64, progress=False)
        write_evaluation(s.eval_json(), evaluation, pair_identity(run, pair))
    s.release = s.root / "results" / "release"
    assert main(["export", "--runs", str(s.root / "results"), "--out", str(s.release)]) == 0
    return s


@pytest.fixture
def in_study(study, monkeypatch) -> Study:
    monkeypatch.chdir(study.root)
    return study


# --------------------------------------------------------------------------------------------------
# pair.json and jsae.load_pair
# --------------------------------------------------------------------------------------------------


def test_manifest_of_a_trained_run_records_the_pair(in_study, tmp_path) -> None:
    s = in_study
    run = json.loads((s.run_dir() / "run.json").read_text())
    at_training = json.loads((s.run_dir() / PAIR_FILENAME).read_text())  # training's, rewritten after run.json
    m = write_manifest(s.run_dir(), out=tmp_path / PAIR_FILENAME)
    assert json.loads((tmp_path / PAIR_FILENAME).read_text()) == json.loads(json.dumps(m))
    assert m["model"] == {"spec": SPEC, "revision": None, "class": "GPTNeoXForCausalLM", "name": "tiny-neox"}
    assert (m["layer"], m["control"], m["lam"], m["seed"]) == (LAYER, "trained", 1.0, 0)
    assert (m["k"], m["n_latents"], m["k_out"], m["n_latents_out"]) == (4, 128, 4, 128)
    assert m["activation_scales"]["input_scale"] == run["activation_scales"]["in"]
    assert m["activation_scales"]["output_scale"] == run["activation_scales"]["out"]
    assert m["activation_scales"]["normalization"] == "expected_norm"
    assert m["training"]["tokens"] == run["tokens_trained"] == 512
    assert m["saes"]["sae_in"]["hooks"] == {
        "hf": "gpt_neox.layers.2.mlp.input", "hf_module": "gpt_neox.layers.2.post_attention_layernorm",
        "transformer_lens": "blocks.2.mlp.hook_in", "sparsify": "layers.2.post_attention_layernorm"}
    assert m["saes"]["sae_out"]["hooks"] == {
        "hf": "gpt_neox.layers.2.mlp.output", "hf_module": "gpt_neox.layers.2.mlp",
        "transformer_lens": "blocks.2.hook_mlp_out", "sparsify": "layers.2.mlp"}
    # the MLP as the module itself says (training) and as the model's config says (rewritten from disk)
    assert at_training["mlp"]["kind"] == m["mlp"]["kind"] == "plain"
    assert at_training["mlp"]["activation"] == m["mlp"]["activation"] == "gelu"
    assert at_training["saes"]["sae_in"]["n_latents"] == 128 and at_training["seed"] == 0  # complete: after run.json
    versions = m["versions"]["written_with"]
    assert versions["jsae"] == jsae.__version__ and versions["torch"] == torch.__version__
    assert versions["sae_lens"] == (importlib.metadata.version("sae-lens") if HAS_SAE_LENS else None)
    evaluation = json.loads(s.eval_json().read_text())
    for key, value in m["evaluation"]["metrics"].items():
        assert value == evaluation["metrics"][key], key
    assert "in/explained_variance" in m["evaluation"]["metrics"]
    unevaluated = write_manifest(s.run_dir(PAIR0), out=tmp_path / "p0.json")
    assert unevaluated["evaluation"] is None and unevaluated["lam"] == 0.0


def _assert_same_outputs(a: JSAEPair, b: JSAEPair, x: torch.Tensor) -> None:
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for field in ("x_hat", "y", "y_hat", "in_vals", "in_idx", "out_vals", "out_idx", "jacobian"):
        assert torch.equal(getattr(oa, field), getattr(ob, field)), field


@pytest.mark.parametrize("where", ["run", "release"])
def test_load_pair_rebuilds_the_pair_on_its_model(in_study, where) -> None:
    """From the manifest alone (model loaded from its spec) and on a given model: the same outputs and Jacobian as
    the pair around the original model's MLP, whose y is the MLP's output in a full forward."""
    from jsae.data.models import load_model

    s = in_study
    folder = s.run_dir() if where == "run" else s.release / PAIR
    original = JSAEPair(load_sae(s.run_dir() / "sae_in"), load_sae(s.run_dir() / "sae_out"),
                        mlp_from_module(mlp_module(s.lm, LAYER)))
    with torch.no_grad():
        assert torch.equal(original(s.x).y, s.y)  # the oracle: the LM's own MLP output at that layer
    _assert_same_outputs(original, jsae.load_pair(folder), s.x)
    lm, _ = load_model(SPEC)
    _assert_same_outputs(original, jsae.load_pair(folder, lm), s.x)


def test_load_pair_round_trip_from_memory(in_study, tmp_path) -> None:
    """A pair built in memory, saved with save_pair (run.json given), comes back identical on a reloaded model."""
    from test_export import trained_like_sae

    from jsae.data.models import load_model
    from jsae.export import save_pair

    s = in_study
    pair = JSAEPair(trained_like_sae(32, 96, 5, seed=1), trained_like_sae(32, 80, 3, seed=2),
                    mlp_from_module(mlp_module(s.lm, LAYER)))
    run = {**json.loads((s.run_dir() / "run.json").read_text()), "seed": 7}
    save_pair(pair, tmp_path / "p", hook_name="gpt_neox.layers.2.mlp", metadata={"model_name": SPEC}, run=run)
    assert read_manifest(tmp_path / "p")["seed"] == 7
    _assert_same_outputs(pair, jsae.load_pair(tmp_path / "p"), s.x)
    _assert_same_outputs(pair, jsae.load_pair(tmp_path / "p", load_model(SPEC)[0]), s.x)


def test_load_pair_refuses_another_model_in_one_line(in_study, tmp_path) -> None:
    s = in_study
    gpt2 = save_tiny_lm("gpt2", tmp_path / "gpt2")
    with pytest.raises(ValueError, match="GPT2LMHeadModel but .* trained on a GPTNeoXForCausalLM") as exc:
        jsae.load_pair(s.run_dir(), gpt2)
    assert "\n" not in str(exc.value)
    copy = tmp_path / "copy"
    for role in ("sae_in", "sae_out"):
        (copy / role).mkdir(parents=True)
        for f in (s.run_dir() / role).iterdir():
            (copy / role / f.name).write_bytes(f.read_bytes())
    m = read_manifest(s.run_dir())
    (copy / PAIR_FILENAME).write_text(json.dumps({**m, "mlp": {**m["mlp"], "activation": "silu"}}))
    with pytest.raises(ValueError, match="activation 'gelu' but .* records 'silu'"):
        jsae.load_pair(copy, s.lm)
    (copy / PAIR_FILENAME).write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        jsae.load_pair(copy)
    with pytest.raises(TypeError, match="expected a causal LM, an MLP module or None"):
        jsae.load_pair(s.run_dir(), "tiny-neox")


# --------------------------------------------------------------------------------------------------
# Hook names: TransformerLens and the modules' own forwards are the oracles
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TL, reason="transformer-lens is not installed (a dependency of sae-lens)")
@pytest.mark.parametrize("family", FAMILIES)
def test_hook_names_are_where_each_tool_sees_the_mlp_input_and_output(family, tmp_path) -> None:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    lm = save_tiny_lm(family, tmp_path / family)
    assert type(lm).__name__ in ARCHITECTURES
    ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    x, y = module_io(lm, mlp_module(lm, 1), ids)
    names = hook_names(hook_name(lm, 1).removesuffix(".input"), 1, type(lm).__name__)
    # hf_module: that module's forward output is the activation; sparsify: the same module of the base model
    assert ARCHITECTURES[type(lm).__name__].base_prefix == lm.base_model_prefix
    for role, want in (("sae_in", x), ("sae_out", y)):
        module = lm.get_submodule(names[role]["hf_module"])
        assert lm.base_model.get_submodule(names[role]["sparsify"]) is module
        assert torch.equal(module_io(lm, module, ids)[1], want), role
    # TransformerLens (its bridge runs eager attention: equal up to float rounding)
    bridge = TransformerBridge.boot_transformers(str(tmp_path / family), device="cpu",
                                                 tokenizer=AutoTokenizer.from_pretrained(tmp_path / family))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    for role, want in (("sae_in", x), ("sae_out", y)):
        torch.testing.assert_close(cache[names[role]["transformer_lens"]], want, rtol=1e-4, atol=1e-4, msg=role)
    # the name the brief suggested is not the MLP input: TransformerLens hooks it before the norm's affine
    assert not torch.allclose(cache["blocks.1.ln2.hook_normalized"], x, atol=1e-3)


def test_hook_names_without_a_transformer_lens_equivalent() -> None:
    for cls in (None, "PlantedModel", "OPTForCausalLM"):
        names = hook_names("planted.mlp", 0, cls)
        assert names["sae_in"] == {"hf": "planted.mlp.input", "hf_module": None, "transformer_lens": None,
                                   "sparsify": None}


# --------------------------------------------------------------------------------------------------
# The release, read by SAELens, sparsify, Hugging Face and Neuronpedia's conventions
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_SAE_LENS, reason="sae-lens is not installed (pip install -e '.[test]')")
def test_sae_lens_loads_the_release_with_transformer_lens_hooks(study) -> None:
    from sae_lens import SAE

    s = study
    for role, acts, tl in (("sae_in", s.x, "blocks.2.mlp.hook_in"), ("sae_out", s.y, "blocks.2.hook_mlp_out")):
        folder = s.release / PAIR / role
        assert (folder / SAE_WEIGHTS_FILENAME).read_bytes() == (s.run_dir() / role / SAE_WEIGHTS_FILENAME).read_bytes()
        theirs = SAE.load_from_disk(folder)
        meta = theirs.cfg.metadata
        assert type(theirs).__name__ == "TopKSAE" and meta.hook_name == tl
        assert meta.hf_hook_name == read_manifest(s.run_dir())["saes"][role]["hooks"]["hf_module"]
        assert meta.jsae_hook_name == f"gpt_neox.layers.2.mlp.{'input' if role == 'sae_in' else 'output'}"
        ours = load_sae(folder)
        with torch.no_grad():
            vals, idx = ours.encode(acts)
            assert torch.equal(theirs.encode(acts), dense(vals, idx, ours.n_latents))


@pytest.mark.skipif(not (HAS_SAE_LENS and HAS_TL), reason="needs sae-lens and transformer-lens")
def test_sae_lens_attaches_the_release_to_the_model_at_its_hooks(study) -> None:
    """SAELens's SAETransformerBridge hooks each released SAE where the MLP's input / output flows."""
    from sae_lens import SAE, SAETransformerBridge
    from transformers import AutoTokenizer

    s = study
    bridge = SAETransformerBridge.boot_transformers(str(s.root / SPEC), device="cpu",
                                                    tokenizer=AutoTokenizer.from_pretrained(s.root / SPEC))
    saes = {role: SAE.load_from_disk(s.release / PAIR / role) for role in ("sae_in", "sae_out")}
    for sae in saes.values():
        bridge.add_sae(sae, use_error_term=True)  # the model's own activations flow on: sae_out sees the true y
    with torch.no_grad():
        _, cache = bridge.run_with_cache(s.ids)
    for role, acts in (("sae_in", s.x), ("sae_out", s.y)):
        seen = cache[bridge.get_sae_hook_name(saes[role], "hook_sae_input")].reshape(acts.shape)
        torch.testing.assert_close(seen, acts, rtol=1e-4, atol=1e-4)  # eager vs sdpa attention: float rounding
        ours = load_sae(s.run_dir() / role)
        latents = cache[bridge.get_sae_hook_name(saes[role])].reshape(-1, ours.n_latents)
        with torch.no_grad():
            assert torch.equal(latents, dense(*ours.encode(seen), ours.n_latents))


@pytest.mark.skipif(not HAS_SPARSIFY, reason="eai-sparsify is not installed (pip install eai-sparsify==1.3.3)")
def test_sparsify_loads_the_release_at_its_hookpoints(study) -> None:
    from sparsify import SparseCoder

    s = study
    coders = SparseCoder.load_many(str(s.release / PAIR / "sparsify"), local=True)
    assert sorted(coders) == ["layers.2.mlp", "layers.2.post_attention_layernorm"]
    for hookpoint, role, acts in (("layers.2.post_attention_layernorm", "sae_in", s.x), ("layers.2.mlp", "sae_out",
                                                                                         s.y)):
        ours = load_sae(s.run_dir() / role)
        # the hookpoint's module output in the base model (what sparsify's trainer hooks) is what our SAE reads
        assert torch.equal(module_io(s.lm, s.lm.base_model.get_submodule(hookpoint), s.ids)[1].reshape(acts.shape),
                           acts)
        coder = coders[hookpoint]
        assert (coder.num_latents, coder.cfg.k, coder.d_in) == (ours.n_latents, ours.k, ours.d_in)
        clear = clear_tokens(ours, acts)
        assert clear.float().mean() > 0.9
        with torch.no_grad():
            top = coder.encode(acts)
            vals, idx = ours.encode(acts)
            theirs = dense(top.top_acts, top.top_indices, ours.n_latents)
            mine = dense(vals, idx, ours.n_latents)
            torch.testing.assert_close(theirs[clear], mine[clear], rtol=1e-5, atol=1e-5)
            decoded = coder.decode(top.top_acts, top.top_indices)
            torch.testing.assert_close(decoded[clear], ours.decode(vals, idx)[clear], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_SAE_LENS, reason="sae-lens is not installed (pip install -e '.[test]')")
def test_pretrained_saes_yaml_is_read_by_sae_lens_own_parser(study, monkeypatch) -> None:
    from sae_lens import SAE
    from sae_lens.loading import pretrained_saes_directory as directory

    s = study
    for folder in (s.release, s.release / PAIR):
        monkeypatch.setattr(directory, "files", lambda _package, folder=folder: folder)  # SAELens reads this file
        parsed = directory.get_pretrained_saes_directory.__wrapped__()
        assert len(parsed) == 1
        (release,) = parsed.values()
        assert release.repo_id == "HF_USER/REPO" and release.conversion_func is None
        assert release.model == SPEC  # a local model: no hub id to name
        expected = {f"{p}/{role}" for p in ((PAIR, PAIR0) if folder == s.release else (PAIR,))
                    for role in ("sae_in", "sae_out")}
        assert set(release.saes_map) == expected and set(release.saes_map.values()) == expected
        assert release.expected_l0[f"{PAIR}/sae_in"] == 4
        ev = json.loads(s.eval_json().read_text())["metrics"]["in/explained_variance"]
        assert release.expected_var_explained[f"{PAIR}/sae_in"] == ev
        for path in release.saes_map.values():
            assert SAE.load_from_disk(s.release / path).cfg.d_sae == 128


def test_model_card_front_matter(study) -> None:
    from huggingface_hub import ModelCard

    s = study
    card = ModelCard.load(s.release / PAIR / "README.md").data.to_dict()
    run = json.loads((s.run_dir() / "run.json").read_text())
    metrics = json.loads(s.eval_json().read_text())["metrics"]
    assert (card["library_name"], card["license"]) == ("saelens", "mit")
    assert "sparse-autoencoder" in card["tags"] and "base_model" not in card  # a local model is no hub id
    assert (card["layer"], card["lambda"], card["k"]) == (LAYER, 1.0, {"sae_in": 4, "sae_out": 4})
    assert card["training_tokens"] == run["tokens_trained"]
    assert card["hook_points"]["sae_in"]["transformer_lens"] == "blocks.2.mlp.hook_in"
    assert card["metrics"] and all(card["metrics"][k] == metrics[k] for k in card["metrics"])
    top = ModelCard.load(s.release / "README.md")
    assert top.data.to_dict()["library_name"] == "saelens" and PAIR0 in top.text
    assert "hf upload HF_USER/REPO" in top.text


def test_base_model_is_a_hub_id_only() -> None:
    manifest = lambda spec: {"model": {"spec": spec}}
    assert base_model(manifest("EleutherAI/pythia-70m-deduped")) == "EleutherAI/pythia-70m-deduped"
    assert base_model(manifest("gpt2")) == "gpt2"
    assert base_model(manifest("smollm2-135m")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model(manifest("results/models/tiny-neox")) is None


def test_neuronpedia_json_has_what_its_upload_asks_for(study) -> None:
    s = study
    entry = json.loads((s.release / PAIR / NEURONPEDIA_FILENAME).read_text())
    for key in ("creator_name", "release_id", "release_title", "url", "model_name", "sources"):
        assert entry[key], key
    assert [src["role"] for src in entry["sources"]] == ["sae_in", "sae_out"]
    for src in entry["sources"]:
        assert src["hook_point"] in NEURONPEDIA_HOOK_POINTS
        assert re.fullmatch(r"[a-z0-9.\-]+/\d+-[A-Za-z0-9\-]+", src["neuronpedia_id"]), src["neuronpedia_id"]
        assert src["neuronpedia_id"] == f"{entry['model_name']}/{src['layer_num']}-{src['neuronpedia_source_set_id']}"
        assert (s.release / src["hf_weights_path"]).is_file()
    assert entry["sources"][0]["neuronpedia_source_set_id"] != entry["sources"][1]["neuronpedia_source_set_id"]


def test_release_manifest_select_and_bad_input(study, tmp_path, capsys) -> None:
    s = study
    manifest = json.loads((s.release / RELEASE_MANIFEST).read_text())
    pairs = {p["path"]: p for p in manifest["pairs"]}
    assert sorted(pairs) == [PAIR0, PAIR] and (pairs[PAIR]["evaluated"], pairs[PAIR0]["evaluated"]) == (True, False)
    assert pairs[PAIR]["saes"]["sae_out"]["sparsify"] == f"{PAIR}/sparsify/layers.2.mlp"
    # written from outside the study's root: its relative model spec was found next to results/
    released = json.loads((s.release / PAIR / PAIR_FILENAME).read_text())
    assert released["mlp"]["activation"] == "gelu" and released["model"]["spec"] == SPEC
    assert (s.release / SAE_LENS_DIRECTORY).is_file()
    out = tmp_path / "rel"
    assert main(["export", "--runs", str(s.root / "results"), "--out", str(out), "--select", "*/lam0/*",
                 "--repo-id", "someone/jsae"]) == 0
    assert [p["path"] for p in json.loads((out / RELEASE_MANIFEST).read_text())["pairs"]] == [PAIR0]
    assert "hf upload someone/jsae" in (out / "README.md").read_text()
    for argv, message in ((["--select", "nope/*"], "--select 'nope/*' matches none of the 2 pairs"),
                          (["--repo-id", "bad id"], "--repo-id 'bad id' is invalid")):
        assert main(["export", "--runs", str(s.root / "results"), "--out", str(tmp_path / "x"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", "--runs", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "runs does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


# --------------------------------------------------------------------------------------------------
# The README's loaders, as written
# --------------------------------------------------------------------------------------------------


def readme_snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index("## Use the trained SAEs elsewhere")
    end = text.index("\n## The library", start)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


@pytest.mark.skipif(not (HAS_SAE_LENS and HAS_SPARSIFY), reason="needs sae-lens and eai-sparsify")
def test_readme_loaders_run_as_written(in_study) -> None:
    s = in_study
    snippets = readme_snippets()
    assert len(snippets) == 3 and all(PAIR in code for code in snippets)
    ours = {role: load_sae(s.run_dir() / role) for role in ("sae_in", "sae_out")}
    with torch.no_grad():
        sae_lens_ns = {"x": s.x, "y": s.y}
        exec(snippets[0], sae_lens_ns)
        assert torch.equal(sae_lens_ns["latents"], dense(*ours["sae_in"].encode(s.x), 128))
        sparsify_ns = {"x": s.x, "y": s.y}
        exec(snippets[1], sparsify_ns)
        clear = clear_tokens(ours["sae_out"], s.y)
        top = sparsify_ns["top"]
        torch.testing.assert_close(dense(top.top_acts, top.top_indices, 128)[clear],
                                   dense(*ours["sae_out"].encode(s.y), 128)[clear], rtol=1e-5, atol=1e-5)
        jsae_ns = {"x": s.x, "y": s.y}
        exec(snippets[2], jsae_ns)
        assert torch.equal(jsae_ns["out"].y, s.y) and jsae_ns["out"].jacobian is not None


# --------------------------------------------------------------------------------------------------
# The workflow target, LICENSE and CITATION.cff
# --------------------------------------------------------------------------------------------------


def dry_run(*targets: str, cwd: Path) -> str:
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([snakemake, "-s", str(REPO / "Snakefile"), *targets, "-n", "-p", "--configfile",
                          str(REPO / "config" / "config.yaml")], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_release_is_an_explicit_snakemake_target(tmp_path) -> None:
    out = dry_run("results/release/manifest.json", cwd=tmp_path)
    command = next(line for line in out.splitlines() if "python -m jsae export" in line)
    assert "--runs results --out results/release --select" in command
    assert "tiny-neox/L2/trained/lam1/seed0" in command and "planted-gelu/L0/trained/lam0/seed2" in command
    assert re.search(r"^rule export:$", out, re.M) and re.search(r"^rule evaluate:$", out, re.M)


@pytest.mark.slow
def test_the_default_target_does_not_build_the_release(tmp_path) -> None:
    out = dry_run(cwd=tmp_path)
    assert re.search(r"^rule train:$", out, re.M) and "python -m jsae export" not in out


def test_license_and_citation() -> None:
    import tomllib

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the jsae authors\n")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert cff[key], key
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    (paper,) = cff["references"]
    assert paper["type"] in ("conference-paper", "article") and "2502.18147" in json.dumps(paper)
    assert paper["authors"][0]["family-names"] == "Farnik" and paper["year"] == 2025
