"""Rejected answers: the "more toxic" model (config `rejected`) answers each shard.

in:  {OUT}/shards/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/rejected/shard-{shard}.jsonl  {id, text, finish_reason, new_tokens, prompt_tokens, model, ...}
log: the job's, and with engine vllm only, the vLLM server's ({OUT}/logs/rejected/shard-{shard}.vllm.log)
"""


rule rejected:
    input:
        shard=PATHS.shard(),
        model=tiny_model_input(config, config["rejected"]),
    output:
        PATHS.answers("rejected"),
    log:
        **generation_logs(config, "rejected", config["rejected"]),
    benchmark:
        PATHS.benchmark("rejected")
    conda:
        CONDA_ENV
    resources:
        gpu=1,
        runtime=runtime("rejected"),
    params:
        options=generation_options(
            config, config["rejected"], config["prompts"]["rejected"]
        ),
    shell:
        generation_shell(config["rejected"])
