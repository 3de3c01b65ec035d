# The JSAE's peer methods from the same activation caches, in the same sweep (issue 15): a TopK transcoder and a
# skip transcoder per (model, layer, control, seed), with the pairs' width, k, recipe, tokens and data order
# (jsae.train.baseline), evaluated like the pairs' output SAEs (jsae.eval.baseline). Off unless baselines.enabled.
# Their layout and input functions: study.smk (BASELINE_RUN_DIR, ...); which baselines the study has: targets.smk.
#
#   results/runs/<model>/L<layer>/<control>/<method>/seed<seed>/{run.json, metrics.jsonl, transcoder/}
#   results/eval/<model>/L<layer>/<control>/<method>/seed<seed>/{baseline_evaluation.json, baseline_arrays.npz,
#                                                                 core/transcoder_eval_results.json}


rule train_baseline:
    wildcard_constraints:
        method=_alternation(BASELINE_METHODS) or "(?!)",
    input:
        unpack(train_inputs),
    output:
        run=f"{BASELINE_RUN_DIR}/run.json",
        cfg=f"{BASELINE_RUN_DIR}/{BASELINE_CODER_FILES[0]}",
        weights=f"{BASELINE_RUN_DIR}/{BASELINE_CODER_FILES[1]}",
    params:
        spec=pair_spec,
        out=lambda wc, output: Path(output.run).parent,
        train_config=baseline_train_config_json,
        device=config["device"],
        mlflow=mlflow_args(),
        # nested under the study's MLflow run, as the pairs
        parent=lambda wc, input: f"--mlflow-parent-from {input.tracking}" if "tracking" in input.keys() else "",
    log:
        log_file("train_baseline", BASELINE_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae train-baseline --method {wildcards.method} --model {params.spec} "
        "--model-name {wildcards.model} --layer {wildcards.layer} --control {wildcards.control} --cache {input.cache} "
        "--out {params.out} --config-json {params.train_config:q} --device {params.device} {params.mlflow} "
        "{params.parent} --no-progress --force 2> {log}"


rule evaluate_baseline:
    wildcard_constraints:
        method=_alternation(BASELINE_METHODS) or "(?!)",
    input:
        unpack(baseline_inputs),
    output:
        metrics=f"{BASELINE_EVAL_DIR}/{BASELINE_EVALUATION}",
        arrays=f"{BASELINE_EVAL_DIR}/baseline_arrays.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        tokens=config["evaluate"]["n_tokens"],
        ce_tokens=config["evaluate"]["ce_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        log_file("evaluate_baseline", BASELINE_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae evaluate-baseline --model {params.spec} --layer {wildcards.layer} --run {params.run} "
        "--cache {input.cache} --out {output.metrics} --n-tokens {params.tokens} --ce-tokens {params.ce_tokens} "
        "--device {params.device} {params.mlflow} --no-progress 2> {log}"


rule core_baseline:
    wildcard_constraints:
        method=_alternation(BASELINE_METHODS) or "(?!)",
    input:
        unpack(baseline_inputs),
    output:
        f"{BASELINE_EVAL_DIR}/{BASELINE_CORE}",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        out=lambda wc, output: Path(output[0]).parent,
        tokens=config["core"]["n_tokens"] or config["evaluate"]["n_tokens"],
        # as the pairs' core rule: a planted model has no LM (no CE/KL), and batches of 2048 rows
        ce=lambda wc: "--ce-contexts 0 --batch-size-prompts 2048" if is_planted(wc.model) else (
            f"--ce-contexts {config['core']['ce_contexts']}" if config["core"]["ce_contexts"] is not None else ""),
        device=config["device"],
    log:
        log_file("core_baseline", BASELINE_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae core-baseline --model {params.spec} --layer {wildcards.layer} --run {params.run} "
        "--cache {input.cache} --out {params.out} --n-tokens {params.tokens} {params.ce} --device {params.device} "
        "--no-progress 2> {log}"
