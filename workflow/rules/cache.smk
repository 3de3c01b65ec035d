# MLP inputs of (model, layer) cached once and shared by the whole lambda sweep. A planted model's rows
# are sampled from it (no corpus: cache_inputs leaves the corpus out, and no --corpus is passed).


rule cache:
    input:
        unpack(cache_inputs),
    output:
        h5=CACHE,
    params:
        spec=lambda wc: model_spec(wc.model),
        corpus=lambda wc, input: f"--corpus {Path(input.corpus).parent}" if "corpus" in input.keys() else "",
        tokens=cache_tokens,
        context=config["cache"]["context_length"],
        dtype=config["cache"]["dtype"],
        batch=config["cache"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        log_file("cache", "{model}_L{layer}_{split}"),
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m jsae cache --model {params.spec} --layer {wildcards.layer} "
        "{params.corpus} --split {wildcards.split} --n-tokens {params.tokens} "
        "--context-length {params.context} --out {output.h5} --dtype {params.dtype} "
        "--batch-size {params.batch} --seed {params.seed} --device {params.device} 2> {log}"
