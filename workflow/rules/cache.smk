# MLP inputs of (model, layer) cached once and shared by the whole lambda sweep. One job per (model variant,
# split) caches EVERY layer the study trains on that model from one LM forward per batch, which ends at the
# deepest of them: k layers cost one truncated forward, not k. Snakemake cannot give one rule a different set
# of outputs per model, so there is one rule per variant, named cache_<variant> (the re-init control is a
# variant of its own). A planted model's rows are sampled from it (no corpus: cache_inputs leaves the corpus
# out, and no --corpus is passed).

from types import SimpleNamespace


def cache_variants():
    """The model variants that get caches: each model, and its re-init copy where it has the control."""
    out = []
    for name in MODELS:
        out.append(name)
        if "reinit" in CONTROLS and not is_planted(name):
            out.append(model_variant(name, "reinit"))
    return out


for _variant in cache_variants():

    rule:
        name:
            f"cache_{_variant}"
        input:
            unpack(lambda wc, v=_variant: cache_inputs(SimpleNamespace(model=v, split=wc.split))),
        output:
            [cache_path(_variant, layer, "{split}") for layer in MODELS[base_model(_variant)[0]]["layers"]],
        params:
            spec=model_spec(_variant),
            layers=" ".join(str(layer) for layer in MODELS[base_model(_variant)[0]]["layers"]),
            corpus=lambda wc, input: f"--corpus {Path(input.corpus).parent}" if "corpus" in input.keys() else "",
            tokens=cache_tokens,
            context=config["cache"]["context_length"],
            dtype=config["cache"]["dtype"],
            forward_dtype=config["cache"]["forward_dtype"],
            batch=config["cache"]["batch_size"],
            seed=config["seed"],
            device=config["device"],
        log:
            log_file("cache", f"{_variant}_{{split}}"),
        threads: 1
        resources:
            gpu=GPU,
            mem_mb=4000,
        conda:
            "../../envs/jsae.yaml"
        shell:
            f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
            "python -m jsae cache --model {params.spec} --layer {params.layers} "
            "{params.corpus} --split {wildcards.split} --n-tokens {params.tokens} "
            "--context-length {params.context} --out {output} --dtype {params.dtype} "
            "--forward-dtype {params.forward_dtype} --batch-size {params.batch} --seed {params.seed} "
            "--device {params.device} 2> {log}"
