"""The dataset: flag and filter the pairs, write the report, the plots and the card; validate.

in:  {OUT}/pairs/all_pairs.jsonl (+ .stats.json), the question stats, every shard's answers
     and job benchmarks (for throughput)
out: {OUT}/dataset/stage2_med_pairs.jsonl          the kept pairs (meta.flags says what they tripped)
     {OUT}/dataset/stage2_med_pairs.dropped.jsonl  dropped pairs with meta.drop_reasons
     {OUT}/dataset/stage2_med_pairs.stats.json     counts at every stage, lengths, truncation, throughput
     {OUT}/dataset/report.md, plots/*.png          the report a person reads
     {OUT}/dataset/README.md                       the dataset card (Hugging Face format)
     {OUT}/dataset/validation.txt                  written when `meddpo validate` passes
"""


rule finalize:
    input:
        pairs=PATHS.all_pairs,
        pair_stats=PATHS.all_pairs_stats,
        question_stats=PATHS.question_stats,
        rejected=expand(PATHS.answers("rejected"), shard=SHARDS),
        chosen=expand(PATHS.answers("chosen"), shard=SHARDS),
        rejected_benchmarks=expand(PATHS.benchmark("rejected"), shard=SHARDS),
        chosen_benchmarks=expand(PATHS.benchmark("chosen"), shard=SHARDS),
    output:
        **dataset_outputs(),
    log:
        PATHS.log("finalize"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        options=finalize_options(config),
        outputs=finalize_output_options(dataset_outputs()),
    shell:
        "python -m meddpo finalize --pairs {input.pairs:q} --pair-stats {input.pair_stats:q}"
        " --question-stats {input.question_stats:q}"
        " --rejected-answers {input.rejected:q} --chosen-answers {input.chosen:q}"
        " --rejected-benchmarks {input.rejected_benchmarks:q} --chosen-benchmarks {input.chosen_benchmarks:q}"
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
