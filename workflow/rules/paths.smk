# THE result layout, defined once: every rule's input, output and log path is built from these
# patterns ({wildcards} as in the rules). jsae's result loader (jsae.report.results) reads the pair's
# model, layer, control, lambda and training seed back from <model>/L<layer>/<control>/lam<lam>/seed<seed>/.
# Plain Python on purpose (no Snakemake directives, no config read at load time):
# tests/test_workflow.py execs this file to check the layout against that loader.

from pathlib import Path

RESULTS = "results"
CORPUS_DIR = f"{RESULTS}/corpus/{{corpus}}"
# {model}: a configured model name, or <name>-reinit for its randomly re-initialised copy
MODEL_DIR = f"{RESULTS}/models/{{model}}"
CACHE = f"{RESULTS}/cache/{{model}}/L{{layer}}/{{split}}.h5"
# {seed}: the SAE training seed (`seed`, and seed + 1 ... for the replicates of `seeds`)
PAIR = "{model}/L{layer}/{control}/lam{lam}/seed{seed}"
RUN_DIR = f"{RESULTS}/runs/{PAIR}"
EVAL_DIR = f"{RESULTS}/eval/{PAIR}"
FIGURE = f"{RESULTS}/figures/{{fig}}"  # + .pdf / .png
SUMMARY_MD = f"{RESULTS}/summary.md"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
CLAIMS_CSV = f"{RESULTS}/claims.csv"  # one row per site x claim: value, 95% interval, threshold, margin, verdict
TRACKING_MARKER = f"{RESULTS}/tracking/store.json"
STUDY_RUN = f"{RESULTS}/tracking/study_run.json"
LOG_DIR = f"{RESULTS}/logs"
PAIR_LOG = "{model}_L{layer}_{control}_lam{lam}_seed{seed}"  # a per-pair job's log name under LOG_DIR/<job>/
REINIT_SUFFIX = "-reinit"

PRETRAIN_MARKER = f"{MODEL_DIR}/pretrain.json"
# the files of a model directory the workflow writes (save_pretrained): declared, so a deleted one is rebuilt
MODEL_FILES = ("config.json", "model.safetensors")
# a planted ground-truth model's directory (python -m jsae planted); its config.json marks it complete
PLANTED_FILES = ("mlp.safetensors", "truth.safetensors", "edges.json", "config.json")
PLANTED_MARKER = f"{MODEL_DIR}/config.json"
# a model given as GGUF weights (smollm2-135m), saved once as a plain folder (python -m jsae materialize)
MATERIALIZED_MARKER = f"{MODEL_DIR}/materialized.json"
# results/models/{model}-reinit/reinit.json: the reinit rule's {model} is the trained model it copies
REINIT_MARKER = f"{MODEL_DIR.format(model=f'{{model}}{REINIT_SUFFIX}')}/reinit.json"


def fmt_lam(lam):
    """Canonical text of a lambda in paths and on the command line: 0, 0.1, 1, 3, 1e-05."""
    return f"{float(lam):g}"


def log_file(job, name=None):
    """results/logs/<job>/<name>.log, or results/logs/<job>.log for a study-wide job."""
    return f"{LOG_DIR}/{job}.log" if name is None else f"{LOG_DIR}/{job}/{name}.log"


def corpus_dir(corpus):
    return CORPUS_DIR.format(corpus=corpus)


def model_dir(model):
    return MODEL_DIR.format(model=model)


def cache_path(model, layer, split):
    return CACHE.format(model=model, layer=layer, split=split)


def run_dir(model, layer, control, lam, seed):
    return RUN_DIR.format(model=model, layer=layer, control=control, lam=fmt_lam(lam), seed=seed)


def eval_dir(model, layer, control, lam, seed):
    return EVAL_DIR.format(model=model, layer=layer, control=control, lam=fmt_lam(lam), seed=seed)


def figure_file(fig, ext):
    return f"{FIGURE.format(fig=fig)}.{ext}"


# --- model directories: <name> or <name>-reinit ------------------------------------------------------
def model_variant(model, control):
    """The model directory name a pair uses: 'tiny-neox', or 'tiny-neox-reinit' for the control."""
    return f"{model}{REINIT_SUFFIX}" if control == "reinit" else model


def base_model(variant):
    """'tiny-neox-reinit' -> ('tiny-neox', True); 'tiny-neox' -> ('tiny-neox', False)."""
    base = variant[: -len(REINIT_SUFFIX)]
    if variant not in MODELS and variant.endswith(REINIT_SUFFIX) and base in MODELS:
        return base, True
    return variant, False


def model_marker(variant):
    """Files that must exist before the model SPEC can be loaded (empty for hub/local specs)."""
    base, reinit = base_model(variant)
    if reinit:
        return [REINIT_MARKER.format(model=base)]
    if MODELS[base]["source"] == "pretrain":
        return [PRETRAIN_MARKER.format(model=base)]
    if MODELS[base]["source"] == "planted":
        return [PLANTED_MARKER.format(model=base)]
    if is_materialized(base):
        return [MATERIALIZED_MARKER.format(model=base)]
    return []


# --- input functions: the files a job reads, from its wildcards ---------------------------------------
def pair_files(name, selected):
    """<eval dir>/<name> of each selected pair (dicts of model, layer, control, lam, seed)."""
    return [f"{eval_dir(**p)}/{name}" for p in selected]


def train_inputs(wildcards):
    variant = model_variant(wildcards.model, wildcards.control)
    inputs = {"cache": cache_path(variant, wildcards.layer, "train"), "model": model_marker(variant)}
    if MLFLOW_URI:
        # ancient: a store re-initialised (another URI) gives the pair a new parent run, not a retraining
        inputs["tracking"] = ancient(TRACKING_MARKER)
    return inputs


def pair_inputs(wildcards):
    """Inputs of the per-pair analyses: the trained pair, the validation cache and the model."""
    variant = model_variant(wildcards.model, wildcards.control)
    return {
        "run": f"{run_dir(wildcards.model, wildcards.layer, wildcards.control, wildcards.lam, wildcards.seed)}/run.json",
        "cache": cache_path(variant, wildcards.layer, "validation"),
        "model": model_marker(variant),
    }


def cache_inputs(wildcards):
    """The model, and for a language model the corpus it reads (a planted model samples its rows: no corpus).
    A local checkpoint's config.json and weights (model_files, study.smk) too: a swapped checkpoint reruns the cache."""
    inputs = {"model": model_marker(wildcards.model), "checkpoint": model_files(wildcards.model)}
    if not is_planted(base_model(wildcards.model)[0]):
        inputs["corpus"] = f"{corpus_dir(corpus_for_split(wildcards.split))}/corpus.json"
    return inputs


def recovery_inputs(wildcards):
    """A planted pair's analysis inputs, plus its probes.json where the study probes it (the kind agreement)."""
    inputs = pair_inputs(wildcards)
    pair = dict(model=wildcards.model, layer=int(wildcards.layer), control=wildcards.control, lam=wildcards.lam,
                seed=int(wildcards.seed))
    if pair in probed_pairs():
        inputs["probes"] = f"{eval_dir(**pair)}/probes.json"
    return inputs
