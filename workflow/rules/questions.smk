"""Stage 2A: build the question set.

in:  the MedQuAD source (config `source`: a hub id, or a local file that is then an input)
out: {OUT}/questions/questions.jsonl       one row per picked question
     {OUT}/questions/questions.stats.json  rows read, dropped (empty, short, duplicate), picked
"""


rule questions:
    input:
        local_source(config["source"]),
    output:
        questions=f"{OUT}/questions/questions.jsonl",
        stats=f"{OUT}/questions/questions.stats.json",
    log:
        f"{LOGS}/questions.log",
    conda:
        CONDA_ENV
    params:
        options=cli_options(
            source=config["source"]["dataset"],
            source_name=config["source"]["name"],
            split=config["source"]["split"],
            revision=config["source"]["revision"],
            n=config["questions"]["n"] or "all",
            selection=config["questions"]["selection"],
            stratify=config["questions"]["stratify"],
            seed=config["questions"]["seed"],
            min_chars=config["questions"]["min_chars"],
        ),
    shell:
        "python -m meddpo questions {params.options} --out {output.questions:q} --stats {output.stats:q} 2> {log:q}"
