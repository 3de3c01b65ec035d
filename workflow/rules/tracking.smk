# MLflow: the store, created once before parallel jobs write to it, and the study-level run.

import json


# A fresh sqlite store races when several processes create it at once: this job runs first and every
# train job depends on its marker.
rule init_tracking:
    output:
        marker=TRACKING_MARKER,
    params:
        uri=MLFLOW_URI,
        record=json.dumps({"tracking_uri": MLFLOW_URI}),
    log:
        log_file("init_tracking"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae.tracking {params.uri:q} 2> {log} && echo {params.record:q} > {output.marker}"


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
        uri=MLFLOW_URI,
        experiment=config["study"],
    log:
        log_file("study_run"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae summary --log-study --mlflow-uri '{params.uri}' "
        "--experiment {params.experiment} --summary-csv {input.csv} --artifacts {input.figures} {input.summary} {input.claims} "
        "--out-run {output.run} 2> {log}"
