# Evaluation: per-pair metrics of every method through the same code.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/metrics/{study}/{method}.csv",
        labels="results/metrics/{study}/{method}.labels.csv",
    params:
        extra=evaluate_extra,
        organ=lambda wc: STUDIES[wc.study]["organ"],
        source=lambda wc: data_source(wc.study),
    log:
        "logs/evaluate/{study}/{method}.log",
    benchmark:
        "benchmarks/evaluate/{study}/{method}.tsv"
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn evaluate --subjects {input.subjects} --pairs {input.pairs} --reg {input.reg}"
        " --method {wildcards.method} --study {wildcards.study} --organ {params.organ}"
        " --data-source {params.source:q} --out {output.metrics} --labels-out {output.labels}"
        " {params.extra} > {log} 2>&1"


rule study_spec:
    output:
        "results/specs/{study}.json",
    params:
        spec=lambda wc: json.dumps(study_spec(wc.study), indent=1, ensure_ascii=False),
    log:
        "logs/study_spec/{study}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "printf '%s\\n' {params.spec:q} > {output} 2> {log}"
