"""The dataset: flag and filter the pairs, write the report, the plots and the card; validate.

in:  {OUT}/pairs/all_pairs.jsonl (+ .stats.json), the question stats, every shard's answers
     and job benchmarks (throughput, and the hours each model took against the preflight's estimate)
out: {OUT}/dataset/stage2_med_pairs.jsonl          the kept pairs (meta.flags says what they tripped)
     {OUT}/dataset/stage2_med_pairs.dropped.jsonl  dropped pairs with meta.drop_reasons
     {OUT}/dataset/stage2_med_pairs.stats.json     counts at every stage, lengths, truncation, throughput
     {OUT}/dataset/report.md, plots/*.png          the report a person reads
     {OUT}/dataset/README.md                       the dataset card (Hugging Face format)
     {OUT}/dataset/validation.txt                  written when `meddpo validate` passes
The stats and the plots are also in Snakemake's HTML report (snakemake --report report.zip,
captions in workflow/report/).
"""


rule finalize:
    input:
        pairs=PATHS.all_pairs,
        pair_stats=PATHS.all_pairs_stats,
        question_stats=PATHS.question_stats,
        rejected=expand(PATHS.answers("rejected"), shard=SHARDS),
        chosen=expand(PATHS.answers("chosen"), shard=SHARDS),
        rejected_benchmarks=shard_benchmarks(config, "rejected"),
        chosen_benchmarks=shard_benchmarks(config, "chosen"),
        judge_benchmarks=judge_benchmarks(config),
    output:
        # the pairs, the dropped pairs, the stats, the report, the plots, the card, and the
        # formats and splits the config asks for (meddpo.planning.rule_options.dataset_outputs),
        # the stats and the plots as declared here: in Snakemake's HTML report (snakemake --report)
        **dataset_outputs(
            stats=report(
                PATHS.dataset_file("stats"),
                caption="../report/stats.rst",
                category="Dataset",
            ),
            plots=report(
                directory(PATHS.dataset_file("plots")),
                patterns=["{name}.png"],
                caption="../report/plots.rst",
                category="Dataset",
            ),
        ),
    log:
        PATHS.log("finalize"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        options=finalize_options(config),
        outputs=finalize_output_options(dataset_outputs()),
        # what the preflight estimated at the start of the run (provenance: read if there)
        estimate=PATHS.estimate,
    shell:
        "python -m meddpo finalize --pairs {input.pairs:q} --pair-stats {input.pair_stats:q}"
        " --question-stats {input.question_stats:q}"
        " --rejected-answers {input.rejected:q} --chosen-answers {input.chosen:q}"
        " --rejected-benchmarks {input.rejected_benchmarks:q} --chosen-benchmarks {input.chosen_benchmarks:q}"
        " --judge-benchmarks {input.judge_benchmarks:q} --estimate {params.estimate:q}"
        " {params.options} {params.outputs} 2> {log:q}"


rule validate:
    input:
        pairs=PATHS.dataset_file("pairs"),
        dropped=PATHS.dataset_file("dropped"),
        questions=PATHS.questions,
        pair_stats=PATHS.all_pairs_stats,
    output:
        PATHS.validation,
    log:
        PATHS.log("validate"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "python -m meddpo validate {input.pairs:q} --questions {input.questions:q} --dropped {input.dropped:q}"
        " --pair-stats {input.pair_stats:q} --out {output:q} 2> {log:q}"
