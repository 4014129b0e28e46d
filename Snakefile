# Stage 2 medical-safety DPO dataset.
#
#   snakemake --cores all                              # the real run (config.yaml)
#   snakemake --cores 2 --configfile demo/config.yaml  # the offline demo
#   snakemake -n                                       # what would run
#
# Stages, one rule file each under workflow/rules/: questions -> shards ->
# rejected / chosen answers per shard -> pairs -> judge (optional) -> the dataset
# (checked, reported). The logic lives in the meddpo
# package (workflow/meddpo); each rule calls one `meddpo` sub-command.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# The description atop Snakemake's HTML report (snakemake --report report.zip), which also
# holds the outputs flagged report(...) in the rules: the dataset's statistics and plots.
report: "workflow/report/workflow.rst"


# internals.smk first: it puts the package on sys.path and checks the config files.
include: "workflow/rules/internals.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/questions.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/rejected.smk"
include: "workflow/rules/chosen.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/dataset.smk"


# Rules of seconds of work say `localrule: True`: never worth a cluster job.
rule all:
    default_target: True
    input:
        PATHS.dataset_file("pairs"),
        PATHS.validation,
    localrule: True


# Every declared output, log and benchmark lies in the project folder or output.dir
# (links followed), or the parse stops here.
check_output_locations()
