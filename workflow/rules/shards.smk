"""Split the question set into n_shards shards (one generation job per shard and model).

in:  {OUT}/questions/questions.jsonl
out: {OUT}/shards/shard-{shard}.jsonl   shard names 000 .. n_shards-1, fixed by the config
"""


rule shard:
    input:
        PATHS.questions,
    output:
        PATHS.shard(),
    log:
        PATHS.shard_log("shards"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        n_shards=config["n_shards"],
    shell:
        "python -m meddpo shard --questions {input:q} --n-shards {params.n_shards} --index {wildcards.shard}"
        " --out {output:q} 2> {log:q}"
