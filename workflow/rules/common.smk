# Helpers shared by every rule: config checks beyond the schema, path builders, input functions and
# the list of final targets. No maths here: every rule calls `python -m jsae <command>`.

import os
import re
import sys
from pathlib import Path


def _fail(message):
    """One-line config error, raised before Snakemake builds the DAG."""
    raise ValueError(f"config error: {message}")


def fmt_lam(lam):
    """Canonical text of a lambda in paths and on the command line: 0, 0.1, 1, 3, 1e-05."""
    return f"{float(lam):g}"


# --- validation beyond the JSON schema (cross references, ranges that depend on other keys) -------
def check_config(cfg):
    corpora = cfg["corpora"]
    for key in ("train_corpus", "eval_corpus"):
        if cfg[key] not in corpora:
            _fail(f"{key}={cfg[key]!r} is not a corpus in `corpora` (have: {', '.join(sorted(corpora))})")
    names = [m["name"] for m in cfg["models"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(f"model names must be unique; repeated: {', '.join(dupes)}")
    for m in cfg["models"]:
        if m["name"].endswith("-reinit"):
            _fail(f"model name {m['name']!r} must not end in '-reinit' (reserved for the re-initialised control)")
        n_layers = m["pretrain"]["layers"] if m["source"] == "pretrain" else m.get("n_layers")
        if m["source"] == "pretrain" and m.get("n_layers") not in (None, n_layers):
            _fail(f"model {m['name']!r}: n_layers={m['n_layers']} contradicts pretrain.layers={n_layers}")
        if m["source"] == "pretrain" and "spec" in m:
            _fail(f"model {m['name']!r}: `spec` is only for source 'pretrained' (this model is pretrained by the workflow)")
        if n_layers is not None:
            bad = [layer for layer in m["layers"] if layer >= n_layers]
            if bad:
                _fail(f"model {m['name']!r}: layer {bad[0]} is out of range; expected 0..{n_layers - 1} ({n_layers} layers)")
    lams = {fmt_lam(x) for x in cfg["lambdas"]}
    if len(lams) != len(cfg["lambdas"]):
        _fail(f"lambdas {cfg['lambdas']} contain duplicates after formatting")
    if len(lams - {"0"}) == 0:
        _fail(f"lambdas {cfg['lambdas']} need at least one value > 0 (the JSAEs)")
    if "0" not in lams:
        _fail(f"lambdas {cfg['lambdas']} must include 0 (the traditional-SAE baseline every figure compares with)")
    for section in ("probes", "tables"):
        extra = [x for x in cfg[section]["lambdas"] or [] if fmt_lam(x) not in lams]
        if extra:
            _fail(f"{section}.lambdas value {extra[0]} is not in `lambdas` {cfg['lambdas']}")
    reinit_lams = cfg["reinit"]["lambdas"]
    if reinit_lams is not None:
        extra = [x for x in reinit_lams if fmt_lam(x) not in lams]
        if extra:
            _fail(f"reinit.lambdas value {extra[0]} is not in `lambdas` {cfg['lambdas']}")
    jsae_lam = cfg["figures"]["jsae_lam"]
    if jsae_lam is not None:
        if fmt_lam(jsae_lam) not in lams:
            _fail(f"figures.jsae_lam={jsae_lam} is not in `lambdas` {cfg['lambdas']}")
        if jsae_lam == 0:
            _fail("figures.jsae_lam must be > 0 (lambda = 0 is the traditional baseline it is compared with)")


check_config(config)

# --- study-wide constants ---------------------------------------------------------------------------
# Rules run `python -m jsae ...`. Jobs inherit this environment: `python` is the interpreter running
# Snakemake (which has jsae installed), unless --sdm conda activates a rule environment, whose
# `python` then comes first; PYTHONPATH makes the package importable there too.
_SRC_DIR = str(Path(workflow.basedir).parent / "src")
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    PYTHONPATH=os.pathsep.join(p for p in (_SRC_DIR, os.environ.get("PYTHONPATH")) if p),
)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MODELS = {m["name"]: m for m in config["models"]}
LAMBDAS = [fmt_lam(x) for x in config["lambdas"]]
REINIT_LAMBDAS = (
    [fmt_lam(x) for x in config["reinit"]["lambdas"]] if config["reinit"]["lambdas"] is not None else LAMBDAS
)
CONTROLS = ["trained", "reinit"] if config["reinit"]["enabled"] else ["trained"]
MLFLOW_URI = config["mlflow"]["tracking_uri"] if config["mlflow"]["enabled"] else ""
TRACKING_MARKER = "results/tracking/store.json"
# Rules that run models claim a GPU unless the study is pinned to the CPU: on a CPU-only machine they
# may then run side by side (each with its own threads) instead of one at a time.
GPU = 0 if config["device"] == "cpu" else 1
PROBE_LAMBDAS = [fmt_lam(x) for x in config["probes"]["lambdas"]] if config["probes"]["lambdas"] is not None else None
TABLE_LAMBDAS = [fmt_lam(x) for x in config["tables"]["lambdas"]] if config["tables"]["lambdas"] is not None else None
# Paper's sweet-spot range: the largest lambda <= 1 unless the config names one.
_positive = sorted(float(x) for x in config["lambdas"] if x > 0)
JSAE_LAM = fmt_lam(
    config["figures"]["jsae_lam"]
    if config["figures"]["jsae_lam"] is not None
    else max([x for x in _positive if x <= 1] or _positive[:1])
)

if "fig8" in config["figures"]["names"] and config["probes"]["enabled"] and PROBE_LAMBDAS is not None:
    missing = [lam for lam in ("0", JSAE_LAM) if lam not in PROBE_LAMBDAS]
    if missing:
        _fail(f"fig8 compares probes at lambda 0 and {JSAE_LAM}; add {missing[0]} to probes.lambdas")
if "fig7" in config["figures"]["names"] and "reinit" in CONTROLS:
    missing = [lam for lam in ("0", JSAE_LAM) if lam not in REINIT_LAMBDAS]
    if missing:
        _fail(f"fig7 compares trained and re-initialised pairs at lambda 0 and {JSAE_LAM}; add {missing[0]} to reinit.lambdas")


def _alternation(values):
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


wildcard_constraints:
    model=_alternation(list(MODELS) + [f"{m}-reinit" for m in MODELS]),
    corpus=_alternation(config["corpora"]),
    layer=r"\d+",
    lam=_alternation(LAMBDAS),
    control="trained|reinit",
    split="train|validation",
    fig=r"fig\d+",


# --- models -----------------------------------------------------------------------------------------
def base_model(model_dir):
    """'tiny-neox-reinit' -> ('tiny-neox', True); 'tiny-neox' -> ('tiny-neox', False)."""
    if model_dir not in MODELS and model_dir.endswith("-reinit") and model_dir[: -len("-reinit")] in MODELS:
        return model_dir[: -len("-reinit")], True
    return model_dir, False


def model_dir_for(model, control):
    return f"{model}-reinit" if control == "reinit" else model


def model_spec(model_dir):
    """The SPEC handed to `python -m jsae ... --model`: a local directory or the configured spec."""
    base, reinit = base_model(model_dir)
    if reinit or MODELS[base]["source"] == "pretrain":
        return f"results/models/{model_dir}"
    return MODELS[base]["spec"]


def model_marker(model_dir):
    """Files that must exist before the model SPEC can be loaded (empty for hub/local specs)."""
    base, reinit = base_model(model_dir)
    if reinit:
        return [f"results/models/{model_dir}/reinit.json"]
    if MODELS[base]["source"] == "pretrain":
        return [f"results/models/{base}/pretrain.json"]
    return []


# --- corpora and caches ------------------------------------------------------------------------------
def corpus_dir(name):
    return f"results/corpus/{name}"


def corpus_for_split(split):
    return config["train_corpus"] if split == "train" else config["eval_corpus"]


def cache_path(model_dir, layer, split):
    return f"results/cache/{model_dir}/L{layer}/{split}.h5"


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


# --- pairs --------------------------------------------------------------------------------------------
def run_dir(model, layer, control, lam):
    return f"results/runs/{model}/L{layer}/{control}/lam{lam}"


def eval_dir(model, layer, control, lam):
    return f"results/eval/{model}/L{layer}/{control}/lam{lam}"


def pairs(controls=None, lams=None):
    """Every (model, layer, control, lam) of the study, optionally restricted."""
    out = []
    for m in config["models"]:
        for layer in m["layers"]:
            for control in CONTROLS:
                if controls is not None and control not in controls:
                    continue
                for lam in LAMBDAS if control == "trained" else REINIT_LAMBDAS:
                    if lams is not None and lam not in lams:
                        continue
                    out.append(dict(model=m["name"], layer=layer, control=control, lam=lam))
    return out


def pair_files(name, selected):
    return [f"{eval_dir(**p)}/{name}" for p in selected]


def train_inputs(wildcards):
    mdir = model_dir_for(wildcards.model, wildcards.control)
    inputs = {"cache": cache_path(mdir, wildcards.layer, "train"), "model": model_marker(mdir)}
    if MLFLOW_URI:
        inputs["tracking"] = TRACKING_MARKER
    return inputs


def pair_inputs(wildcards):
    """Inputs of the per-pair analyses: the trained pair, the validation cache and the model."""
    mdir = model_dir_for(wildcards.model, wildcards.control)
    return {
        "run": f"{run_dir(wildcards.model, wildcards.layer, wildcards.control, wildcards.lam)}/run.json",
        "cache": cache_path(mdir, wildcards.layer, "validation"),
        "model": model_marker(mdir),
    }


def pair_spec(wildcards):
    return model_spec(model_dir_for(wildcards.model, wildcards.control))


def mlflow_args(with_experiment=True):
    if not MLFLOW_URI:
        return ""
    args = f"--mlflow-uri '{MLFLOW_URI}'"
    return f"{args} --experiment {config['study']}" if with_experiment else args


# --- figures ------------------------------------------------------------------------------------------
# Which per-pair outputs each figure reads: `snakemake results/figures/fig5.pdf` builds only these.
_EVAL = ("evaluation.json",)
_EVAL_STATS = ("evaluation.json", "jacobian_stats.npz")
_PROBES = ("probes.json", "probe_curves.npz")
FIGURE_NEEDS = {
    "fig2": (_EVAL, "baseline+jsae", ["trained"]),
    "fig4": (_EVAL, "all", ["trained"]),
    "fig5": (_EVAL, "all", ["trained"]),
    "fig7": (_EVAL, "baseline+jsae", ["trained", "reinit"]),
    "fig8": (_PROBES, "baseline+jsae", ["trained"]),
    "fig32": (_EVAL_STATS, "baseline+jsae", ["trained"]),
    "fig35": (_EVAL, "all", ["trained"]),
    "fig36": (_EVAL_STATS, "baseline+jsae", ["trained"]),
}


def figure_inputs(wildcards):
    if wildcards.fig not in FIGURE_NEEDS:
        raise ValueError(f"unknown figure {wildcards.fig!r}; expected one of {', '.join(FIGURE_NEEDS)}")
    names, which, controls = FIGURE_NEEDS[wildcards.fig]
    controls = [c for c in controls if c in CONTROLS]
    lams = None if which == "all" else ["0", JSAE_LAM]
    if "probes.json" in names and not config["probes"]["enabled"]:
        raise ValueError("fig8 needs the linearity probes; set probes.enabled: true")
    if "probes.json" in names and PROBE_LAMBDAS is not None:
        lams = [lam for lam in lams if lam in PROBE_LAMBDAS]
    selected = pairs(controls=controls, lams=lams)
    return [f for name in names for f in pair_files(name, selected)]


def figure_targets():
    names = [f for f in config["figures"]["names"] if f != "fig8" or config["probes"]["enabled"]]
    return [f"results/figures/{f}.{ext}" for f in names for ext in ("pdf", "png")]


# --- final targets ------------------------------------------------------------------------------------
def analysis_targets():
    out = pair_files("evaluation.json", pairs())
    if config["probes"]["enabled"]:
        out += pair_files("probes.json", pairs(lams=PROBE_LAMBDAS))
    if config["tables"]["enabled"]:
        out += pair_files("tables.html", pairs(lams=TABLE_LAMBDAS))
    return out


def final_targets():
    targets = analysis_targets() + figure_targets() + ["results/summary.md", "results/summary.csv"]
    if MLFLOW_URI:
        targets.append("results/tracking/study_run.json")
    return targets
