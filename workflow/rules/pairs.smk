"""DPO pairs: join each shard's questions with both answers, then merge the shards.

in:  {OUT}/shards/shard-{shard}.jsonl, {OUT}/rejected/shard-{shard}.jsonl, {OUT}/chosen/shard-{shard}.jsonl
     (+ the Gemini teacher's failures and usage files)
out: {OUT}/pairs/shard-{shard}.jsonl (+ .stats.json)  one shard's pairs and what it left out
     {OUT}/pairs/all_pairs.jsonl (+ .stats.json)       every pair of the run, sorted by id, with
                                                       meta.judge (the judges' verdicts, judge.smk),
                                                       before the quality filter (dataset.smk)
"""


rule pairs:
    input:
        questions=PATHS.shard(),
        rejected=PATHS.answers("rejected"),
        chosen=PATHS.answers("chosen"),
        chosen_failures=chosen_extras(config, "failures.jsonl"),
    output:
        pairs=PATHS.per_shard("pairs"),
        stats=PATHS.per_shard("pairs", "stats.json"),
    log:
        PATHS.shard_log("pairs"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        options=cli_options(system_prompt=config["prompts"]["training"]),
    shell:
        "python -m meddpo pairs --questions {input.questions:q} --rejected {input.rejected:q} --chosen {input.chosen:q}"
        " --chosen-failures {input.chosen_failures:q} {params.options}"
        " --out {output.pairs:q} --stats {output.stats:q} 2> {log:q}"


rule merge_pairs:
    input:
        pairs=expand(PATHS.per_shard("pairs"), shard=SHARDS),
        stats=expand(PATHS.per_shard("pairs", "stats.json"), shard=SHARDS),
        usage=[
            expand(path, shard=SHARDS) for path in chosen_extras(config, "usage.json")
        ],
        verdicts=judge_files(config, "jsonl"),
        judge_usage=judge_files(config, "usage.json"),
    output:
        pairs=PATHS.all_pairs,
        stats=PATHS.all_pairs_stats,
    log:
        PATHS.log("merge_pairs"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "python -m meddpo merge --pairs {input.pairs:q} --shard-stats {input.stats:q} --usage {input.usage:q}"
        " --verdicts {input.verdicts:q} --judge-usage {input.judge_usage:q}"
        " --out {output.pairs:q} --stats {output.stats:q} 2> {log:q}"
