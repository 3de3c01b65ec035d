# What the study builds: its pairs, the per-pair files each figure reads, and the final targets.


def pairs(controls=None, lams=None, replicates=True, planted=None):
    """Every (model, layer, control, lam, seed) of the study, optionally restricted; replicates=False keeps
    only the pairs of the base `seed` (what the figures and qualitative tables show); planted=True / False
    keeps only the planted / the other models' pairs. A planted model has no re-init control."""
    out = []
    for m in config["models"]:
        if planted is not None and is_planted(m["name"]) != planted:
            continue
        for layer in m["layers"]:
            for control in CONTROLS:
                if controls is not None and control not in controls:
                    continue
                if control == "reinit" and is_planted(m["name"]):
                    continue
                own = MODEL_LAMBDAS[m["name"]]
                for lam in own if control == "trained" else [x for x in REINIT_LAMBDAS if x in own]:
                    if lams is not None and lam not in lams:
                        continue
                    seeds = SEEDS if replicates and lam in SEED_LAMBDAS and control in SEED_CONTROLS else [SEED]
                    out += [dict(model=m["name"], layer=layer, control=control, lam=lam, seed=s) for s in seeds]
    return out


def probed_pairs():
    """The pairs whose linearity is probed: every control's base-seed pair at probes.lambdas, and the trained
    replicates (the probe claims compare trained pairs only)."""
    if not config["probes"]["enabled"]:
        return []
    base = pairs(lams=PROBE_LAMBDAS, replicates=False)
    return base + [p for p in pairs(controls=["trained"], lams=PROBE_LAMBDAS) if p["seed"] != SEED]


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
    # ours: every planted pair (all lambdas and seeds) against its ground truth
    "fig_recovery": (("recovery.json",), "all", ["trained"]),
    # ours: every trained pair (all lambdas and seeds) beside the peer methods' evaluations (baselines.enabled)
    "fig_methods": (_EVAL, "all", ["trained"]),
}


# figures of language-model quantities (CE scores, the re-init control): a planted model's pairs are not drawn
LM_ONLY_FIGURES = {"fig5", "fig7"}


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
    if wildcards.fig == "fig_methods":
        if not BASELINE_METHODS:
            raise ValueError("fig_methods needs the peer methods; set baselines.enabled: true")
        return pair_files("evaluation.json", pairs(controls=controls)) + baseline_evaluations(controls)
    if "recovery.json" in names:  # the recovery figure shows every seed of the planted models' pairs
        selected = pairs(controls=controls, lams=lams, planted=True)
    else:  # fig7 compares each model with its re-init, fig5 plots CE scores: language models only
        no_planted = False if "reinit" in controls or wildcards.fig in LM_ONLY_FIGURES else None
        selected = pairs(controls=controls, lams=lams, replicates=False, planted=no_planted)
    return [f for name in names for f in pair_files(name, selected)]


def figure_targets():
    names = [f for f in config["figures"]["names"] if (f != "fig8" or config["probes"]["enabled"])
             and (f != "fig_methods" or BASELINE_METHODS)]
    return [figure_file(f, ext) for f in names for ext in ("pdf", "png")]


def analysis_targets():
    out = pair_files("evaluation.json", pairs()) + pair_files("probes.json", probed_pairs())
    out += pair_files("recovery.json", pairs(planted=True))
    if config["interaction"]["enabled"]:  # SCALAR-style interaction sparsity of every pair
        out += pair_files("interaction.json", pairs())
    if config["core"]["enabled"]:  # SAEBench's core metrics of every pair's two SAEs
        out += pair_files("core/sae_in_eval_results.json", pairs()) + pair_files("core/sae_out_eval_results.json",
                                                                                  pairs())
    if config["tables"]["enabled"]:  # text windows: not for a planted model, whose rows have no text
        out += pair_files("tables.html", pairs(lams=TABLE_LAMBDAS, replicates=False, planted=False))
    return out


def built_files():
    """Every file the study's results rest on that a rule writes — corpora, model directories, each pair's run
    (run.json and both SAEs) — but not the activation caches (large, and rebuilt on demand when a pair needs
    retraining). Snakemake does not rebuild a missing intermediate whose consumers' outputs exist, so these are
    targets: a deleted or failed-and-removed one is rebuilt, and everything downstream of it reruns."""
    corpora = {config["train_corpus"], config["eval_corpus"]} if NEEDS_TEXT else set()
    files = [f"{corpus_dir(c)}/{name}" for c in sorted(corpora) for name in ("corpus.json", "train.jsonl",
                                                                            "validation.jsonl")]
    for m in MODELS:
        if is_planted(m):  # its own files; no re-init copy
            files += [f"{model_dir(m)}/{name}" for name in PLANTED_FILES]
            continue
        for variant in [m] + ([model_variant(m, "reinit")] if "reinit" in CONTROLS else []):
            markers = model_marker(variant)
            files += markers + [f"{Path(marker).parent}/{name}" for marker in markers for name in MODEL_FILES]
    for p in pairs():
        run = run_dir(**p)
        files += [f"{run}/run.json"] + [f"{run}/{sae}/{name}" for sae in ("sae_in", "sae_out")
                                        for name in ("cfg.json", "sae_weights.safetensors")]
    return files


def baselines():
    """Every (model, layer, control, method, seed) baseline of the study (baselines.smk): baselines.controls (a
    planted model has no re-init control), the base seed (and the replicate seeds with baselines.replicates)."""
    out = []
    for m in config["models"]:
        for layer in m["layers"]:
            for control in CONTROLS:
                if control not in BASELINES["controls"] or (control == "reinit" and is_planted(m["name"])):
                    continue
                for seed in SEEDS if BASELINES["replicates"] else [SEED]:
                    out += [dict(model=m["name"], layer=layer, control=control, method=method, seed=seed)
                            for method in BASELINE_METHODS]
    return out


def baseline_evaluations(controls=None):
    """Each baseline's baseline_evaluation.json (of ``controls`` only, when given)."""
    return [f"{baseline_eval_dir(**b)}/{BASELINE_EVALUATION}" for b in baselines()
            if controls is None or b["control"] in controls]


def baseline_targets():
    """Each baseline's run (run.json and the transcoder: targets, so a deleted one is rebuilt), its evaluation and,
    with core.enabled, its SAEBench core JSON."""
    out = []
    for b in baselines():
        run, ev = baseline_run_dir(**b), baseline_eval_dir(**b)
        out += [f"{run}/run.json", *(f"{run}/{name}" for name in BASELINE_CODER_FILES), f"{ev}/{BASELINE_EVALUATION}"]
        if config["core"]["enabled"]:
            out.append(f"{ev}/{BASELINE_CORE}")
    return out


def final_targets():
    targets = built_files() + analysis_targets() + figure_targets() + [SUMMARY_MD, SUMMARY_CSV, CLAIMS_CSV]
    targets += baseline_targets()  # the transcoder baselines (baselines.smk), when baselines.enabled
    if MLFLOW_URI:
        targets.append(STUDY_RUN)
    return targets
