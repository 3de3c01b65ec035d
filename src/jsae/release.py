"""A release of trained pairs that other tools load: ``python -m jsae export --runs results --out results/release``.

For every selected pair (``<model>/L<layer>/<control>/lam<lam>/seed<seed>``, as under ``results/runs``) the
release folder holds, at the same relative path:

* ``sae_in/``, ``sae_out/``: SAELens folders (``SAE.load_from_disk``) whose ``cfg.json`` names the hook in
  TransformerLens's naming where the architecture has one (jsae's Hugging Face names stay in the metadata);
  the weights file is the run's, byte for byte;
* ``sparsify/<hookpoint>/``: the same SAEs as EleutherAI sparsify ``SparseCoder`` folders (``cfg.json`` +
  ``sae.safetensors``) named by sparsify's hookpoint, where the architecture has one;
* ``pair.json`` (:func:`jsae.export.manifest_from_run`), ``README.md`` (a model card with YAML front matter),
  ``pretrained_saes.yaml`` (SAELens's directory format) and ``neuronpedia.json`` (what Neuronpedia's upload
  tool asks for).

At the top: ``manifest.json`` (every pair), ``README.md`` (the repository's card) and ``pretrained_saes.yaml``
(one SAELens release per model). The folder is written to a temporary directory and renamed, so a release is
complete or absent. Uploading it is one command (:data:`UPLOAD_COMMAND`), never run by jsae itself.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from jsae.cli import HelpFormatter, run_cli
from jsae.export import (
    EVALUATION_FILENAME,
    PAIR_FILENAME,
    RUN_FILENAME,
    SAE_CFG_FILENAME,
    SAE_ROLES,
    SAE_WEIGHTS_FILENAME,
    hook_names,
    load_sae,
    manifest_from_run,
    read_sae_config,
    software_versions,
)
from jsae.io import atomic_dir, atomic_path, setup_logging, write_json
from jsae.nn.sae import TopKSAE
from jsae.train.baseline import RUN_PATH as BASELINE_RUN_PATH

log = logging.getLogger("jsae.release")

RELEASE_MANIFEST = "manifest.json"
RELEASE_FORMAT = "jsae-release"
CARD_FILENAME = "README.md"
NEURONPEDIA_FILENAME = "neuronpedia.json"
SAE_LENS_DIRECTORY = "pretrained_saes.yaml"
SPARSIFY_DIR = "sparsify"
SPARSIFY_WEIGHTS = "sae.safetensors"  # sparsify's SparseCoder.load_from_disk reads <dir>/cfg.json and this
PAPER_URL = "https://arxiv.org/abs/2502.18147"
PAPER = ("Lucy Farnik, Tim Lawson, Conor Houghton, Laurence Aitchison. Jacobian Sparse Autoencoders: Sparsify "
         "Computations, Not Just Activations. ICML 2025. arXiv:2502.18147")
#: The repository id written where none is given (--repo-id): to be replaced before uploading.
REPO_PLACEHOLDER = "HF_USER/REPO"
#: The one upload command (huggingface_hub's CLI; before huggingface_hub 1.0 it was `huggingface-cli upload`).
UPLOAD_COMMAND = "hf upload {repo_id} {out} . --repo-type model"
TAGS = ["sparse-autoencoder", "jacobian-sparse-autoencoder", "jsae", "saelens", "sparsify", "interpretability"]
#: A pair's path under runs/ (the workflow's layout, workflow/rules/paths.smk PAIR).
PAIR_PATH = re.compile(r"(?P<model>[^/]+)/L(?P<layer>\d+)/(?P<control>trained|reinit)/lam(?P<lam>[^/]+)"
                       r"/seed(?P<seed>\d+)")
#: A peer-method baseline's path under runs/ (the workflow's layout, workflow/rules/study.smk BASELINE).
BASELINE_PATH = re.compile(BASELINE_RUN_PATH)
BASELINE_FILENAME = "baseline.json"
#: Neuronpedia's hook-point categories (its upload tool's choices) for our two SAEs: the MLP input has no
#: exact category there (TransformerLens's hook_mlp_in is the residual before ln2), the nearest is hook_mlp_in.
NEURONPEDIA_HOOK_POINTS = {"sae_in": "hook_mlp_in", "sae_out": "hook_mlp_out"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


@dataclass(frozen=True)
class ReleasePair:
    path: str  # <model>/L<layer>/<control>/lam<lam>/seed<seed>
    run_dir: Path
    evaluation: Path | None  # its evaluation.json, if evaluated


# --------------------------------------------------------------------------------------------------
# Which pairs
# --------------------------------------------------------------------------------------------------


def find_pairs(results: str | os.PathLike[str]) -> list[ReleasePair]:
    """Every finished pair under ``results/runs`` (a run.json at a pair path), with its evaluation if any."""
    root = Path(results)
    runs = root / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{runs} does not exist; expected the results directory of a study (--runs results, "
                                "holding runs/ and eval/)")
    out = []
    for run_json in sorted(runs.rglob(RUN_FILENAME)):
        rel = run_json.parent.relative_to(runs).as_posix()
        if PAIR_PATH.fullmatch(rel) is None:
            continue  # not a pair directory of the workflow's layout (e.g. a hidden work directory)
        evaluation = root / "eval" / rel / EVALUATION_FILENAME
        out.append(ReleasePair(rel, run_json.parent, evaluation if evaluation.is_file() else None))
    return out


def find_baselines(results: str | os.PathLike[str]) -> list[ReleasePair]:
    """Every finished peer-method baseline under ``results/runs`` (a transcoder run of the workflow's layout), with
    its ``baseline_evaluation.json`` if any."""
    from jsae.eval.baseline import EVALUATION_FILENAME as BASELINE_EVALUATION
    from jsae.train.baseline import CODER_DIRNAME

    root = Path(results)
    out = []
    for run_json in sorted((root / "runs").rglob(RUN_FILENAME)):
        rel = run_json.parent.relative_to(root / "runs").as_posix()
        coder = run_json.parent / CODER_DIRNAME
        if PAIR_PATH.fullmatch(rel) is None and BASELINE_PATH.fullmatch(rel) and coder.is_dir():
            evaluation = root / "eval" / rel / BASELINE_EVALUATION
            out.append(ReleasePair(rel, run_json.parent, evaluation if evaluation.is_file() else None))
    return out


def select_pairs(pairs: Sequence[ReleasePair], patterns: Sequence[str] | None,
                 baselines: Sequence[ReleasePair] = ()) -> list[ReleasePair]:
    """The pairs whose path matches any of the glob ``patterns`` (all without patterns); each pattern must match a
    pair or one of ``baselines`` (selected by the same patterns: :func:`select_baselines`)."""
    if not pairs:
        raise ValueError("no finished pairs (run.json under runs/<model>/L<layer>/<control>/lam<lam>/seed<seed>); "
                         "expected a results directory with trained pairs")
    if not patterns:
        return list(pairs)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(p.path, pattern) for p in [*pairs, *baselines]):
            raise ValueError(f"--select {pattern!r} matches none of the {len(pairs)} pairs (e.g. {pairs[0].path!r}); "
                             "expected a glob over <model>/L<layer>/<control>/lam<lam>/seed<seed>")
    return [p for p in pairs if any(fnmatch.fnmatchcase(p.path, pattern) for pattern in patterns)]


# --------------------------------------------------------------------------------------------------
# The formats
# --------------------------------------------------------------------------------------------------


def to_sparsify_state_dict(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """Our SAE as sparsify's ``SparseCoder`` state dict (``encoder.weight [n, d]``, ``encoder.bias``, ``W_dec``,
    ``b_dec``).

    sparsify's encoder subtracts ``b_dec`` from its input and ours does not, so its bias is
    ``b_enc + W_enc b_dec`` (computed in float64): the same pre-activations up to float rounding.
    """
    W, b_dec = sae.W_enc.detach().cpu(), sae.b_dec.detach().cpu()
    bias = sae.b_enc.detach().cpu().double() + W.double() @ b_dec.double()
    return {"encoder.weight": W.contiguous(), "encoder.bias": bias.to(W.dtype).contiguous(),
            "W_dec": sae.W_dec.detach().cpu().contiguous(), "b_dec": b_dec.contiguous()}


def sparsify_config(sae: TopKSAE) -> dict[str, Any]:
    """sparsify's ``cfg.json``: ``SparseCoderConfig`` fields plus ``d_in``."""
    unit = bool(torch.allclose(sae.W_dec.detach().double().norm(dim=1), torch.ones(sae.n_latents, dtype=torch.float64),
                               atol=1e-4))
    return {"activation": "topk", "expansion_factor": max(1, sae.n_latents // sae.d_in),
            "normalize_decoder": unit, "num_latents": sae.n_latents, "k": sae.k, "multi_topk": False,
            "skip_connection": False, "transcode": False, "d_in": sae.d_in}


def save_sparsify(sae: TopKSAE, path: str | os.PathLike[str]) -> None:
    """One SAE as a sparsify folder (``cfg.json`` + ``sae.safetensors``), atomically."""
    with atomic_dir(path) as tmp:
        save_file(to_sparsify_state_dict(sae), str(tmp / SPARSIFY_WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / SAE_CFG_FILENAME, sparsify_config(sae))


def release_sae_config(cfg: Mapping[str, Any], manifest: Mapping[str, Any], role: str) -> dict[str, Any]:
    """A run's SAELens ``cfg.json`` with TransformerLens's hook name (where there is one) and the other namings."""
    hooks = manifest["saes"][role]["hooks"] or {}
    model = manifest["model"]
    meta = dict(cfg.get("metadata") or {})
    meta.update({
        "hook_name": hooks.get("transformer_lens") or hooks.get("hf") or meta.get("hook_name"),
        "hf_hook_name": hooks.get("hf_module"),
        "jsae_hook_name": hooks.get("hf"),
        "sparsify_hookpoint": hooks.get("sparsify"),
        "model_name": model.get("spec"),
        "model_revision": model.get("revision"),
        "hook_layer": manifest.get("layer"),
        "seed": manifest.get("seed"),
    })
    return {**cfg, "metadata": meta}


def base_model(manifest: Mapping[str, Any]) -> str | None:
    """The Hugging Face hub id of the model, if it is one (a model card's ``base_model``)."""
    from jsae.data.models import _LEGACY_HUB_NAMES, SMOLLM2, local_model_dir

    spec = (manifest.get("model") or {}).get("spec")
    if spec is None:
        return None
    if spec == SMOLLM2:
        return "HuggingFaceTB/SmolLM2-135M-Instruct"  # the GGUF file jsae loads for this spec
    if local_model_dir(spec) is not None or Path(spec).expanduser().exists():
        return None
    return spec if _HUB_ID.fullmatch(spec) or spec in _LEGACY_HUB_NAMES else None


def _lam_text(lam: Any) -> str:
    return f"{float(lam):g}" if lam is not None else "?"


def _width(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _model_id(manifest: Mapping[str, Any]) -> str:
    """A short model name: the hub id's last part (lower case) or the model's own name."""
    model = manifest.get("model") or {}
    hub = base_model(manifest)
    return (hub.split("/")[-1] if hub else str(model.get("name") or "model")).lower()


def neuronpedia_entry(manifest: Mapping[str, Any], pair_path: str, *, repo_id: str, creator: str) -> dict[str, Any]:
    """The fields of Neuronpedia's SAE upload tool (its convert-saedashboard-to-neuronpedia-export script), one
    source per SAE; ids follow SAELens's ``neuronpedia`` convention ``<model>/<layer>-<source set>``."""
    layer, lam, seed, control = manifest["layer"], manifest["lam"], manifest["seed"], manifest["control"]
    model_id = _model_id(manifest)
    lam_id = _lam_text(lam).replace(".", "p")  # Neuronpedia ids: letters, digits and dashes
    sources = []
    for role, sae in manifest["saes"].items():
        side = "mlpin" if role == "sae_in" else "mlpout"
        set_id = f"jsae-{side}{'-reinit' if control == 'reinit' else ''}-lam{lam_id}-s{seed}-{_width(sae['n_latents'])}"
        hooks = sae.get("hooks") or {}
        sources.append({
            "role": role,
            "neuronpedia_id": f"{model_id}/{layer}-{set_id}",
            "neuronpedia_source_set_id": set_id,
            "neuronpedia_source_set_description": (f"MLP {'input' if role == 'sae_in' else 'output'} - JSAE "
                                                   f"λ={_lam_text(lam)} seed {seed} - {_width(sae['n_latents'])}"),
            "hook_point": NEURONPEDIA_HOOK_POINTS[role],
            "hook_name": hooks.get("transformer_lens") or hooks.get("hf"),
            "layer_num": layer,
            "hf_weights_repo_id": repo_id,
            "hf_weights_path": f"{pair_path}/{role}/{SAE_WEIGHTS_FILENAME}",
            "hf_folder_id": f"{pair_path}/{role}",
            "d_sae": sae["n_latents"],
            "k": sae["k"],
        })
    return {
        "about": ("Fields Neuronpedia's SAE upload asks for (its upload tool's options), proposed for this pair; ids "
                  "are proposals until Neuronpedia hosts the SAEs. sae_in's hook_point is the nearest category: the "
                  "SAE reads the MLP's normalised input (hook_name), not the residual stream before the norm."),
        "creator_name": creator,
        "release_id": f"jsae-{model_id}",
        "release_title": f"Jacobian sparse autoencoders (Farnik et al., ICML 2025) on {model_id}",
        "url": PAPER_URL,
        "model_name": model_id,
        # dashboard generation: the prompts' dataset is the user's choice (jsae trains on its own corpus files)
        "prompts_huggingface_dataset_path": None,
        "n_prompts_total": 24576,
        "n_tokens_in_prompt": 128,
        "zero_out_bos_token": False,
        "training_tokens": manifest["training"].get("tokens"),
        "sources": sources,
    }


def sae_lens_release(manifest: Mapping[str, Any], pair_paths: Sequence[tuple[str, Mapping[str, Any]]], *,
                     repo_id: str) -> dict[str, Any]:
    """One release of SAELens's ``pretrained_saes.yaml`` (its parser's keys: repo_id, model, conversion_func, links,
    saes with id, path, l0, variance_explained) for the pairs of one model; SAE ids are their paths in the repo."""
    hub = base_model(manifest)
    links = {"model": f"https://huggingface.co/{hub}" if hub else None, "publication": PAPER_URL}
    saes = []
    for path, m in pair_paths:
        metrics = ((m.get("evaluation") or {}).get("metrics")) or {}
        for role, sae in m["saes"].items():
            side = "in" if role == "sae_in" else "out"
            entry = {"id": f"{path}/{role}", "path": f"{path}/{role}", "l0": sae["k"]}  # TopK: at most k active
            if metrics.get(f"{side}/explained_variance") is not None:
                entry["variance_explained"] = metrics[f"{side}/explained_variance"]
            saes.append(entry)
    return {"conversion_func": None, "links": {k: v for k, v in links.items() if v},
            "model": hub or (manifest.get("model") or {}).get("spec"), "repo_id": repo_id, "saes": saes}


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=1000)


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def front_matter(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A pair's model-card metadata (Hugging Face reads the standard keys; the rest describes the pair)."""
    saes = manifest["saes"]
    meta: dict[str, Any] = {"library_name": "saelens", "license": "mit"}
    if base_model(manifest):
        meta["base_model"] = base_model(manifest)
    meta.update({
        "tags": TAGS,
        "model": (manifest.get("model") or {}).get("spec"),
        "layer": manifest["layer"],
        "control": manifest["control"],
        "lambda": manifest["lam"],
        "seed": manifest["seed"],
        "k": {role: sae["k"] for role, sae in saes.items()},
        "n_latents": {role: sae["n_latents"] for role, sae in saes.items()},
        "hook_points": {role: sae["hooks"] for role, sae in saes.items()},
        "training_tokens": manifest["training"].get("tokens"),
        "evaluation_point": manifest["evaluation_point"]["name"],
        "metrics": ((manifest.get("evaluation") or {}).get("metrics")) or {},
    })
    return meta


def loader_snippets(folder: str, manifest: Mapping[str, Any]) -> str:
    """The three loaders, for the pair at ``folder`` (relative to the release root)."""
    saes = manifest["saes"]
    sp = {role: (sae.get("hooks") or {}).get("sparsify") for role, sae in saes.items()}
    lines = ["```python", "from sae_lens import SAE", "", f'sae_in = SAE.load_from_disk("{folder}/sae_in")',
             f'sae_out = SAE.load_from_disk("{folder}/sae_out")',
             "latents = sae_in.encode(x)  # x: inputs of the MLP (what the hook named in cfg.json sees)", "```", ""]
    if sp["sae_in"] and sp["sae_out"]:
        lines += ["```python", "from sparsify import SparseCoder", "",
                  f'coders = SparseCoder.load_many("{folder}/{SPARSIFY_DIR}", local=True)',
                  f'top = coders["{sp["sae_out"]}"].encode(y)  # y: outputs of the MLP', "```", ""]
    lines += ["```python", "import jsae", "",
              f'pair = jsae.load_pair("{folder}")  # loads the model pair.json names (or pass it: model=...)',
              "out = pair(x)  # both SAEs' latents, y = MLP(x), reconstructions and the Jacobian out.jacobian",
              "```"]
    return "\n".join(lines)


def model_card(manifest: Mapping[str, Any], *, folder: str = ".") -> str:
    """A pair's ``README.md``: YAML front matter, what the pair is, its hooks, metrics and loaders."""
    model = manifest.get("model") or {}
    saes = manifest["saes"]
    metrics = ((manifest.get("evaluation") or {}).get("metrics")) or {}
    title = (f"# JSAE pair: {model.get('name')} layer {manifest['layer']}, λ = {_lam_text(manifest['lam'])}, "
             f"seed {manifest['seed']} ({manifest['control']})")
    rows = ["| SAE | TransformerLens hook | HF module (output) | sparsify hookpoint | latents | k |",
            "|---|---|---|---|---|---|"]
    for role, sae in saes.items():
        h = sae.get("hooks") or {}
        rows.append(f"| `{role}` | `{h.get('transformer_lens')}` | `{h.get('hf_module')}` | `{h.get('sparsify')}` | "
                    f"{sae['n_latents']} | {sae['k']} |")
    mrows = ["| metric | value |", "|---|---|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in metrics.items()]
    scales = manifest["activation_scales"]
    body = [
        title, "",
        f"A Jacobian sparse autoencoder pair ({PAPER_URL}): `sae_in`, a TopK SAE on the input of the MLP of layer "
        f"{manifest['layer']} of `{model.get('spec')}`, and `sae_out` on that MLP's output, trained together with "
        f"an L1 penalty (λ = {_lam_text(manifest['lam'])}) on the Jacobian between their latents, on "
        f"{_fmt(manifest['training'].get('tokens'))} tokens. Trained and exported by jsae "
        f"{manifest['versions']['trained_with'].get('jsae')}.", "",
        "## Hook points", "", *rows, "",
        "Namings:", "", *(f"- **{k}**: {v}" for k, v in manifest["hook_namings"].items()), "",
        f"Evaluation point: {manifest['evaluation_point']['meaning']}. Activation scales "
        f"({scales.get('normalization')}: input ×{_fmt(scales.get('input_scale'))}, output "
        f"×{_fmt(scales.get('output_scale'))}) are folded into the weights: the SAEs act on raw activations.", "",
        "## Metrics (evaluation.json)", "",
        *(mrows if metrics else ["Not evaluated."]), "",
        "## Load", "", loader_snippets(folder, manifest), "",
        "The sparsify copy computes the same latents: sparsify subtracts `b_dec` before encoding and jsae does not, "
        "so its encoder bias is `b_enc + W_enc b_dec`. `pretrained_saes.yaml` is this pair's entry in SAELens's "
        "directory format (`SAE.from_pretrained(release, sae_id)` once SAELens lists it); `neuronpedia.json` holds "
        "what Neuronpedia's upload asks for.", "",
        "## Citation", "", PAPER, "",
    ]
    return "---\n" + _yaml(front_matter(manifest)) + "---\n\n" + "\n".join(body)


def release_card(entries: Sequence[tuple[str, Mapping[str, Any]]], *, repo_id: str, out: str) -> str:
    """The release's ``README.md``: every pair with its headline metrics, the loaders and the upload command."""
    hubs = sorted({b for _, m in entries if (b := base_model(m))})
    meta: dict[str, Any] = {"library_name": "saelens", "license": "mit"}
    if hubs:
        meta["base_model"] = hubs if len(hubs) > 1 else hubs[0]
    meta["tags"] = TAGS
    rows = ["| pair | k in/out | latents in/out | EV in | EV out | CE score in | CE score out | share of J > 0.01 |",
            "|---|---|---|---|---|---|---|---|"]
    for path, m in entries:
        mt = ((m.get("evaluation") or {}).get("metrics")) or {}
        rows.append(f"| [`{path}`]({path}/{CARD_FILENAME}) | {m['k']}/{m['k_out']} | {m['n_latents']}/"
                    f"{m['n_latents_out']} | {_fmt(mt.get('in/explained_variance'))} | "
                    f"{_fmt(mt.get('out/explained_variance'))} | {_fmt(mt.get('in/ce_loss_score'))} | "
                    f"{_fmt(mt.get('out/ce_loss_score'))} | {_fmt(mt.get('jac/frac_above_0.01'))} |")
    first = entries[0][0]
    body = [
        "# Jacobian sparse autoencoders (jsae)", "",
        f"{len(entries)} JSAE pairs ({PAPER_URL}), each a TopK SAE on an MLP's input (`sae_in`) and one on its "
        "output (`sae_out`), in SAELens's format (each pair's `sae_in/`, `sae_out/`), as sparsify coders "
        f"(`{SPARSIFY_DIR}/<hookpoint>/`) and with a manifest (`{PAIR_FILENAME}`) that `jsae.load_pair` rebuilds "
        "the pair from. Each pair's folder has its own card (hooks, metrics), `pretrained_saes.yaml` entry and "
        "`neuronpedia.json`.", "",
        *rows, "", "## Load", "", loader_snippets(first, entries[0][1]), "",
        "## Upload", "", "```bash", UPLOAD_COMMAND.format(repo_id=repo_id, out=out), "```", "",
        "## Citation", "", PAPER, "",
    ]
    return "---\n" + _yaml(meta) + "---\n\n" + "\n".join(body)


# --------------------------------------------------------------------------------------------------
# The release
# --------------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def export_pair(pair: ReleasePair, dest: Path, *, repo_id: str, creator: str, workdir: Path | None = None
                ) -> dict[str, Any]:
    """One pair's release folder at ``dest``; returns its manifest (with the sparsify folders it wrote).
    ``workdir``: where the study ran (its relative model specs are relative to it)."""
    manifest = manifest_from_run(pair.run_dir, evaluation=pair.evaluation, workdir=workdir)
    for role in SAE_ROLES:
        src = pair.run_dir / role
        cfg = read_sae_config(src)
        sae = load_sae(src)  # checks the weights file against cfg.json before it is released
        with atomic_dir(dest / role) as tmp:
            shutil.copyfile(src / SAE_WEIGHTS_FILENAME, tmp / SAE_WEIGHTS_FILENAME)
            write_json(tmp / SAE_CFG_FILENAME, release_sae_config(cfg, manifest, role))
        hookpoint = (manifest["saes"][role]["hooks"] or {}).get("sparsify")
        manifest["saes"][role]["sparsify_path"] = f"{SPARSIFY_DIR}/{hookpoint}" if hookpoint else None
        if hookpoint:
            save_sparsify(sae, dest / SPARSIFY_DIR / hookpoint)
        else:
            log.warning("%s %s: no sparsify hookpoint for model class %s; sparsify copy skipped", pair.path, role,
                        manifest["model"].get("class"))
    write_json(dest / PAIR_FILENAME, manifest)
    write_json(dest / NEURONPEDIA_FILENAME, neuronpedia_entry(manifest, pair.path, repo_id=repo_id, creator=creator))
    release = f"jsae-{pair.path.replace('/', '-')}"
    _write_text(dest / SAE_LENS_DIRECTORY, _yaml({release: sae_lens_release(manifest, [(pair.path, manifest)],
                                                                              repo_id=repo_id)}))
    _write_text(dest / CARD_FILENAME, model_card(manifest))
    return manifest


def export_baseline(baseline: ReleasePair, dest: Path) -> dict[str, Any]:
    """One peer-method baseline's release folder at ``dest``: its transcoder as a sparsify folder named by sparsify's
    hookpoint (the MLP module; ``transcoder`` where the architecture has none), the weights byte for byte,
    ``baseline.json`` (what it is, its hooks and metrics) and a model card; returns ``baseline.json``'s content."""
    from jsae.io import read_json
    from jsae.train.baseline import CODER_DIRNAME, SPARSIFY_CFG, load_transcoder

    run = read_json(baseline.run_dir / RUN_FILENAME)
    tc = load_transcoder(baseline.run_dir / CODER_DIRNAME)  # checks the weights against cfg.json before release
    hooks = hook_names(str(run["hook_name"]), int(run["layer"]), (run.get("cache") or {}).get("model_class"))
    hookpoint = hooks["sae_out"]["sparsify"] or CODER_DIRNAME  # a transcoder hooks the MLP module, as sae_out
    with atomic_dir(dest / SPARSIFY_DIR / hookpoint) as tmp:
        for name in (SPARSIFY_CFG, SPARSIFY_WEIGHTS):
            shutil.copyfile(baseline.run_dir / CODER_DIRNAME / name, tmp / name)
    metrics = (read_json(baseline.evaluation).get("metrics") or {}) if baseline.evaluation else None
    entry = {"path": baseline.path, "method": run["method"], "model": run.get("model_name") or run["model"],
             "model_spec": run["model"], "layer": run["layer"], "control": run["control"], "seed": run["seed"],
             "k": tc.k, "n_latents": tc.n_latents, "d_in": tc.d_in, "d_out": tc.d_out, "skip": tc.skip,
             "reads": hooks["sae_in"]["hf"], "writes": hooks["sae_out"]["hf"],
             "sparsify": f"{baseline.path}/{SPARSIFY_DIR}/{hookpoint}", "hooks": hooks["sae_out"],
             "tokens": run.get("tokens_trained"), "evaluated": metrics is not None, "metrics": metrics}
    write_json(dest / BASELINE_FILENAME, entry)
    _write_text(dest / CARD_FILENAME, baseline_card(entry))
    return entry


def baseline_card(entry: Mapping[str, Any]) -> str:
    """A baseline's ``README.md``: what it is, where it reads and writes, its metrics and the sparsify loader."""
    kind = "skip transcoder (plus a dense linear path W_skip)" if entry["skip"] else "transcoder"
    metrics = entry.get("metrics") or {}
    rows = ["| metric | value |", "|---|---|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in metrics.items()]
    return "\n".join([
        f"# TopK {kind}: {entry['model']} layer {entry['layer']}, seed {entry['seed']} ({entry['control']})", "",
        f"A peer method of the JSAE pairs of the same study: it reads the MLP input (`{entry['reads']}`) and predicts "
        f"the MLP output (`{entry['writes']}`) through {entry['n_latents']} latents, {entry['k']} active per token, "
        f"trained by jsae from the pairs' activation cache with their width, k, recipe and {_fmt(entry['tokens'])} "
        "tokens. The folder is in EleutherAI sparsify's format (transcode: true).", "",
        "## Metrics (baseline_evaluation.json: the pairs' output-SAE metrics, T(x) in place of sae_out(y))", "",
        *(rows if metrics else ["Not evaluated."]), "",
        "## Load", "", "```python", "from sparsify import SparseCoder", "",
        f'coder = SparseCoder.load_from_disk("{SPARSIFY_DIR}/{entry["sparsify"].rsplit("/", 1)[-1]}")',
        "y_hat = coder(x, y).sae_out  # x: the MLP input, y: its output (the target of the FVU it reports)",
        "```", "",
    ])


def export_release(results: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   select: Sequence[str] | None = None, repo_id: str | None = None,
                   creator: str = "the jsae authors") -> dict[str, Any]:
    """Write the release of the selected pairs of ``results`` to ``out`` (replaced atomically); returns its manifest."""
    if repo_id is not None and not _HUB_ID.fullmatch(repo_id):
        raise ValueError(f"--repo-id {repo_id!r} is invalid; expected a Hugging Face repository id USER/NAME")
    repo = repo_id or REPO_PLACEHOLDER
    found = find_baselines(results)
    pairs = select_pairs(find_pairs(results), select, found)
    baselines = [b for b in found if not select or any(fnmatch.fnmatchcase(b.path, pattern) for pattern in select)]
    entries: list[tuple[str, dict[str, Any]]] = []
    with atomic_dir(out) as tmp:
        for pair in pairs:
            # the study's model specs are relative to its root, the folder holding results/
            entries.append((pair.path, export_pair(pair, tmp / pair.path, repo_id=repo, creator=creator,
                                                   workdir=Path(results).resolve().parent)))
            log.info("released %s%s", pair.path, "" if pair.evaluation else " (not evaluated: no metrics)")
        released = [export_baseline(b, tmp / b.path) for b in baselines]
        for b in released:
            log.info("released baseline %s%s", b["path"], "" if b["evaluated"] else " (not evaluated: no metrics)")
        by_model: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path, m in entries:
            by_model.setdefault(_model_id(m), []).append((path, m))
        directory = {f"jsae-{model}": sae_lens_release(group[0][1], group, repo_id=repo)
                     for model, group in by_model.items()}
        _write_text(tmp / SAE_LENS_DIRECTORY, _yaml(directory))
        _write_text(tmp / CARD_FILENAME, release_card(entries, repo_id=repo, out=str(out)))
        manifest = {
            "format": RELEASE_FORMAT,
            "format_version": 1,
            "repo_id": repo,
            "upload_command": UPLOAD_COMMAND.format(repo_id=repo, out=str(out)),
            "versions": software_versions(),
            "pairs": [{"path": path, "model": m["model"], "layer": m["layer"], "control": m["control"],
                       "lam": m["lam"], "seed": m["seed"], "evaluated": m.get("evaluation") is not None,
                       "saes": {role: {"sae_lens": f"{path}/{role}",
                                       "sparsify": f"{path}/{s['sparsify_path']}" if s.get("sparsify_path") else None,
                                       "hooks": s["hooks"]} for role, s in m["saes"].items()}}
                      for path, m in entries],
            # the peer methods (transcoders) trained beside the pairs: sparsify folders
            "baselines": [{k: b[k] for k in ("path", "method", "model", "layer", "control", "seed", "k", "n_latents",
                                             "sparsify", "evaluated")} for b in released],
        }
        write_json(tmp / RELEASE_MANIFEST, manifest)
    log.info("wrote %s: %d pairs, %d baselines; upload with: %s", out, len(entries), len(released),
             manifest["upload_command"])
    return manifest


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jsae export", formatter_class=HelpFormatter,
        description="Write a release of trained pairs that SAELens, sparsify and jsae.load_pair load: per pair SAELens "
        "folders with TransformerLens hook names, sparsify folders, pair.json, a model card, a pretrained_saes.yaml "
        "entry and neuronpedia.json; at the top manifest.json, README.md and pretrained_saes.yaml. The output "
        f"folder is replaced atomically. Upload it with: {UPLOAD_COMMAND.format(repo_id='USER/REPO', out='OUT')}")
    p.add_argument("--runs", required=True, help="the study's results directory (holding runs/ and eval/)")
    p.add_argument("--out", required=True, help="release directory to write (e.g. results/release)")
    p.add_argument("--select", nargs="+", default=None, metavar="PATTERN",
                   help="release only pairs whose path <model>/L<layer>/<control>/lam<lam>/seed<seed> (and baselines "
                   "whose <model>/L<layer>/<control>/<method>/seed<seed>) matches one of these globs, e.g. "
                   "'tiny-neox/L2/trained/*/seed0' (default: every pair and baseline)")
    p.add_argument("--repo-id", default=None,
                   help=f"Hugging Face repository the release will be uploaded to (default: {REPO_PLACEHOLDER}, a "
                   "placeholder in pretrained_saes.yaml and neuronpedia.json)")
    p.add_argument("--creator", default="the jsae authors", help="creator name for neuronpedia.json")
    p.add_argument("--log-file", default=None, help="also write the log to this file")
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    return run_cli(_export_cli, args)


def _export_cli(a: argparse.Namespace) -> int:
    export_release(a.runs, a.out, select=a.select, repo_id=a.repo_id, creator=a.creator)
    return 0
