# The paper's figures (one job each), the summary tables and the study-level MLflow run.


rule figure:
    input:
        figure_inputs,
    output:
        pdf="results/figures/{fig}.pdf",
        png=report(
            "results/figures/{fig}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{fig}"},
        ),
    params:
        out=lambda wc, output: Path(output.pdf).parent,
        jsae_lam=JSAE_LAM,
    log:
        "results/logs/figures/{fig}.log",
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
        probes=lambda wc: pair_files("probes.json", pairs(lams=PROBE_LAMBDAS)) if config["probes"]["enabled"] else [],
    output:
        md=report("results/summary.md", caption="../report/summary.rst", category="Summary"),
        csv="results/summary.csv",
    params:
        jsae_lam=JSAE_LAM,
    log:
        "results/logs/summary.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae summary --inputs {input} --out-md {output.md} --out-csv {output.csv} "
        "--jsae-lam {params.jsae_lam} 2> {log}"


rule study_run:
    input:
        tracking=TRACKING_MARKER,
        figures=figure_targets(),
        summary=rules.summary.output.md,
        csv=rules.summary.output.csv,
    output:
        run="results/tracking/study_run.json",
    params:
        uri=MLFLOW_URI,
        experiment=config["study"],
    log:
        "results/logs/study_run.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true python -m jsae summary --log-study --mlflow-uri '{params.uri}' "
        "--experiment {params.experiment} --summary-csv {input.csv} --artifacts {input.figures} {input.summary} "
        "--out-run {output.run} 2> {log}"
