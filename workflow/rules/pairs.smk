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
        questions=f"{OUT}/shards/shard-{{shard}}.jsonl",
        rejected=f"{OUT}/rejected/shard-{{shard}}.jsonl",
        chosen=f"{OUT}/chosen/shard-{{shard}}.jsonl",
        chosen_failures=chosen_extras("failures.jsonl"),
    output:
        pairs=f"{OUT}/pairs/shard-{{shard}}.jsonl",
        stats=f"{OUT}/pairs/shard-{{shard}}.stats.json",
    log:
        f"{LOGS}/pairs/shard-{{shard}}.log",
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
        pairs=expand(f"{OUT}/pairs/shard-{{shard}}.jsonl", shard=SHARDS),
        stats=expand(f"{OUT}/pairs/shard-{{shard}}.stats.json", shard=SHARDS),
        usage=[expand(path, shard=SHARDS) for path in chosen_extras("usage.json")],
        verdicts=judge_files("jsonl"),
        judge_usage=judge_files("usage.json"),
    output:
        pairs=ALL_PAIRS,
        stats=ALL_PAIRS_STATS,
    log:
        f"{LOGS}/merge_pairs.log",
    conda:
        CONDA_ENV
    shell:
        "python -m meddpo merge --pairs {input.pairs:q} --shard-stats {input.stats:q} --usage {input.usage:q}"
        " --verdicts {input.verdicts:q} --judge-usage {input.judge_usage:q}"
        " --out {output.pairs:q} --stats {output.stats:q} 2> {log:q}"
