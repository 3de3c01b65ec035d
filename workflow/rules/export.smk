# The release: every pair of the study in the formats other tools load (SAELens, sparsify, jsae.load_pair), with
# model cards, pretrained_saes.yaml and neuronpedia.json, and the peer-method baselines as sparsify folders (python
# -m jsae export). Not part of the default target:
#
#   snakemake results/release/manifest.json
#
# The command replaces results/release/ as a whole (atomically); manifest.json is the file Snakemake tracks. Its
# inputs are each pair's run (run.json and both SAEs) and evaluation.json (the metrics of its model card).


rule export:
    input:
        runs=lambda wc: [
            f"{run_dir(**p)}/{name}"
            for p in pairs()
            for name in ("run.json", "sae_in/cfg.json", "sae_in/sae_weights.safetensors", "sae_out/cfg.json",
                         "sae_out/sae_weights.safetensors")
        ],
        evaluations=lambda wc: pair_files("evaluation.json", pairs()),
        # the peer methods (baselines.enabled): released as sparsify folders beside the pairs
        baselines=lambda wc: [f"{baseline_run_dir(**b)}/{name}" for b in baselines()
                              for name in ("run.json", *BASELINE_CODER_FILES)] + baseline_evaluations(),
    output:
        manifest=f"{RESULTS}/release/manifest.json",
    params:
        # results/ (runs/ and eval/ below it) and the release folder, from the tracked output's path
        results=lambda wc, output: Path(output.manifest).parent.parent,
        out=lambda wc, output: Path(output.manifest).parent,
        # exactly the study's pairs: <model>/L<layer>/<control>/lam<lam>/seed<seed>, as under results/runs
        select=lambda wc: " ".join([PAIR.format(**{**p, "lam": fmt_lam(p["lam"])}) for p in pairs()]
                                   + [BASELINE.format(**b) for b in baselines()]),
    log:
        log_file("export"),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/jsae.yaml"
    shell:
        "python -m jsae export --runs {params.results} --out {params.out} --select {params.select} 2> {log}"
