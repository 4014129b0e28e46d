"""Rejected answers: the "more toxic" model (config `rejected`) answers each shard.

in:  {OUT}/shards/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/rejected/shard-{shard}.jsonl  {id, text, finish_reason, new_tokens, prompt_tokens, model, ...}
log: the job's, and with engine vllm only, the vLLM server's ({OUT}/logs/rejected/shard-{shard}.vllm.log;
     the `server` entry is empty for other engines: they start no server, and a declared log
     never written makes Snakemake warn); params.options passes it to the job as --server-log
"""


rule rejected:
    input:
        shard=PATHS.shard(),
        model=demo_model_input(config, config["rejected"]),
    output:
        PATHS.answers("rejected"),
    log:
        job=PATHS.shard_log("rejected"),
        server=vllm_server_log(
            config["rejected"], PATHS.shard_log("rejected", "vllm.log")
        ),
    benchmark:
        PATHS.benchmark("rejected")
    conda:
        CONDA_ENV
    resources:
        gpu=1,
        runtime=runtime("rejected"),
    params:
        options=generation_options(
            config, "rejected", config["rejected"], config["prompts"]["rejected"]
        ),
    shell:
        "python -m meddpo generate --shard {input.shard:q} {params.options} --out {output:q} 2> {log.job:q}"
