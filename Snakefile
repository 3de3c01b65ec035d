# jsae: the whole Jacobian-SAE study as a DAG. Thin on purpose: config + schema, includes, targets.
#
#   snakemake                                         # the study in config/config.yaml
#   snakemake results/figures/fig5.pdf                # one figure and only what it needs
#   snakemake --configfile config/pythia-70m.yaml -n  # another study, dry run
#
# profiles/default/config.yaml (next to this file) is applied automatically: `cores: all`,
# `resources: gpu=1`. Put targets FIRST: after `--resources gpu=1` or `--configfile X` argparse reads
# a target as one more resource / config file.

from snakemake.utils import min_version

min_version("9.0")


# The default study, unless the command line names its own config (then that one alone applies:
# Snakemake would otherwise merge it into the default study key by key).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# The environment every job inherits (PATH to the interpreter with jsae), then the helpers the rules
# share: checks first (the schema, then what the config implies), so a bad config fails in one line
# before anything is computed from it.
include: "workflow/rules/environment.smk"
include: "workflow/rules/paths.smk"
include: "workflow/rules/checks.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        final_targets(),
