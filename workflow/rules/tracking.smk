# MLflow: the store, created once before parallel jobs write to it, and the study's parent run.

# A fresh sqlite store races when several processes create it at once: this job runs first and every
# train job depends on its marker, which also records the study's parent run (each pair's run is its child).
rule init_tracking:
    output:
        marker=TRACKING_MARKER,
    params:
        uri=MLFLOW_URI,
        study=config["study"],
    log:
        log_file("init_tracking"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae.tracking {params.uri:q} --study {params.study:q} --marker {output.marker} 2> {log}"


rule study_run:
    input:
        tracking=TRACKING_MARKER,
        figures=figure_targets(),
        summary=rules.summary.output.md,
        csv=rules.summary.output.csv,
        claims=rules.summary.output.claims,
    output:
        run=STUDY_RUN,
    params:
        experiment=config["study"],
    log:
        log_file("study_run"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae summary --log-study --mlflow-parent-from {input.tracking} "
        "--experiment {params.experiment} --summary-csv {input.csv} --artifacts {input.figures} {input.summary} {input.claims} "
        "--out-run {output.run} 2> {log}"
