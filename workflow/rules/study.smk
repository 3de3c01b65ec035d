# What the (checked) config means for the jobs: study-wide constants, wildcard constraints, and the
# command-line arguments built from the config. No maths here: every rule calls `python -m jsae <command>`.

import json
import os
import re
import shlex

MODELS = {m["name"]: m for m in config["models"]}
# planted ground-truth models: one MLP (layer 0), sampled data, no re-init control, no tables, recovery.json
PLANTED = [name for name, m in MODELS.items() if m["source"] == "planted"]
# the corpora are read only for language models (a study of planted models alone has none)
NEEDS_TEXT = any(m["source"] != "planted" for m in MODELS.values())
# each model's lambdas (models[].lambdas, else the study's); LAMBDAS: all of them (the `lam` wildcard)
MODEL_LAMBDAS = {name: model_lambda_list(config, m) for name, m in MODELS.items()}
LAMBDAS = list(dict.fromkeys([fmt_lam(x) for x in config["lambdas"]] + [x for v in MODEL_LAMBDAS.values() for x in v]))
REINIT_LAMBDAS = (
    [fmt_lam(x) for x in config["reinit"]["lambdas"]] if config["reinit"]["lambdas"] is not None else LAMBDAS
)
CONTROLS = ["trained", "reinit"] if config["reinit"]["enabled"] else ["trained"]
MLFLOW_URI = config["mlflow"]["tracking_uri"] if config["mlflow"]["enabled"] else ""
# Jobs read the URI from the environment ($JSAE_MLFLOW_URI, the default of every command's --mlflow-uri), not
# from params or the command text: where a job logs is not what it computes, so moving a study to another
# store (a tracking server on a cluster) re-plans nothing. Only init_tracking, which makes the store, keys on it.
os.environ["JSAE_MLFLOW_URI"] = MLFLOW_URI or "none"


# and executors that start jobs elsewhere (SLURM) pass it on
envvars:
    "JSAE_MLFLOW_URI",

# Rules that run models claim a GPU unless the study is pinned to the CPU: on a CPU-only machine they
# may then run side by side (each with its own threads) instead of one at a time.
GPU = 0 if config["device"] == "cpu" else 1
# `--resources gpu=N` only counts GPUs (snakemake/snakemake#281): each GPU rule's command runs through the slot
# launcher (jsae.gpu_slots), which gives the job a GPU of its own. Filled in by an f-string, not a {placeholder}
# or a param: a CPU study's command text and params stay exactly as before (no code/params rerun trigger).
GPU_LAUNCH = "python -m jsae gpu-slot -- " if GPU else ""
PROBE_LAMBDAS = [fmt_lam(x) for x in config["probes"]["lambdas"]] if config["probes"]["lambdas"] is not None else None
TABLE_LAMBDAS = [fmt_lam(x) for x in config["tables"]["lambdas"]] if config["tables"]["lambdas"] is not None else None
JSAE_LAM = chosen_jsae_lam(config)
# Training seeds: `seed` trains every pair; the replicates seed + 1 ... seed + n - 1 train the pairs the
# claims compare (seeds.lambdas, trained and re-init), so a claim's interval covers training variation.
SEED = config["seed"]
SEEDS = [SEED + i for i in range(config["seeds"]["n"])]
SEED_LAMBDAS = [fmt_lam(x) for x in config["seeds"]["lambdas"]] if config["seeds"]["lambdas"] is not None else LAMBDAS
SEED_CONTROLS = config["seeds"]["controls"]


def _alternation(values):
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


wildcard_constraints:
    model=_alternation(list(MODELS) + [model_variant(m, "reinit") for m in MODELS]),
    corpus=_alternation(config.get("corpora") or {}) or "(?!)",
    layer=r"\d+",
    seed=r"\d+",
    lam=_alternation(LAMBDAS),
    control="trained|reinit",
    split="train|validation",
    # the paper's numbered figures, and ours: fig_recovery (a planted ground truth's recovery against lambda) and
    # fig_methods (the pairs beside the peer methods)
    fig=r"fig\d+|fig_recovery|fig_methods",


def is_planted(model):
    return model in MODELS and MODELS[model]["source"] == "planted"


def planted_config_json(wildcards):
    """The planted model's PlantedConfig fields as JSON (the schema fills the defaults: the dataclass's)."""
    return json.dumps(MODELS[wildcards.model].get("planted") or {}, sort_keys=True)


def is_materialized(model):
    """A pretrained model given as GGUF weights: the workflow saves it once as a plain folder (rule materialize)
    and every job loads that folder (~0.5 s instead of ~35 s of de-quantization per process)."""
    from jsae.data.models import is_gguf_spec

    m = MODELS.get(model)
    return m is not None and m["source"] == "pretrained" and is_gguf_spec(m["spec"])


MATERIALIZED = [name for name in MODELS if is_materialized(name)]


def model_spec(variant):
    """The SPEC handed to `python -m jsae ... --model`: a local directory or the configured spec.

    A hub id's `revision` rides in the SPEC as ID@REVISION (jsae.data.models.split_revision): every command
    that loads the model gets it, and caches and runs record it with the spec, so a pair never mixes two
    revisions (the schema's pattern keeps it free of shell characters)."""
    base, reinit = base_model(variant)
    if reinit or MODELS[base]["source"] in ("pretrain", "planted") or is_materialized(base):
        return model_dir(variant)
    from jsae.data.models import REVISION_SEP, split_revision

    spec, revision = split_revision(MODELS[base]["spec"], MODELS[base].get("revision"))  # checked in checks.smk
    return f"{spec}{REVISION_SEP}{revision}" if revision else spec


def model_files(variant):
    """config.json and the weight files of a model whose spec is a local save_pretrained folder: inputs of the
    rules that load it (cache, reinit), so a swapped checkpoint reruns what rests on it. [] for hub ids and
    smollm2-135m (nothing local to watch) and for the models the workflow builds (their markers are inputs)."""
    from jsae.data.models import checkpoint_files

    base, reinit = base_model(variant)
    if reinit or MODELS[base]["source"] != "pretrained":
        return []
    return [str(path) for path in checkpoint_files(MODELS[base]["spec"])]


def pair_spec(wildcards):
    return model_spec(model_variant(wildcards.model, wildcards.control))


def train_config_json(wildcards):
    """The pair's TrainConfig and RunOptions as JSON, keyed by field name (= the schema's sae: and train: keys):
    the study's blocks with the model's own keys on top."""
    m = MODELS[base_model(wildcards.model)[0]]
    return json.dumps(
        {**model_section(config, m, "sae"), **model_section(config, m, "train"), "lam": float(wildcards.lam),
         "seed": int(wildcards.seed)},
        sort_keys=True,
    )


def corpus_for_split(split):
    return config["train_corpus"] if split == "train" else config["eval_corpus"]


def corpus_args(wildcards):
    c = config["corpora"][wildcards.corpus]
    args = [f"--source {c['source']}", f"--validation-fraction {c['validation_fraction']}"]
    if c["max_docs"] is not None:
        args.append(f"--max-docs {c['max_docs']}")
    if c["source"] == "files":
        args.append("--glob " + " ".join(f"'{g}'" for g in c["glob"]))
    if c["source"] == "parquet":
        args += ["--glob " + " ".join(shlex.quote(g) for g in c["glob"]), f"--text-column {shlex.quote(c['text_column'])}"]
    if c["source"] == "disk":
        args += [f"--path {shlex.quote(c['path'])}", f"--text-column {shlex.quote(c['text_column'])}"]
        if "split" in c:
            args.append(f"--split {shlex.quote(c['split'])}")
    if c["source"] == "hf":
        args += [f"--dataset {c['dataset']}", f"--split {c['split']}", f"--text-column {c['text_column']}"]
        if c["config"] is not None:
            args.append(f"--config {c['config']}")
        if c["streaming"]:
            args.append("--streaming")
    return " ".join(args)


def corpus_files(wildcards):
    """The local files a corpus is built from (files / parquet: what the globs match; disk: the save_to_disk
    folder's files): inputs of the corpus rule, so edited data rebuilds the corpus. [] for default and hf."""
    from jsae.data.corpus import local_source_files

    c = config["corpora"][wildcards.corpus]
    return [str(path) for path in local_source_files(c["source"], globs=c.get("glob"), path=c.get("path"))]


def cache_tokens(wildcards):
    return config["cache"]["train_tokens"] if wildcards.split == "train" else config["cache"]["eval_tokens"]


def mlflow_args(with_experiment=True):
    """The MLflow arguments of a job besides the URI (which jobs read from $JSAE_MLFLOW_URI): the experiment."""
    return f"--experiment {config['study']}" if MLFLOW_URI and with_experiment else ""


# --- Baselines (baselines.smk): the transcoders trained beside the pairs, when baselines.enabled ---------------------
BASELINES = config["baselines"]
BASELINE_METHODS = list(BASELINES["methods"]) if BASELINES["enabled"] else []
if BASELINES["enabled"] and "reinit" in BASELINES["controls"] and not config["reinit"]["enabled"]:
    _fail("baselines.controls has reinit but reinit.enabled is false; enable the control or remove reinit "
          "from baselines.controls")
# A baseline's layout beside the pairs' (paths.smk): <method> where a pair has lam<lambda>; its evaluation file is
# named apart from a pair's evaluation.json, which the report's loader reads as a pair.
BASELINE = "{model}/L{layer}/{control}/{method}/seed{seed}"
BASELINE_RUN_DIR = f"{RESULTS}/runs/{BASELINE}"
BASELINE_EVAL_DIR = f"{RESULTS}/eval/{BASELINE}"
BASELINE_LOG = "{model}_L{layer}_{control}_{method}_seed{seed}"
# the transcoder in sparsify's format (jsae.train.baseline.CODER_DIRNAME, SPARSIFY_CFG, SPARSIFY_WEIGHTS)
BASELINE_CODER_FILES = ("transcoder/cfg.json", "transcoder/sae.safetensors")
BASELINE_EVALUATION = "baseline_evaluation.json"  # jsae.eval.baseline.EVALUATION_FILENAME
BASELINE_CORE = "core/transcoder_eval_results.json"  # jsae.eval.baseline.CORE_FILENAME


def baseline_run_dir(model, layer, control, method, seed):
    return BASELINE_RUN_DIR.format(model=model, layer=layer, control=control, method=method, seed=seed)


def baseline_eval_dir(model, layer, control, method, seed):
    return BASELINE_EVAL_DIR.format(model=model, layer=layer, control=control, method=method, seed=seed)


def baseline_train_config_json(wildcards):
    """The pairs' TrainConfig and RunOptions fields (train_config_json's, the model's own keys on top) without lam."""
    m = MODELS[base_model(wildcards.model)[0]]
    return json.dumps({**model_section(config, m, "sae"), **model_section(config, m, "train"),
                       "seed": int(wildcards.seed)}, sort_keys=True)


def baseline_inputs(wildcards):
    """Inputs of a baseline's analyses: its run, the validation cache and the model."""
    variant = model_variant(wildcards.model, wildcards.control)
    run = baseline_run_dir(wildcards.model, wildcards.layer, wildcards.control, wildcards.method, wildcards.seed)
    return {"run": f"{run}/run.json", "coder": [f"{run}/{name}" for name in BASELINE_CODER_FILES],
            "cache": cache_path(variant, wildcards.layer, "validation"), "model": model_marker(variant)}
