# Evaluation: per-pair metrics of every method through the same code.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=metrics_csv("{study}", "{method}"),
        labels=metrics_csv("{study}", "{method}.labels"),
    params:
        extra=evaluate_extra,
        organ=lambda wc: STUDIES[wc.study]["organ"],
        source=lambda wc: S.data_source(config, wc.study),
    log:
        "logs/evaluate/{study}/{method}.log",
    benchmark:
        benchmark("evaluate", "{study}", "{method}")
    threads: lambda wc: J.eval_processes(test_pair_count(wc.study), THREADS)
    resources:
        runtime=lambda wc, threads, attempt: J.runtime_minutes(
            "evaluate", test_pair_count(wc.study) / threads, SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn evaluate --subjects {input.subjects} --pairs {input.pairs} --reg {input.reg}"
        " --method {wildcards.method} --study {wildcards.study} --organ {params.organ}"
        " --data-source {params.source:q} --out {output.metrics} --labels-out {output.labels}"
        " --jobs {threads} {params.extra} > {log} 2>&1"

