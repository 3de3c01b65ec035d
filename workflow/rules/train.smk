# One JSAE pair per (model, layer, control, lambda); lambda = 0 is the traditional-SAE baseline.


rule train:
    input:
        unpack(train_inputs),
    output:
        run=f"{RUN_DIR}/run.json",
        sae_in_cfg=f"{RUN_DIR}/sae_in/cfg.json",
        sae_in_weights=f"{RUN_DIR}/sae_in/sae_weights.safetensors",
        sae_out_cfg=f"{RUN_DIR}/sae_out/cfg.json",
        sae_out_weights=f"{RUN_DIR}/sae_out/sae_weights.safetensors",
    params:
        spec=pair_spec,
        out=lambda wc, output: Path(output.run).parent,
        # a change of any value reruns the pair (params trigger)
        train_config=train_config_json,
        device=config["device"],
        mlflow=mlflow_args(),
        # the study's MLflow run (in init_tracking's marker), under which the pair's run is nested
        parent=lambda wc, input: f"--mlflow-parent-from {input.tracking}" if "tracking" in input.keys() else "",
    log:
        log_file("train", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae train --model {params.spec} --model-name {wildcards.model} "
        "--layer {wildcards.layer} --control {wildcards.control} --cache {input.cache} --out {params.out} "
        "--config-json {params.train_config:q} --device {params.device} {params.mlflow} {params.parent} "
        # Snakemake decides when a pair is (re)trained; --force lets it replace a stale run directory
        "--force 2> {log}"
