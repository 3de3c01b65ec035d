"""Save and load trained pairs in SAELens's on-disk format (``sae-lens`` 6.x, ``SAE.load_from_disk``), with a
manifest (``pair.json``) from which :func:`load_pair` rebuilds a working pair on its model.

A run directory holds ``sae_in/`` and ``sae_out/``, each with ``cfg.json`` and
``sae_weights.safetensors``, plus ``run.json`` (written by :mod:`jsae.train.run`) and ``pair.json``.

SAELens's layout differs from ours in one place: it stores ``W_enc`` as ``[d_in, d_sae]`` (its
encoder is ``x @ W_enc``), the transpose of our ``[n_latents, d_in]``. ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]`` and ``b_dec [d_in]`` are the same. Its config must say
``"apply_b_dec_to_input": false`` (our encoder does not subtract ``b_dec``; SAELens defaults to
true) and give ``k`` (SAELens silently defaults a missing ``k`` to 100).

``pair.json`` names the pair for other tools: the model (spec, revision, class), the layer, the hook
points in four namings (:func:`hook_names`), the evaluation point, the activation scales, lambda, k and
widths, the seed, the MLP kind, the software versions and, once evaluated, a summary of
``evaluation.json``. :func:`save_pair` writes it with what it is given; :func:`write_manifest` (re)writes
it from a finished run directory (run.json, both ``cfg.json`` and the pair's ``evaluation.json``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jsae.checks import same_model
from jsae.devices import DTYPES
from jsae.io import atomic_dir, read_json, write_json
from jsae.nn.mlp import MLP, activation_from, mlp_from_module
from jsae.nn.pair import EVALUATION_POINT, JSAEPair
from jsae.nn.sae import TopKSAE

log = logging.getLogger("jsae.export")

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"
RUN_FILENAME = "run.json"
PAIR_FILENAME = "pair.json"
EVALUATION_FILENAME = "evaluation.json"
#: The SAELens release whose format we write (and test against when it is installed).
SAE_LENS_FORMAT_VERSION = "6.54.12"
#: Exactly the tensors SAELens's TopK SAE has, with their shapes in SAELens's convention.
SAE_LENS_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
#: role -> (suffix of its SAELens hook_name, hook_point recorded in metadata)
SAE_ROLES = {"sae_in": ("input", "mlp_input"), "sae_out": ("output", "mlp_output")}
#: ``pair.json``'s format name and version (a reader refuses a newer version than it knows).
MANIFEST_FORMAT = "jsae-pair"
MANIFEST_VERSION = 1
#: What the evaluation point means (``EVALUATION_POINT`` is the key recorded everywhere).
EVALUATION_POINT_TEXT = ("the MLP runs on the true input x: y = MLP(x), the output SAE encodes y (not MLP(x_hat)), "
                         "and the Jacobian's activation derivatives are taken at x")
#: Where a run without a recorded model dtype ran its MLP: training and evaluation load the LM in float32.
DEFAULT_MLP_DTYPE = "float32"

_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# --------------------------------------------------------------------------------------------------
# One SAE in SAELens's format
# --------------------------------------------------------------------------------------------------


def to_sae_lens_state_dict(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """Our parameters in SAELens's layout (``W_enc`` transposed to ``[d_in, d_sae]``), on the CPU."""
    return {
        "W_enc": sae.W_enc.detach().t().contiguous().cpu(),
        "b_enc": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }


def sae_lens_config(sae: TopKSAE, *, hook_name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``cfg.json`` SAELens needs to rebuild ``sae`` as its ``TopKSAE`` with identical encodings."""
    dtype = sae.W_enc.dtype
    if dtype not in _DTYPE_NAMES:
        raise TypeError(f"SAE dtype {dtype} cannot be exported; expected one of {', '.join(_DTYPE_NAMES.values())}")
    meta = {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "sae_lens_training_version": None, "hook_name": hook_name}
    meta.update(metadata or {})
    meta["hook_name"] = hook_name
    return {
        "architecture": "topk",
        "d_in": sae.d_in,
        "d_sae": sae.n_latents,
        "k": sae.k,
        "dtype": _DTYPE_NAMES[dtype],
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": meta,
    }


def save_sae(sae: TopKSAE, path: str | os.PathLike[str], *, hook_name: str,
             metadata: dict[str, Any] | None = None) -> None:
    """Write one SAE as a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), atomically."""
    cfg = sae_lens_config(sae, hook_name=hook_name, metadata=metadata)
    with atomic_dir(path) as tmp:
        save_file(to_sae_lens_state_dict(sae), str(tmp / SAE_WEIGHTS_FILENAME), metadata={"format": "pt"})
        write_json(tmp / SAE_CFG_FILENAME, cfg)


def read_sae_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A SAELens ``cfg.json``, checked for what our loader relies on (one-line errors otherwise)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist; expected a SAELens SAE directory with {SAE_CFG_FILENAME}")
    cfg = read_json(p / SAE_CFG_FILENAME)
    if cfg.get("architecture") != "topk":
        raise ValueError(f"{p / SAE_CFG_FILENAME} has architecture={cfg.get('architecture')!r}; expected 'topk'")
    if cfg.get("apply_b_dec_to_input", True):
        raise ValueError(f"{p / SAE_CFG_FILENAME} has apply_b_dec_to_input true (or missing); expected false")
    for key in ("d_in", "d_sae", "k", "dtype"):
        if key not in cfg:
            raise ValueError(f"{p / SAE_CFG_FILENAME} lacks {key!r}; expected d_in, d_sae, k and dtype")
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"{p / SAE_CFG_FILENAME} has dtype={cfg['dtype']!r}; expected one of {', '.join(DTYPES)}")
    return cfg


def load_sae(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> TopKSAE:
    """Load a SAE written by :func:`save_sae` (or any SAELens TopK SAE without input ``b_dec``)."""
    p = Path(path)
    cfg = read_sae_config(p)
    weights = p / SAE_WEIGHTS_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist; expected the SAE's safetensors file")
    state = load_file(str(weights), device="cpu")
    if sorted(state) != sorted(SAE_LENS_TENSORS):
        raise ValueError(f"{weights} holds tensors {sorted(state)}; expected exactly {sorted(SAE_LENS_TENSORS)}")
    d_in, n, k = int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"])
    expected = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{weights}: {name} has shape {tuple(state[name].shape)}; expected {shape} from cfg.json")
    dtype = DTYPES[cfg["dtype"]]
    sae = TopKSAE(d_in, n, k, seed=0, dtype=dtype)
    ours = {"W_enc": state["W_enc"].t().contiguous(), "b_enc": state["b_enc"], "W_dec": state["W_dec"],
            "b_dec": state["b_dec"]}
    sae.load_state_dict({name: t.to(dtype) for name, t in ours.items()})
    return sae.to(device)


# --------------------------------------------------------------------------------------------------
# Hook points in other tools' naming
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """Where a decoder family keeps what the other tools hook (checked against TransformerLens and the
    modules' own forwards in tests/test_release.py)."""

    base_prefix: str  # the causal LM's attribute holding the base model: sparsify hooks the base model's modules
    input_norm: str  # the block's submodule whose output is the MLP input
    post_mlp_norm: bool  # a norm between the MLP and the residual add: TransformerLens's hook_mlp_out is after it


_LLAMA_LIKE = Architecture("model", "post_attention_layernorm", False)
_GEMMA2_LIKE = Architecture("model", "pre_feedforward_layernorm", True)
#: Model classes (``run.json`` ``cache.model_class``) whose hook points have TransformerLens and sparsify names.
ARCHITECTURES: dict[str, Architecture] = {
    "GPTNeoXForCausalLM": Architecture("gpt_neox", "post_attention_layernorm", False),
    "GPT2LMHeadModel": Architecture("transformer", "ln_2", False),
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Phi3ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _GEMMA2_LIKE,
    "Gemma3ForCausalLM": _GEMMA2_LIKE,
}
#: What each naming in ``pair.json`` ``hooks`` means.
HOOK_NAMINGS = {
    "hf": "jsae's own: the Hugging Face MLP module's path plus .input / .output (its forward's argument / result)",
    "hf_module": "the Hugging Face module (in the causal LM) whose forward OUTPUT is the activation: SAELens's "
                 "hf_hook_name and its AutoModelForCausalLM (HookedProxyLM) hook names",
    "transformer_lens": "TransformerLens 3 TransformerBridge (SAELens's SAETransformerBridge) hook names; "
                        "blocks.L.hook_mlp_out also holds in HookedTransformer.from_pretrained_no_processing. "
                        "Not blocks.L.ln2.hook_normalized: TransformerLens hooks that before the norm's weight and "
                        "bias, so it is not the MLP input",
    "sparsify": "EleutherAI sparsify hookpoints: the base model's (AutoModel's) module whose output is the "
                "activation, as sparsify's trainer hooks module outputs",
}
#: Why a naming is null: the model is not a language model of a family in ARCHITECTURES.
NO_EQUIVALENT = ("no equivalent: the model is not a Hugging Face causal LM of a family jsae maps (ARCHITECTURES "
                 "in jsae.export); SAELens's hook_name keeps jsae's own (hf) name")


def hook_names(mlp_path: str, layer: int, model_class: str | None) -> dict[str, dict[str, str | None]]:
    """``{role: {naming: hook}}`` of both SAEs for the MLP at module path ``mlp_path`` (e.g.
    ``gpt_neox.layers.2.mlp``) of a ``model_class`` model; namings in :data:`HOOK_NAMINGS` (None: no equivalent)."""
    names: dict[str, dict[str, str | None]] = {
        role: {"hf": f"{mlp_path}.{suffix}", "hf_module": None, "transformer_lens": None, "sparsify": None}
        for role, (suffix, _point) in SAE_ROLES.items()
    }
    arch = ARCHITECTURES.get(str(model_class))
    prefix = f"{arch.base_prefix}." if arch is not None else ""
    if arch is None or not mlp_path.startswith(prefix) or not mlp_path.endswith(".mlp"):
        return names
    block = mlp_path.removesuffix(".mlp")  # e.g. gpt_neox.layers.2
    norm = f"{block}.{arch.input_norm}"
    names["sae_in"].update(hf_module=norm, transformer_lens=f"blocks.{layer}.mlp.hook_in",
                           sparsify=norm.removeprefix(prefix))
    out_tl = f"blocks.{layer}.mlp.hook_out" if arch.post_mlp_norm else f"blocks.{layer}.hook_mlp_out"
    names["sae_out"].update(hf_module=mlp_path, transformer_lens=out_tl, sparsify=mlp_path.removeprefix(prefix))
    return names


# --------------------------------------------------------------------------------------------------
# The manifest (pair.json)
# --------------------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON for other tools: NaN / inf (a refused or undefined metric) become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def software_versions() -> dict[str, str | None]:
    """Versions of what wrote or reads the files (None: not installed)."""
    from jsae import __version__  # here: jsae/__init__ imports this module

    out: dict[str, str | None] = {"jsae": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for key, dist in (("transformers", "transformers"), ("safetensors", "safetensors"), ("sae_lens", "sae-lens"),
                      ("sparsify", "eai-sparsify"), ("transformer_lens", "transformer-lens")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def evaluation_summary(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of an ``evaluation.json`` (keys as in docs/metrics.md) and what they were measured on."""
    from jsae.eval import metrics as m

    keys = [m.N_TOKENS_KEY, m.CE_TOKENS_KEY, m.JAC_FRAC_KEY, m.EFFECTIVE_SHARE_KEY, m.JAC_L1_KEY, m.JAC_MEAN_ABS_KEY]
    for side in m.SIDES:
        keys += [m.side_key(side, name) for name in ("explained_variance", "cosine", "mse", "ce_loss_score",
                                                     "ce_loss_delta", "kl_score", "dead_fraction", "rare_fraction")]
    metrics = evaluation.get("metrics") or {}
    settings = evaluation.get("settings") or {}
    return _finite({
        "metrics": {key: metrics[key] for key in keys if key in metrics},
        "n_tokens": settings.get("n_tokens"),
        "ce_contexts": settings.get("ce_contexts"),
        "evaluation_point": settings.get("evaluation_point"),
        "ce_score_refused": settings.get("ce_score_refused") or {},
    })


def _split_spec(spec: str | None) -> tuple[str | None, str | None]:
    if spec is None:
        return None, None
    from jsae.data.models import split_revision

    return split_revision(str(spec))


def _model_section(run: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    raw = run.get("model", metadata.get("model_name"))
    spec, revision = _split_spec(raw)
    cache = run.get("cache") or {}
    name = run.get("model_name") or (Path(str(spec).rstrip("/")).name if spec else None)
    return {"spec": spec, "revision": revision, "class": cache.get("model_class"), "name": name}


def pair_manifest(
    saes: Mapping[str, Mapping[str, Any]],
    *,
    mlp_path: str,
    run: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    mlp: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``pair.json``'s content from the facts at hand (None where a fact is not known).

    ``saes``: ``{role: {d_in, n_latents, k, dtype}}``; ``mlp_path``: the MLP's module path; ``run``: run.json
    (its facts win); ``metadata``: the SAELens metadata training writes (model spec, layer, control, lam);
    ``mlp``: ``{kind, activation, d_in, d_hidden, d_out, dtype}``; ``evaluation``: the pair's evaluation.json.
    """
    run, metadata = dict(run or {}), dict(metadata or {})
    params = run.get("params") or {}
    pair = run.get("pair") or {}
    model = _model_section(run, metadata)
    layer = run.get("layer", metadata.get("hook_layer"))
    hooks = hook_names(mlp_path, int(layer), model["class"]) if layer is not None else None
    scales = run.get("activation_scales") or {}
    cache = run.get("cache") or {}
    mlp_info = {"path": mlp_path, "kind": params.get("mlp_kind"), "activation": None, "d_in": params.get("d_in"),
                "d_hidden": params.get("d_mlp"), "d_out": None, "dtype": None}
    mlp_info.update({key: value for key, value in (mlp or {}).items() if value is not None})

    def sae_entry(role: str) -> dict[str, Any]:
        sae = saes[role]
        point = SAE_ROLES[role][1]
        return {"path": role, "hook_point": point, "d_in": sae["d_in"], "n_latents": sae["n_latents"], "k": sae["k"],
                "dtype": sae["dtype"], "hooks": hooks[role] if hooks else None}

    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model": model,
        "layer": layer,
        "control": run.get("control", metadata.get("control")),
        "lam": run.get("lam", metadata.get("lam")),
        "seed": run.get("seed", pair.get("seed")),
        "k": saes["sae_in"]["k"],
        "k_out": saes["sae_out"]["k"],
        "n_latents": saes["sae_in"]["n_latents"],
        "n_latents_out": saes["sae_out"]["n_latents"],
        "saes": {role: sae_entry(role) for role in SAE_ROLES},
        "hook_namings": {**HOOK_NAMINGS, "null": NO_EQUIVALENT},
        "mlp": mlp_info,
        "evaluation_point": {"name": run.get("evaluation_point", metadata.get("evaluation_point", EVALUATION_POINT)),
                             "meaning": EVALUATION_POINT_TEXT},
        "activation_scales": {
            "normalization": params.get("normalize_activations"),
            "input_scale": scales.get("in"),
            "output_scale": scales.get("out"),
            # training folds the scales into the exported weights (JSAEPair.fold_activation_scales_)
            "folded_into_weights": True,
            "meaning": "the SAEs were trained on input_scale * x and output_scale * MLP(x); the saved SAEs act on "
                       "raw activations (the scales are folded in): do not apply them again",
        },
        "training": {
            "tokens": run.get("tokens_trained"),
            "n_steps": run.get("n_steps"),
            "batch_size": params.get("batch_size"),
            "lr": params.get("lr"),
            "expansion": params.get("expansion"),
            "auxk_coef": params.get("auxk_coef"),
            "dtype": params.get("dtype"),
            "context_length": cache.get("context_length", metadata.get("context_size")),
            "corpus_sha256": cache.get("corpus_sha256"),
            "cache_tokens": cache.get("n_tokens"),
            "first_position": cache.get("first_position"),
            "finished_utc": run.get("finished_utc"),
        },
        "versions": {
            "trained_with": {"jsae": run.get("jsae_version", metadata.get("jsae_version")),
                             "torch": run.get("torch_version")},
            "written_with": software_versions(),
        },
        "evaluation": evaluation_summary(evaluation) if evaluation is not None else None,
    }
    return _finite(manifest)


def _sae_facts(sae: TopKSAE) -> dict[str, Any]:
    return {"d_in": sae.d_in, "n_latents": sae.n_latents, "k": sae.k, "dtype": _DTYPE_NAMES.get(sae.W_enc.dtype)}


def _mlp_facts(mlp: MLP) -> dict[str, Any]:
    return {"kind": mlp.kind, "activation": mlp.activation.name, "d_in": mlp.d_in, "d_hidden": mlp.d_hidden,
            "d_out": mlp.d_out, "dtype": _DTYPE_NAMES.get(mlp.W_out.dtype)}


def save_pair(pair: JSAEPair, run_dir: str | os.PathLike[str], *, hook_name: str, metadata: dict[str, Any],
              run: Mapping[str, Any] | None = None) -> None:
    """Write ``run_dir/sae_in`` and ``run_dir/sae_out`` in SAELens's format, and ``run_dir/pair.json``.

    ``hook_name`` names the MLP (e.g. ``gpt_neox.layers.3.mlp``); the SAEs' SAELens ``hook_name``
    is ``{hook_name}.input`` and ``{hook_name}.output``. ``metadata`` goes into both configs, with
    ``sae_role`` and ``hook_point`` added. The manifest takes ``run`` (run.json's content), else
    ``run_dir/run.json`` if it exists; training writes run.json after this, so a run's complete manifest
    comes from :func:`write_manifest`. The pair's activation scales must be folded into its weights first
    (:meth:`JSAEPair.fold_activation_scales_`): saved SAEs act on raw activations.
    """
    if (pair.input_scale, pair.output_scale) != (1.0, 1.0):
        raise ValueError(f"the pair has activation scales ({pair.input_scale:g}, {pair.output_scale:g}) that its SAE "
                         "weights do not include; expected them folded in first (pair.fold_activation_scales_())")
    run_dir = Path(run_dir)
    for role, sae in (("sae_in", pair.sae_in), ("sae_out", pair.sae_out)):
        suffix, point = SAE_ROLES[role]
        meta = {**metadata, "sae_role": role, "hook_point": point}
        save_sae(sae, run_dir / role, hook_name=f"{hook_name}.{suffix}", metadata=meta)
    if run is None and (run_dir / RUN_FILENAME).is_file():
        run = read_json(run_dir / RUN_FILENAME)
    saes = {"sae_in": _sae_facts(pair.sae_in), "sae_out": _sae_facts(pair.sae_out)}
    write_json(run_dir / PAIR_FILENAME, pair_manifest(saes, mlp_path=hook_name, run=run, metadata=metadata,
                                                      mlp=_mlp_facts(pair.mlp)))


def evaluation_path(run_dir: str | os.PathLike[str]) -> Path | None:
    """``<root>/eval/<pair>/evaluation.json`` for the run directory ``<root>/runs/<pair>`` (the workflow's layout),
    None for a run directory outside that layout."""
    parts = Path(run_dir).parts
    if "runs" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("runs")
    return Path(*parts[:i], "eval", *parts[i + 1:], EVALUATION_FILENAME)


def check_evaluation_matches(evaluation: Mapping[str, Any], run: Mapping[str, Any], where: str | os.PathLike[str]
                             ) -> None:
    """One-line ``ValueError`` when an evaluation.json's ``pair`` is not the run's pair."""
    ident = evaluation.get("pair") or {}
    for key in ("model", "layer", "control", "lam", "seed"):
        a, b = ident.get(key), run.get(key)
        if not (same_model(a, b) if key == "model" else _same_value(a, b)):
            raise ValueError(f"{where} evaluates {key}={a!r} but the run has {key}={b!r}; expected the evaluation "
                             "of this pair")


def _same_value(a: Any, b: Any) -> bool:
    """Equal, as numbers where both are (1 and 1.0), or unrecorded (None) on either side."""
    if a is None or b is None or str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _activation_of(run: Mapping[str, Any], workdir: Path | None = None) -> str | None:
    """The MLP's activation (jsae's name) from what a run records or the model's config (None if unknown); a
    relative model spec is looked up in the working directory, then in ``workdir`` (where the study ran)."""
    cache = run.get("cache") or {}
    planted = cache.get("planted_config")
    configs: list[Mapping[str, Any]] = []
    if isinstance(planted, str):
        import json

        try:
            configs.append(json.loads(planted))
        except ValueError:
            pass
    spec, revision = _split_spec(run.get("model"))
    if spec is not None and not configs:
        configs.append(_model_config(spec, revision, workdir))
    for cfg in configs:
        for key in ("activation", "hidden_activation", "hidden_act", "activation_function"):
            if isinstance(cfg.get(key), str):
                try:
                    return activation_from(cfg[key]).name
                except TypeError:
                    return None
    return None


def _model_config(spec: str, revision: str | None, workdir: Path | None = None) -> dict[str, Any]:
    """The model's config.json from a local folder or the local HF cache, never the network ({} if absent)."""
    from jsae.data.models import local_model_dir

    folders = [local_model_dir(spec)]
    if workdir is not None and not Path(spec).is_absolute():
        folders.append(workdir / spec)
    for folder in folders:
        if folder is not None and (folder / "config.json").is_file():
            return read_json(folder / "config.json")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json", revision=revision)
    except Exception:  # not a hub id (e.g. smollm2-135m's GGUF): the activation stays unknown
        return {}
    return read_json(cached) if isinstance(cached, str) else {}


def manifest_from_run(run_dir: str | os.PathLike[str], *, evaluation: str | os.PathLike[str] | None = None,
                      workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``pair.json``'s content for a finished run directory (run.json, both cfg.json) and, if given or found at
    :func:`evaluation_path`, its evaluation.json. ``workdir``: where a relative model spec is, if not in the
    working directory (the study's root)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; expected a trained pair (run.json, sae_in/, "
                                "sae_out/)")
    run = read_run(run_dir)
    saes = {}
    for role in SAE_ROLES:
        cfg = read_sae_config(run_dir / role)
        saes[role] = {"d_in": int(cfg["d_in"]), "n_latents": int(cfg["d_sae"]), "k": int(cfg["k"]),
                      "dtype": cfg["dtype"]}
    params = run.get("params") or {}
    activation = _activation_of(run, Path(workdir) if workdir is not None else None)
    if activation is None:
        log.warning("%s: the MLP's activation is unknown (no readable config of model %r); pair.json records null",
                    run_dir, run.get("model"))
    mlp = {"kind": params.get("mlp_kind"), "activation": activation, "d_in": params.get("d_in"),
           "d_hidden": params.get("d_mlp"), "d_out": saes["sae_out"]["d_in"], "dtype": DEFAULT_MLP_DTYPE}
    hook = run.get("hook_name") or str(run.get("hook") or "").removesuffix(".input")
    if not hook:
        raise ValueError(f"{run_dir / RUN_FILENAME} names no hook_name; expected a run.json written by jsae train")
    eval_path = Path(evaluation) if evaluation is not None else evaluation_path(run_dir)
    doc = None
    if eval_path is not None and eval_path.is_file():
        doc = read_json(eval_path)
        check_evaluation_matches(doc, run, eval_path)
    elif evaluation is not None:
        raise FileNotFoundError(f"{eval_path} does not exist; expected the pair's evaluation.json (python -m jsae "
                                "evaluate)")
    return pair_manifest(saes, mlp_path=hook, run=run, mlp=mlp, evaluation=doc)


def write_manifest(run_dir: str | os.PathLike[str], *, evaluation: str | os.PathLike[str] | None = None,
                   out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """(Re)write ``pair.json`` of a finished run (to ``out``, default ``run_dir/pair.json``); returns it."""
    manifest = manifest_from_run(run_dir, evaluation=evaluation)
    write_json(Path(out) if out is not None else Path(run_dir) / PAIR_FILENAME, manifest)
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a pair directory: built from its run.json where there is one (a run directory: always
    complete, whereas the pair.json training writes predates run.json), else its ``pair.json`` (a release)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist; expected a pair directory (pair.json or run.json, sae_in/, "
                                "sae_out/)")
    if (p / RUN_FILENAME).is_file() or not (p / PAIR_FILENAME).is_file():
        return manifest_from_run(p)
    manifest = read_json(p / PAIR_FILENAME)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{p / PAIR_FILENAME} is not a jsae pair manifest (format={manifest.get('format')!r} "
                         f"if a JSON object); expected format {MANIFEST_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise ValueError(f"{p / PAIR_FILENAME} has format_version={version!r}; expected an integer <= "
                         f"{MANIFEST_VERSION} (a newer jsae wrote it: upgrade jsae)")
    return manifest


# --------------------------------------------------------------------------------------------------
# Loading a pair
# --------------------------------------------------------------------------------------------------


def _is_language_model(module: object) -> bool:
    """A model with decoder blocks (a causal LM), as opposed to an MLP module or adapter."""
    from jsae.data.hooks import decoder_layers

    if not isinstance(module, torch.nn.Module) or isinstance(module, MLP):
        return False
    try:
        decoder_layers(module)
    except TypeError:
        return False
    return True


def _mlp_of(manifest: Mapping[str, Any], model: torch.nn.Module | None, where: Path,
            device: torch.device | str) -> MLP:
    """The MLP a manifest names, on ``model`` or on the model its spec loads; checked against the manifest."""
    from jsae.data.hooks import mlp_module

    spec = (manifest.get("model") or {}).get("spec")
    layer = manifest.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"{where} has layer={layer!r}; expected the MLP's layer index")
    expected = manifest.get("mlp") or {}
    if model is None:
        if spec is None:
            raise ValueError(f"{where} names no model spec; expected model.spec, or pass the model to load_pair")
        from jsae.data.models import load_model
        from jsae.data.planted import is_planted_dir, planted_mlp

        if is_planted_dir(spec):
            mlp = planted_mlp(spec, layer)
        else:
            dtype = DTYPES.get(str(expected.get("dtype") or DEFAULT_MLP_DTYPE), torch.float32)
            model, _tokenizer = load_model(spec, revision=(manifest.get("model") or {}).get("revision"),
                                           device=device, dtype=dtype)
            mlp = mlp_from_module(mlp_module(model, layer))
    else:
        cls = (manifest.get("model") or {}).get("class")
        if cls is not None and type(model).__name__ != cls:
            raise ValueError(f"the model is a {type(model).__name__} but {where} was trained on a {cls}; expected "
                             "the pair's own model")
        mlp = mlp_from_module(mlp_module(model, layer))
    for key, have in (("kind", mlp.kind), ("activation", mlp.activation.name)):
        want = expected.get(key)
        if want is not None and want != have:
            raise ValueError(f"the MLP of layer {layer} has {key} {have!r} but {where} records {want!r}; expected "
                             "the pair's own model")
    return mlp


def load_pair(path: str | os.PathLike[str], model: torch.nn.Module | None = None, *,
              device: torch.device | str = "cpu") -> JSAEPair:
    """Rebuild the :class:`JSAEPair` saved in ``path`` (a run directory or a release pair folder), identical tensors.

    ``model`` is the language model the pair was trained on (its MLP at the manifest's layer is used), or the
    MLP itself (a :class:`~jsae.nn.mlp.MLP` adapter or a Hugging Face MLP module), or None: the model the
    manifest names (:func:`read_manifest`: ``model.spec`` at ``model.revision``) is loaded. Given or loaded, a
    model is checked against the manifest's model class and MLP kind and activation.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist; expected a run directory with sae_in/ and sae_out/")
    if model is None or _is_language_model(model):
        mlp = _mlp_of(read_manifest(p), model, p / PAIR_FILENAME, device)
    elif isinstance(model, torch.nn.Module):
        mlp = model
    else:
        raise TypeError(f"model is a {type(model).__name__}; expected a causal LM, an MLP module or None")
    return JSAEPair(load_sae(p / "sae_in", device=device), load_sae(p / "sae_out", device=device), mlp)


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a finished run (hyper-parameters, cache attributes, timings, final metrics)."""
    path = Path(run_dir) / RUN_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a finished training run (run.json is written last)")
    return read_json(path)
