# The paper's figures (one job each; fig_recovery is ours: a planted model's recovery against lambda) and the
# summary tables.


rule figure:
    input:
        figure_inputs,
    output:
        pdf=f"{FIGURE}.pdf",
        png=report(
            f"{FIGURE}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{fig}"},
        ),
    params:
        out=lambda wc, output: Path(output.pdf).parent,
        jsae_lam=JSAE_LAM,
    log:
        log_file("figures", "{fig}"),
    threads: 1
    resources:
        mem_mb=1500,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae figures --only {wildcards.fig} --out-dir {params.out} --jsae-lam {params.jsae_lam} "
        "--inputs {input} 2> {log}"


rule summary:
    input:
        evaluations=lambda wc: pair_files("evaluation.json", pairs()),
        probes=lambda wc: pair_files("probes.json", probed_pairs()),
        # a planted model's pairs against its ground truth (the "Planted ground truth" section)
        recovery=lambda wc: pair_files("recovery.json", pairs(planted=True)),
        # the peer methods (baselines.enabled): the methods section beside the pairs
        baselines=lambda wc: baseline_evaluations(),
        # what the verdicts were made on: steps, max_steps, stopped_by and held-out loss of each pretrained model
        pretrain=lambda wc: [PRETRAIN_MARKER.format(model=m) for m in MODELS if MODELS[m]["source"] == "pretrain"],
    output:
        md=report(SUMMARY_MD, caption="../report/summary.rst", category="Summary"),
        csv=SUMMARY_CSV,
        claims=CLAIMS_CSV,
    params:
        jsae_lam=JSAE_LAM,
    log:
        log_file("summary"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae summary --inputs {input.evaluations} {input.probes} {input.recovery} {input.baselines} "
        "--pretrain {input.pretrain} --out-md {output.md} --out-csv {output.csv} --out-claims {output.claims} "
        "--jsae-lam {params.jsae_lam} 2> {log}"
