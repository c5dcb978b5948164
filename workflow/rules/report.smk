# Report: the paper's tables and figures, the claims table, the runtime summary.


localrules:
    fetch_resources,
    model_config,
    study_spec,
    tables,
    claims,
    runtime_summary,


rule tables:
    input:
        spec="results/specs/{study}.json",
        metrics=lambda wc: [f"results/metrics/{wc.study}/{m}.csv" for m in study_methods(wc.study)],
        star_subjects=lambda wc: star_test_subjects(wc.study),
    output:
        report(
            directory("results/tables/{study}"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
            subcategory="{study}",
        ),
    params:
        metrics=lambda wc: f"results/metrics/{wc.study}",
        out=lambda wc, output: output[0],
    log:
        "logs/tables/{study}.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn tables --spec {input.spec} --metrics {params.metrics} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        spec="results/specs/{study}.json",
        metrics=lambda wc: [f"results/metrics/{wc.study}/{m}.csv" for m in study_methods(wc.study)],
        regs=lambda wc: [f"results/registrations/{wc.study}/{m}" for m in study_methods(wc.study)],
        subjects=lambda wc: prep_csv(STUDIES[wc.study]["test"]),
        star_subjects=lambda wc: star_test_subjects(wc.study),
        logs=lambda wc: [f"results/models/{wc.study}/{m}/train_log.csv" for m in study_models(wc.study)],
    output:
        report(
            directory("results/figures/{study}"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            subcategory="{study}",
        ),
    params:
        metrics=lambda wc: f"results/metrics/{wc.study}",
        regs=lambda wc: f"results/registrations/{wc.study}",
        models=lambda wc: f"results/models/{wc.study}",
        out=lambda wc, output: output[0],
        star=lambda wc, input: (
            f"--prealigned-subjects {input.star_subjects}" if input.star_subjects else ""
        ),
    log:
        "logs/figures/{study}.log",
    benchmark:
        "benchmarks/figures/{study}.tsv"
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn figures --spec {input.spec} --metrics {params.metrics} --reg-root {params.regs}"
        " --subjects {input.subjects} --models {params.models} --out {params.out} {params.star}"
        " > {log} 2>&1"


rule claims:
    input:
        specs=[f"results/specs/{s}.json" for s in STUDIES],
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
