"""SAELens-format export: exact round trip, the documented layout, and SAELens itself when installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from jsae.export import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    load_pair,
    load_sae,
    read_run,
    save_pair,
    save_sae,
)
from jsae.nn.mlp import mlp_from_module
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE

HAS_SAE_LENS = importlib.util.find_spec("sae_lens") is not None


def trained_like_sae(d: int, n: int, k: int, seed: int) -> TopKSAE:
    """A SAE whose four tensors are all non-trivial (biases non-zero, W_enc != W_dec)."""
    sae = TopKSAE(d, n, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(sae.b_enc.shape, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(sae.b_dec.shape, generator=g))
    return sae


def test_sae_round_trip_is_exact(tmp_path: Path) -> None:
    sae = trained_like_sae(12, 50, 5, seed=1)
    save_sae(sae, tmp_path / "sae", hook_name="h", metadata={"model_name": "m"})
    back = load_sae(tmp_path / "sae")
    assert (back.d_in, back.n_latents, back.k) == (12, 50, 5)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
        assert back.state_dict()[name].dtype == tensor.dtype


def test_file_layout_matches_sae_lens_format(tmp_path: Path) -> None:
    """Exactly four tensors, W_enc stored [d_in, d_sae] (our W_enc transposed), and the cfg keys SAELens needs."""
    sae = trained_like_sae(12, 50, 5, seed=2)
    save_sae(sae, tmp_path / "sae", hook_name="gpt_neox.layers.1.mlp.input", metadata={"model_name": "m"})
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == sorted([SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME])
    with safe_open(str(tmp_path / "sae" / SAE_WEIGHTS_FILENAME), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (12, 50), "b_enc": (50,), "W_dec": (50, 12), "b_dec": (12,)
    }
    assert torch.equal(tensors["W_enc"], sae.W_enc.detach().t())
    assert torch.equal(tensors["W_dec"], sae.W_dec.detach())
    cfg = json.loads((tmp_path / "sae" / SAE_CFG_FILENAME).read_text())
    assert cfg["architecture"] == "topk"
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["dtype"]) == (12, 50, 5, "float32")
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == "gpt_neox.layers.1.mlp.input"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["model_name"] == "m"


def test_pair_round_trip_and_read_run(tmp_path: Path, hf_mlp_neox: torch.nn.Module) -> None:
    mlp = mlp_from_module(hf_mlp_neox).float()
    pair = JSAEPair(trained_like_sae(12, 40, 4, seed=3), trained_like_sae(12, 30, 3, seed=4), mlp)
    save_pair(pair, tmp_path / "run", hook_name="gpt_neox.layers.0.mlp", metadata={"lam": 1.0})
    back = load_pair(tmp_path / "run", mlp)
    for a, b in ((pair.sae_in, back.sae_in), (pair.sae_out, back.sae_out)):
        for name, tensor in a.state_dict().items():
            assert torch.equal(b.state_dict()[name], tensor), name
    x = torch.randn(16, 12)
    assert torch.equal(pair(x).jacobian, back(x).jacobian)
    cfg_out = json.loads((tmp_path / "run" / "sae_out" / SAE_CFG_FILENAME).read_text())
    assert cfg_out["metadata"]["hook_name"] == "gpt_neox.layers.0.mlp.output"
    assert cfg_out["metadata"]["sae_role"] == "sae_out"
    with pytest.raises(FileNotFoundError, match="run.json does not exist"):
        read_run(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"lam": 1.0}))
    assert read_run(tmp_path / "run") == {"lam": 1.0}


@pytest.fixture
def hf_mlp_neox() -> torch.nn.Module:
    from builders import build_hf_mlp

    return build_hf_mlp("neox-gelu")


def test_bad_directories_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sae(tmp_path / "missing")
    sae = trained_like_sae(8, 20, 2, seed=5)
    save_sae(sae, tmp_path / "sae", hook_name="h")
    cfg_path = tmp_path / "sae" / SAE_CFG_FILENAME
    cfg = json.loads(cfg_path.read_text())
    for key, value, match in (
        ("apply_b_dec_to_input", True, "apply_b_dec_to_input"),
        ("architecture", "jumprelu", "architecture='jumprelu'"),
        ("d_sae", 21, "has shape"),
    ):
        cfg_path.write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ValueError, match=match) as exc:
            load_sae(tmp_path / "sae")
        assert "\n" not in str(exc.value)


@pytest.mark.skipif(not HAS_SAE_LENS, reason="sae-lens is not installed (pip install -c <torch pin> sae-lens==6.54.12)")
def test_sae_lens_loads_our_export_and_encodes_bit_identically(tmp_path: Path) -> None:
    from sae_lens import SAE

    sae = trained_like_sae(24, 200, 7, seed=6)
    save_sae(sae, tmp_path / "sae", hook_name="gpt_neox.layers.0.mlp.input", metadata={"model_name": "m"})
    theirs = SAE.load_from_disk(tmp_path / "sae")
    assert type(theirs).__name__ == "TopKSAE"
    assert (theirs.cfg.d_in, theirs.cfg.d_sae, theirs.cfg.k) == (24, 200, 7)
    assert theirs.cfg.apply_b_dec_to_input is False
    assert theirs.cfg.metadata.hook_name == "gpt_neox.layers.0.mlp.input"
    x = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense_theirs = theirs.encode(x)
        vals, idx = sae.encode(x)
        dense_ours = torch.zeros(300, 200).scatter_(1, idx, vals)
        assert torch.equal(dense_theirs, dense_ours)
        # Decoding sums the same k terms in another order: equal up to float rounding.
        torch.testing.assert_close(theirs.decode(dense_theirs), sae.decode(vals, idx), rtol=1e-5, atol=1e-6)


# -- pair.json (the manifest) -------------------------------------------------------------------------


def test_save_pair_writes_the_manifest(tmp_path: Path, hf_mlp_neox: torch.nn.Module) -> None:
    from jsae.export import PAIR_FILENAME, read_manifest

    mlp = mlp_from_module(hf_mlp_neox).float()
    pair = JSAEPair(trained_like_sae(12, 40, 4, seed=3), trained_like_sae(12, 30, 3, seed=4), mlp)
    run = {"model": "EleutherAI/pythia-70m-deduped@step3000", "layer": 0, "control": "trained", "lam": 0.5, "seed": 2,
           "activation_scales": {"in": 2.0, "out": 0.5}, "tokens_trained": 1024,
           "params": {"normalize_activations": "expected_norm", "batch_size": 32, "mlp_kind": "plain"},
           "cache": {"model_class": "GPTNeoXForCausalLM", "context_length": 16}}
    save_pair(pair, tmp_path / "run", hook_name="gpt_neox.layers.0.mlp", metadata={"model_name": "m"}, run=run)
    m = json.loads((tmp_path / "run" / PAIR_FILENAME).read_text())
    assert read_manifest(tmp_path / "run") == m
    assert m["model"] == {"spec": "EleutherAI/pythia-70m-deduped", "revision": "step3000",
                          "class": "GPTNeoXForCausalLM", "name": "pythia-70m-deduped"}
    assert (m["layer"], m["lam"], m["seed"], m["k"], m["n_latents"], m["k_out"], m["n_latents_out"]) == (
        0, 0.5, 2, 4, 40, 3, 30)
    assert m["mlp"] == {"path": "gpt_neox.layers.0.mlp", "kind": "plain", "activation": "gelu", "d_in": 12,
                        "d_hidden": 40, "d_out": 12, "dtype": "float32"}
    assert (m["activation_scales"]["input_scale"], m["activation_scales"]["output_scale"]) == (2.0, 0.5)
    assert m["saes"]["sae_out"]["hooks"]["transformer_lens"] == "blocks.0.hook_mlp_out"
    assert m["saes"]["sae_in"]["hooks"]["sparsify"] == "layers.0.post_attention_layernorm"
    assert m["training"]["tokens"] == 1024 and m["evaluation"] is None
    assert m["versions"]["written_with"]["torch"] == torch.__version__


def test_manifest_summarises_evaluation_with_nan_as_null(tmp_path: Path, hf_mlp_neox: torch.nn.Module) -> None:
    from jsae.export import write_manifest

    mlp = mlp_from_module(hf_mlp_neox).float()
    pair = JSAEPair(trained_like_sae(12, 40, 4, seed=3), trained_like_sae(12, 30, 3, seed=4), mlp)
    run_dir = tmp_path / "results" / "runs" / "m" / "L0" / "trained" / "lam1" / "seed0"
    save_pair(pair, run_dir, hook_name="gpt_neox.layers.0.mlp", metadata={"model_name": "m"})
    run = {"model": "m", "layer": 0, "control": "trained", "lam": 1.0, "seed": 0, "hook_name": "gpt_neox.layers.0.mlp",
           "params": {"mlp_kind": "plain"}}
    (run_dir / "run.json").write_text(json.dumps(run))
    eval_json = tmp_path / "results" / "eval" / "m" / "L0" / "trained" / "lam1" / "seed0" / "evaluation.json"
    eval_json.parent.mkdir(parents=True)
    metrics = {"in/explained_variance": 0.9, "in/ce_loss_score": float("nan"), "jac/frac_above_0.01": 0.2,
               "jac/hist_overflow_frac": 0.0}
    eval_json.write_text(json.dumps({"metrics": metrics, "pair": {"model": "m", "layer": 0, "lam": 1.0, "seed": 0},
                                     "settings": {"n_tokens": 100}}))
    m = write_manifest(run_dir)  # finds the evaluation at the workflow's layout
    assert m["evaluation"]["metrics"] == {"in/explained_variance": 0.9, "in/ce_loss_score": None,
                                          "jac/frac_above_0.01": 0.2}
    assert m["evaluation"]["n_tokens"] == 100
    assert "NaN" not in (run_dir / "pair.json").read_text()
    eval_json.write_text(json.dumps({"metrics": metrics, "pair": {"model": "m", "layer": 0, "lam": 3.0}}))
    with pytest.raises(ValueError, match="evaluates lam=3.0 but the run has lam=1.0") as exc:
        write_manifest(run_dir)
    assert "\n" not in str(exc.value)


def test_bad_manifests_are_one_line_errors(tmp_path: Path, hf_mlp_neox: torch.nn.Module) -> None:
    from jsae.export import PAIR_FILENAME, read_manifest

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "missing")
    mlp = mlp_from_module(hf_mlp_neox).float()
    pair = JSAEPair(trained_like_sae(12, 40, 4, seed=3), trained_like_sae(12, 30, 3, seed=4), mlp)
    save_pair(pair, tmp_path / "run", hook_name="gpt_neox.layers.0.mlp", metadata={"model_name": "m"})
    path = tmp_path / "run" / PAIR_FILENAME
    m = json.loads(path.read_text())
    for doc, match in (({**m, "format": "other"}, "not a jsae pair manifest"),
                       ({**m, "format_version": 2}, "format_version=2"),
                       ({**m, "layer": None}, "has layer=None")):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=match) as exc:
            load_pair(tmp_path / "run")
        assert "\n" not in str(exc.value)
    pair.set_activation_scales(2.0, 1.0)  # not folded: the SAEs would be saved in scaled units
    with pytest.raises(ValueError, match=r"activation scales \(2, 1\) .* expected them folded in first"):
        save_pair(pair, tmp_path / "scaled", hook_name="gpt_neox.layers.0.mlp", metadata={})
    assert not (tmp_path / "scaled").exists()
    # given the MLP itself, no manifest is needed (run directories from before pair.json existed)
    path.unlink()
    assert torch.equal(load_pair(tmp_path / "run", mlp).sae_in.W_enc, pair.sae_in.W_enc)
