# Report: the paper's tables and figures, the claims table, the runtime summary.


localrules:
    model_config,
    study_spec,
    tables,
    claims,
    runtime_summary,


rule tables:
    input:
        spec="results/tables/{study}/study.json",
        metrics=lambda wc: [f"results/metrics/{wc.study}/{m}.csv" for m in study_methods(wc.study)],
    output:
        touch("results/tables/{study}/done"),
    params:
        metrics=lambda wc: f"results/metrics/{wc.study}",
        out=lambda wc: f"results/tables/{wc.study}",
    log:
        "logs/tables/{study}.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn tables --spec {input.spec} --metrics {params.metrics} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        spec="results/tables/{study}/study.json",
        metrics=lambda wc: [f"results/metrics/{wc.study}/{m}.csv" for m in study_methods(wc.study)],
        regs=lambda wc: [f"results/registrations/{wc.study}/{m}" for m in study_methods(wc.study)],
        subjects=lambda wc: prep_csv(STUDIES[wc.study]["test"]),
        logs=lambda wc: [f"results/models/{wc.study}/{m}/train_log.csv" for m in study_models(wc.study)],
    output:
        touch("results/figures/{study}/done"),
    params:
        metrics=lambda wc: f"results/metrics/{wc.study}",
        regs=lambda wc: f"results/registrations/{wc.study}",
        models=lambda wc: f"results/models/{wc.study}",
        out=lambda wc: f"results/figures/{wc.study}",
    log:
        "logs/figures/{study}.log",
    benchmark:
        "benchmarks/figures/{study}.tsv"
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn figures --spec {input.spec} --metrics {params.metrics} --reg-root {params.regs}"
        " --subjects {input.subjects} --models {params.models} --out {params.out} > {log} 2>&1"


rule claims:
    input:
        specs=[f"results/tables/{s}/study.json" for s in STUDIES],
        metrics=[f"results/metrics/{s}/{m}.csv" for s in STUDIES for m in study_methods(s)],
    output:
        report("results/claims.md", caption="../report/claims.rst", category="Claims"),
    log:
        "logs/claims.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn claims --spec {input.specs} --metrics-root results/metrics --out {output} > {log} 2>&1"


rule runtime_summary:
    input:
        [f"results/metrics/{s}/{m}.csv" for s in STUDIES for m in study_methods(s)],
    output:
        report("results/runtime.md", caption="../report/runtime.rst", category="Runtime"),
    log:
        "logs/runtime_summary.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn runtime --benchmarks benchmarks --out {output} > {log} 2>&1"
