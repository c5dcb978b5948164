# Baselines: ANTs and Elastix exactly as the paper ran them (or a named faster preset), through
# the same output contract as `vtn register`. VoxelMorph-2 is trained in train.smk.


rule baseline:
    input:
        subjects=lambda wc: prep_csv(STUDIES[wc.study]["test"]),
        pairs=lambda wc: pairs_csv(STUDIES[wc.study]["test"]),
    output:
        directory("results/registrations/{study}/{tool}"),
    params:
        preset=lambda wc: study_baselines(wc.study)[wc.tool],
    log:
        "logs/baseline/{study}/{tool}.log",
    benchmark:
        "benchmarks/baseline/{study}/{tool}.tsv"
    threads: THREADS
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method {wildcards.tool} --preset {params.preset}"
        " --subjects {input.subjects} --pairs {input.pairs} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule supervision_targets:
    # ANTs flows of training pairs: the targets of the "supervised" variant (paper Tables II, VI).
    input:
        subjects=lambda wc: prep_csv(STUDIES[wc.study]["train"][0]),
        pairs=lambda wc: pairs_csv(STUDIES[wc.study]["train"][0]),
    output:
        times="results/targets/{study}/times.csv",
    params:
        preset=lambda wc: study_baselines(wc.study).get("ants", "fast"),
        out=lambda wc, output: str(Path(output.times).parent),
    log:
        "logs/supervision_targets/{study}.log",
    benchmark:
        "benchmarks/supervision_targets/{study}.tsv"
    threads: THREADS
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method ants --preset {params.preset} --subjects {input.subjects}"
        " --pairs {input.pairs} --out {params.out} --threads {threads} > {log} 2>&1"
