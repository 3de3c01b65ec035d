# Per-pair analyses: evaluation + Jacobian statistics, linearity probes, qualitative tables.


rule evaluate:
    input:
        unpack(pair_inputs),
    output:
        metrics="results/eval/{model}/L{layer}/{control}/lam{lam}/evaluation.json",
        stats="results/eval/{model}/L{layer}/{control}/lam{lam}/jacobian_stats.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        tokens=config["evaluate"]["n_tokens"],
        ce_tokens=config["evaluate"]["ce_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        "results/logs/evaluate/{model}_L{layer}_{control}_lam{lam}.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS={threads} python -m jsae evaluate --model {params.spec} "
        "--layer {wildcards.layer} --run {params.run} --cache {input.cache} --out {output.metrics} "
        "--n-tokens {params.tokens} --ce-tokens {params.ce_tokens} --device {params.device} {params.mlflow} 2> {log}"


rule probes:
    input:
        unpack(pair_inputs),
    output:
        metrics="results/eval/{model}/L{layer}/{control}/lam{lam}/probes.json",
        curves="results/eval/{model}/L{layer}/{control}/lam{lam}/probe_curves.npz",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        samples=config["probes"]["n_samples"],
        seed=config["seed"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        "results/logs/probes/{model}_L{layer}_{control}_lam{lam}.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS={threads} python -m jsae probes --model {params.spec} --layer {wildcards.layer} "
        "--run {params.run} --cache {input.cache} --out {output.metrics} --n-samples {params.samples} "
        "--seed {params.seed} --device {params.device} {params.mlflow} 2> {log}"


rule tables:
    input:
        unpack(pair_inputs),
    output:
        html=report(
            "results/eval/{model}/L{layer}/{control}/lam{lam}/tables.html",
            caption="../report/tables.rst",
            category="Qualitative tables",
            labels={"model": "{model}", "layer": "{layer}", "control": "{control}", "lambda": "{lam}"},
        ),
        md="results/eval/{model}/L{layer}/{control}/lam{lam}/tables.md",
    params:
        spec=pair_spec,
        run=lambda wc, input: Path(input.run).parent,
        n=config["tables"]["n_output_latents"],
        tokens=config["evaluate"]["n_tokens"],
        device=config["device"],
        mlflow=mlflow_args(with_experiment=False),
    log:
        "results/logs/tables/{model}_L{layer}_{control}_lam{lam}.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS={threads} python -m jsae tables --model {params.spec} "
        "--layer {wildcards.layer} --run {params.run} --cache {input.cache} --out {output.html} "
        "--n-output-latents {params.n} --n-tokens {params.tokens} --device {params.device} {params.mlflow} 2> {log}"
