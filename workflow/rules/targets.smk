# What the study builds: its pairs, the per-pair files each figure reads, and the final targets.


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
    return [figure_file(f, ext) for f in names for ext in ("pdf", "png")]


def analysis_targets():
    out = pair_files("evaluation.json", pairs())
    if config["probes"]["enabled"]:
        out += pair_files("probes.json", pairs(lams=PROBE_LAMBDAS))
    if config["tables"]["enabled"]:
        out += pair_files("tables.html", pairs(lams=TABLE_LAMBDAS))
    return out


def final_targets():
    targets = analysis_targets() + figure_targets() + [SUMMARY_MD, SUMMARY_CSV, CLAIMS_CSV]
    if MLFLOW_URI:
        targets.append(STUDY_RUN)
    return targets
