# Corpus -> tiny-neox pretraining -> random re-initialisation control; planted ground-truth models.


rule corpus:
    input:
        corpus_files,  # the local files it reads (files / parquet / disk): edited data rebuilds the corpus
    output:
        meta=f"{CORPUS_DIR}/corpus.json",
        train=f"{CORPUS_DIR}/train.jsonl",
        validation=f"{CORPUS_DIR}/validation.jsonl",
    params:
        args=corpus_args,
        out=lambda wc, output: Path(output.meta).parent,
        seed=config["seed"],
    log:
        log_file("corpus", "{corpus}"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae corpus {params.args} --out {params.out} --seed {params.seed} 2> {log}"


rule pretrain:
    wildcard_constraints:
        # only the models the workflow pretrains (not their -reinit copies, which share the file names)
        model=_alternation([m for m in MODELS if MODELS[m]["source"] == "pretrain"]) or "(?!)",
    input:
        corpus=f"{corpus_dir(config['train_corpus'])}/corpus.json",
    output:
        marker=PRETRAIN_MARKER,
        files=[f"{MODEL_DIR}/{name}" for name in MODEL_FILES],
    params:
        corpus=lambda wc, input: Path(input.corpus).parent,
        out=lambda wc, output: Path(output.marker).parent,
        arch=lambda wc: (
            "--hidden {hidden} --layers {layers} --vocab-size {vocab_size} "
            "--context-length {context_length} --minutes {minutes}"
            + (" --max-steps {max_steps}" if MODELS[wc.model]["pretrain"].get("max_steps") else "")
            + (" --allow-time-cap" if MODELS[wc.model]["pretrain"].get("allow_time_cap") else "")
        ).format(**MODELS[wc.model]["pretrain"]),
        seed=config["seed"],
        device=config["device"],
    log:
        log_file("pretrain", "{model}"),
    threads: 4
    resources:
        gpu=GPU,
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        f"OMP_NUM_THREADS={{threads}} {GPU_LAUNCH}"
        "python -m jsae pretrain --corpus {params.corpus} --out {params.out} {params.arch} "
        "--seed {params.seed} --device {params.device} 2> {log}"


# A planted ground-truth model (jsae.data.planted): a synthetic MLP with known features and edges, built
# from the config's `planted:` block (a changed block rebuilds it: params trigger).
rule planted:
    wildcard_constraints:
        model=_alternation(PLANTED) or "(?!)",
    output:
        marker=PLANTED_MARKER,
        files=[f"{MODEL_DIR}/{name}" for name in PLANTED_FILES if f"{MODEL_DIR}/{name}" != PLANTED_MARKER],
    params:
        out=lambda wc, output: Path(output.marker).parent,
        config=planted_config_json,
    log:
        log_file("planted", "{model}"),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m jsae planted --out {params.out} --config-json {params.config:q} 2> {log}"


# GGUF weights (smollm2-135m) as a plain save_pretrained folder, once: every later job loads the folder.
rule materialize:
    wildcard_constraints:
        model=_alternation(MATERIALIZED) or "(?!)",
    output:
        marker=MATERIALIZED_MARKER,
        files=[f"{MODEL_DIR}/{name}" for name in MODEL_FILES],
    params:
        spec=lambda wc: MODELS[wc.model]["spec"],
        out=lambda wc, output: Path(output.marker).parent,
    log:
        log_file("materialize", "{model}"),
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m jsae materialize --model {params.spec} --out {params.out} 2> {log}"


rule reinit:
    wildcard_constraints:
        # not a planted model: it has no transformer to re-initialise (pairs() trains no control for it)
        model=_alternation([m for m in MODELS if m not in PLANTED]) or "(?!)",
    input:
        model=lambda wc: model_marker(wc.model),
        # a local checkpoint's config.json and weights: a swapped checkpoint rebuilds the control (its
        # architecture and tokenizer are the checkpoint's)
        checkpoint=lambda wc: model_files(wc.model),
    output:
        marker=REINIT_MARKER,
        files=[f"{Path(REINIT_MARKER).parent}/{name}" for name in MODEL_FILES],
    params:
        spec=lambda wc: model_spec(wc.model),
        out=lambda wc, output: Path(output.marker).parent,
        seed=config["reinit"]["seed"],
    log:
        log_file("reinit", "{model}"),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae reinit --model {params.spec} --out {params.out} --seed {params.seed} 2> {log}"
