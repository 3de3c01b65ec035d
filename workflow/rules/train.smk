# One JSAE pair per (model, layer, control, lambda); lambda = 0 is the traditional-SAE baseline.


rule init_tracking:
    output:
        marker=TRACKING_MARKER,
    params:
        uri=MLFLOW_URI,
    log:
        "results/logs/init_tracking.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    script:
        "../scripts/init_tracking.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        run="results/runs/{model}/L{layer}/{control}/lam{lam}/run.json",
        sae_in_cfg="results/runs/{model}/L{layer}/{control}/lam{lam}/sae_in/cfg.json",
        sae_in_weights="results/runs/{model}/L{layer}/{control}/lam{lam}/sae_in/sae_weights.safetensors",
        sae_out_cfg="results/runs/{model}/L{layer}/{control}/lam{lam}/sae_out/cfg.json",
        sae_out_weights="results/runs/{model}/L{layer}/{control}/lam{lam}/sae_out/sae_weights.safetensors",
    params:
        spec=pair_spec,
        out=lambda wc, output: Path(output.run).parent,
        k=config["sae"]["k"],
        expansion=config["sae"]["expansion"],
        tokens=config["train"]["tokens"],
        batch=config["train"]["batch_size"],
        lr=config["train"]["lr"],
        checkpoint=config["train"]["checkpoint_every"],
        log_every=config["train"]["log_every"],
        normalize=config["train"]["normalize_activations"],
        seed=config["seed"],
        device=config["device"],
        mlflow=mlflow_args(),
    log:
        "results/logs/train/{model}_L{layer}_{control}_lam{lam}.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS={threads} python -m jsae train --model {params.spec} "
        "--layer {wildcards.layer} --cache {input.cache} --out {params.out} --lam {wildcards.lam} "
        "--expansion {params.expansion} --k {params.k} --tokens {params.tokens} --batch-size {params.batch} "
        "--lr {params.lr} --seed {params.seed} --device {params.device} --control {wildcards.control} "
        "--checkpoint-every {params.checkpoint} --log-every {params.log_every} "
        "--normalize-activations {params.normalize} {params.mlflow} "
        # Snakemake decides when a pair is (re)trained; --force lets it replace a stale run directory
        "--model-name {wildcards.model} --force 2> {log}"
