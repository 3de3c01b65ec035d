# Per-pair analyses: evaluation + Jacobian statistics, linearity probes, qualitative tables, and for a planted
# model the recovery of its ground truth.


rule evaluate:
    input:
        unpack(pair_inputs),
    output:
        metrics=f"{EVAL_DIR}/evaluation.json",
        stats=f"{EVAL_DIR}/jacobian_stats.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        tokens=config["evaluate"]["n_tokens"],
        ce_tokens=config["evaluate"]["ce_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        log_file("evaluate", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae evaluate --model {params.spec} "
        "--layer {wildcards.layer} --run {params.run} --cache {input.cache} --out {output.metrics} "
        "--n-tokens {params.tokens} --ce-tokens {params.ce_tokens} --device {params.device} {params.mlflow} 2> {log}"


rule probes:
    input:
        unpack(pair_inputs),
    output:
        metrics=f"{EVAL_DIR}/probes.json",
        curves=f"{EVAL_DIR}/probe_curves.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        sweeps=config["probes"]["n_sweeps"],
        cap=f"--n-samples {config['probes']['n_samples']}" if config["probes"].get("n_samples") else "",
        tolerance=config["probes"]["tolerance"],
        seed=config["seed"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        log_file("probes", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae probes --model {params.spec} --layer {wildcards.layer} "
        "--run {params.run} --cache {input.cache} --out {output.metrics} --n-sweeps {params.sweeps} {params.cap} "
        "--tolerance {params.tolerance} --seed {params.seed} --device {params.device} {params.mlflow} 2> {log}"


rule tables:
    input:
        unpack(pair_inputs),
    output:
        html=report(
            f"{EVAL_DIR}/tables.html",
            caption="../report/tables.rst",
            category="Qualitative tables",
            labels={"model": "{model}", "layer": "{layer}", "control": "{control}", "lambda": "{lam}"},
        ),
        md=f"{EVAL_DIR}/tables.md",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        n=config["tables"]["n_output_latents"],
        tokens=config["evaluate"]["n_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        log_file("tables", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae tables --model {params.spec} "
        "--layer {wildcards.layer} --run {params.run} --cache {input.cache} --out {output.html} "
        "--n-output-latents {params.n} --n-tokens {params.tokens} --device {params.device} {params.mlflow} 2> {log}"


# A planted model's pairs against its ground truth: feature, edge and (where probed) kind recovery.
rule recovery:
    wildcard_constraints:
        model=_alternation(PLANTED) or "(?!)",
        control="trained",
    input:
        unpack(recovery_inputs),
    output:
        metrics=f"{EVAL_DIR}/recovery.json",
        arrays=f"{EVAL_DIR}/recovery_arrays.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        probes=lambda wc, input: f"--probes {input.probes}" if "probes" in input.keys() else "",
        tokens=config["evaluate"]["n_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        log_file("recovery", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae recovery --model {params.spec} --layer {wildcards.layer} "
        "--run {params.run} --cache {input.cache} {params.probes} --out {output.metrics} "
        "--n-tokens {params.tokens} --device {params.device} {params.mlflow} 2> {log}"


# SAEBench's core metrics of both SAEs of every pair (jsae.eval.core): the field's common report card, in its
# own JSON schema, next to evaluation.json. A planted model has no LM: no CE/KL (--ce-contexts 0).
rule core:
    input:
        unpack(pair_inputs),
    output:
        sae_in=f"{EVAL_DIR}/core/sae_in_eval_results.json",
        sae_out=f"{EVAL_DIR}/core/sae_out_eval_results.json",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        out=lambda wc, output: Path(output.sae_in).parent,
        tokens=config["core"]["n_tokens"] or config["evaluate"]["n_tokens"],
        # a planted model: no LM (no CE/KL), and one row per "context": batches of 2048 rows, as an LM's 16 x 127
        ce=lambda wc: "--ce-contexts 0 --batch-size-prompts 2048" if is_planted(wc.model) else (
            f"--ce-contexts {config['core']['ce_contexts']}" if config["core"]["ce_contexts"] is not None else ""),
        device=config["device"],
    log:
        log_file("core", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae core --model {params.spec} --layer {wildcards.layer} "
        "--run {params.run} --cache {input.cache} --out {params.out} --n-tokens {params.tokens} {params.ce} "
        "--device {params.device} --no-progress 2> {log}"


# SCALAR-style interaction sparsity (jsae.eval.interaction): how many input -> output latent edges the pair needs
# to recover the MLP's effect; interaction.json next to evaluation.json. Off unless interaction.enabled.
rule interaction:
    input:
        unpack(pair_inputs),
    output:
        f"{EVAL_DIR}/interaction.json",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        edges=config["interaction"]["edges"],
        tokens=f"--n-tokens {config['interaction']['n_tokens']}" if config["interaction"]["n_tokens"] else "",
        device=config["device"],
    log:
        log_file("interaction", PAIR_LOG),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}python -m jsae interaction --model {{params.spec}} "
        "--layer {wildcards.layer} --run {params.run} --cache {input.cache} --out {output} --edges {params.edges} "
        "{params.tokens} --device {params.device} --no-progress 2> {log}"
