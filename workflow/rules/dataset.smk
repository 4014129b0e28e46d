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
        pairs=ALL_PAIRS,
        pair_stats=ALL_PAIRS_STATS,
        question_stats=f"{OUT}/questions/questions.stats.json",
        rejected=expand(f"{OUT}/rejected/shard-{{shard}}.jsonl", shard=SHARDS),
        chosen=expand(f"{OUT}/chosen/shard-{{shard}}.jsonl", shard=SHARDS),
        rejected_benchmarks=expand(
            f"{BENCHMARKS}/rejected/shard-{{shard}}.tsv", shard=SHARDS
        ),
        chosen_benchmarks=expand(
            f"{BENCHMARKS}/chosen/shard-{{shard}}.tsv", shard=SHARDS
        ),
    output:
        **dataset_outputs(),
    log:
        f"{LOGS}/finalize.log",
    conda:
        CONDA_ENV
    params:
        options=cli_options(
            **config["quality"],
            min_margin=config["judge"]["min_margin"],
            test_fraction=config["output"]["test_fraction"],
            settings=card_settings(),
        ),
        outputs=cli_options(**{f"out_{k}": v for k, v in dataset_outputs().items()}),
    shell:
        "python -m meddpo finalize --pairs {input.pairs:q} --pair-stats {input.pair_stats:q}"
        " --question-stats {input.question_stats:q}"
        " --rejected-answers {input.rejected:q} --chosen-answers {input.chosen:q}"
        " --rejected-benchmarks {input.rejected_benchmarks:q} --chosen-benchmarks {input.chosen_benchmarks:q}"
        " {params.options} {params.outputs} 2> {log:q}"


rule validate:
    input:
        pairs=PAIRS_FILE,
        dropped=dataset_outputs()["dropped"],
        questions=f"{OUT}/questions/questions.jsonl",
        pair_stats=ALL_PAIRS_STATS,
    output:
        f"{DATASET}/validation.txt",
    log:
        f"{LOGS}/validate.log",
    conda:
        CONDA_ENV
    shell:
        "python -m meddpo validate {input.pairs:q} --questions {input.questions:q} --dropped {input.dropped:q}"
        " --pair-stats {input.pair_stats:q} --out {output:q} 2> {log:q}"
