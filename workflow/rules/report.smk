# Report: the paper's tables and figures, the claims table, the runtime summary. Every input is
# an exact file: the methods' metrics, the study spec, the benchmark files of this DAG's jobs.


localrules:
    fetch_resources,
    model_config,
    study_spec,
    tables,
    claims,
    runtime_summary,
    gather_baseline,
    gather_targets,
    gather_prealign,


rule study_spec:
    # the report's design decided by vtn.study.spec, written as it is
    output:
        spec_json("{study}"),
    params:
        spec=lambda wc: json.dumps(
            S.spec(config, wc.study, (star_test_subjects(wc.study) or [None])[0]),
            indent=1,
            ensure_ascii=False,
        ),
    log:
        "logs/study_spec/{study}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "printf '%s\\n' {params.spec:q} > {output} 2> {log}"


rule tables:
    input:
        spec=spec_json("{study}"),
        metrics=lambda wc: study_metrics(wc.study),
        logs=lambda wc: [model_file(wc.study, m, "train_log.csv") for m in MODELS[wc.study]],
        star_subjects=lambda wc: star_test_subjects(wc.study),
    output:
        report(
            directory(tables_dir("{study}")),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
            subcategory="{study}",
        ),
    log:
        "logs/tables/{study}.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn tables --spec {input.spec} --metrics {input.metrics}"
        " --train-logs {input.logs} --out {output} > {log} 2>&1"


rule figures:
    input:
        spec=spec_json("{study}"),
        metrics=lambda wc: study_metrics(wc.study),
        regs=lambda wc: [reg_dir(wc.study, m) for m in METHODS[wc.study]],
        subjects=lambda wc: prep_csv(test_set(wc.study)),
        star_subjects=lambda wc: star_test_subjects(wc.study),
        logs=lambda wc: [model_file(wc.study, m, "train_log.csv") for m in MODELS[wc.study]],
    output:
        report(
            directory(figures_dir("{study}")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            subcategory="{study}",
        ),
    params:
        regs=lambda wc: regs_root(wc.study),
        models=lambda wc: models_root(wc.study),
        star=lambda wc, input: (
            f"--prealigned-subjects {input.star_subjects}" if input.star_subjects else ""
        ),
        label=lambda wc: liver_label_arg(test_set(wc.study)),
    log:
        "logs/figures/{study}.log",
    benchmark:
        benchmark("figures", "{study}")
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn figures --spec {input.spec} --metrics {input.metrics} --reg-root {params.regs}"
        " --subjects {input.subjects} --models {params.models} --out {output} {params.star}"
        " {params.label} > {log} 2>&1"


rule claims:
    input:
        specs=[spec_json(s) for s in STUDIES],
        metrics=[f for s in STUDIES for f in study_metrics(s)],
    output:
        report("results/claims.md", caption="../report/claims.rst", category="Claims"),
    params:
        metrics=" ".join("--metrics " + " ".join(study_metrics(s)) for s in STUDIES),
    log:
        "logs/claims.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn claims --spec {input.specs} {params.metrics} --out {output} > {log} 2>&1"


rule runtime_summary:
    input:
        benchmark_files(),
    output:
        report("results/runtime.md", caption="../report/runtime.rst", category="Runtime"),
    log:
        "logs/runtime_summary.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn runtime --benchmarks {input} --root benchmarks --out {output} > {log} 2>&1"
