# What the (checked) config means for the jobs: study-wide constants, wildcard constraints, and the
# command-line arguments built from the config. No maths here: every rule calls `python -m jsae <command>`.

import json
import re

MODELS = {m["name"]: m for m in config["models"]}
# planted ground-truth models: one MLP (layer 0), sampled data, no re-init control, no tables, recovery.json
PLANTED = [name for name, m in MODELS.items() if m["source"] == "planted"]
# the corpora are read only for language models (a study of planted models alone has none)
NEEDS_TEXT = any(m["source"] != "planted" for m in MODELS.values())
LAMBDAS = [fmt_lam(x) for x in config["lambdas"]]
REINIT_LAMBDAS = (
    [fmt_lam(x) for x in config["reinit"]["lambdas"]] if config["reinit"]["lambdas"] is not None else LAMBDAS
)
CONTROLS = ["trained", "reinit"] if config["reinit"]["enabled"] else ["trained"]
MLFLOW_URI = config["mlflow"]["tracking_uri"] if config["mlflow"]["enabled"] else ""
# Rules that run models claim a GPU unless the study is pinned to the CPU: on a CPU-only machine they
# may then run side by side (each with its own threads) instead of one at a time.
GPU = 0 if config["device"] == "cpu" else 1
PROBE_LAMBDAS = [fmt_lam(x) for x in config["probes"]["lambdas"]] if config["probes"]["lambdas"] is not None else None
TABLE_LAMBDAS = [fmt_lam(x) for x in config["tables"]["lambdas"]] if config["tables"]["lambdas"] is not None else None
JSAE_LAM = chosen_jsae_lam(config)
# Training seeds: `seed` trains every pair; the replicates seed + 1 ... seed + n - 1 train the pairs the
# claims compare (seeds.lambdas, trained and re-init), so a claim's interval covers training variation.
SEED = config["seed"]
SEEDS = [SEED + i for i in range(config["seeds"]["n"])]
SEED_LAMBDAS = [fmt_lam(x) for x in config["seeds"]["lambdas"]] if config["seeds"]["lambdas"] is not None else LAMBDAS


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
    # the paper's numbered figures, and ours: fig_recovery (a planted ground truth's recovery against lambda)
    fig=r"fig\d+|fig_recovery",


def is_planted(model):
    return model in MODELS and MODELS[model]["source"] == "planted"


def planted_config_json(wildcards):
    """The planted model's PlantedConfig fields as JSON (the schema fills the defaults: the dataclass's)."""
    return json.dumps(MODELS[wildcards.model].get("planted") or {}, sort_keys=True)


def model_spec(variant):
    """The SPEC handed to `python -m jsae ... --model`: a local directory or the configured spec."""
    base, reinit = base_model(variant)
    if reinit or MODELS[base]["source"] in ("pretrain", "planted"):
        return model_dir(variant)
    return MODELS[base]["spec"]


def pair_spec(wildcards):
    return model_spec(model_variant(wildcards.model, wildcards.control))


def train_config_json(wildcards):
    """The pair's TrainConfig and RunOptions as JSON, keyed by field name (= the schema's sae: and train: keys)."""
    return json.dumps(
        {**config["sae"], **config["train"], "lam": float(wildcards.lam), "seed": int(wildcards.seed)}, sort_keys=True
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
    if c["source"] == "hf":
        args += [f"--dataset {c['dataset']}", f"--split {c['split']}", f"--text-column {c['text_column']}"]
        if c["config"] is not None:
            args.append(f"--config {c['config']}")
        if c["streaming"]:
            args.append("--streaming")
    return " ".join(args)


def cache_tokens(wildcards):
    return config["cache"]["train_tokens"] if wildcards.split == "train" else config["cache"]["eval_tokens"]


def mlflow_args(with_experiment=True):
    if not MLFLOW_URI:
        return ""
    args = f"--mlflow-uri '{MLFLOW_URI}'"
    return f"{args} --experiment {config['study']}" if with_experiment else args
