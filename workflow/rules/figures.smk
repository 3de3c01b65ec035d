# The paper's figures (one job each) and the summary tables.


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
        # what the verdicts were made on: steps, max_steps, stopped_by and held-out loss of each pretrained model
        pretrain=lambda wc: [marker for m in MODELS for marker in model_marker(m)],
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
        "python -m jsae summary --inputs {input.evaluations} {input.probes} --pretrain {input.pretrain} "
        "--out-md {output.md} --out-csv {output.csv} --out-claims {output.claims} --jsae-lam {params.jsae_lam} "
        "2> {log}"
